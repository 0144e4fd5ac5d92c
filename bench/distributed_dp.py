"""Distributed DP against one central DP model, local DP and no DP, side by side in one run; and the secure sum's cost.

Arms (one process, the real ClientApp and coordinator through the in-process grid, no Ray):
  distributed  privacy = distributed: one DP-SGD step a round over every merchant's Poisson-sampled customers,
               noise shared, secure aggregation; `--rounds` steps at `--sample-rate`
  central      one DP-SGD model on the union with the same epsilon, delta, sample rate, steps, clipping, Adam lr
  local        privacy = local (each merchant noises its own update), the run-config defaults (rounds x 1 epoch)
  none         the same federation without DP
Every model is scored on every merchant's test users on its own catalogue; ratios are paired over users
(bootstrap 95% interval). `--scaling 8,32,64` times the secure sum alone on small shops with that many merchants.
`--pool A,B,C` pools the per-user figures of runs with different `--seed`s. Repeat:
    python bench/distributed_dp.py --merchants 4 --out runs/distributed-dp-synthetic     # the built-in shops
    python bench/distributed_dp.py --merchants 4 --seed 1 --skip-baselines --out runs/distributed-dp-synthetic-s1
    python bench/distributed_dp.py --pool runs/distributed-dp-synthetic,runs/distributed-dp-synthetic-s1 \
        --out runs/distributed-dp-synthetic-pooled
    python bench/distributed_dp.py --data ../shared/data/amazon-beauty --format amazon --merchants 8 \
        --rounds 55 --sample-rate 0.183 --lr 3e-3 --skip-baselines --set n-layers=1 --set n-heads=1 \
        --set dropout=0.2 --out runs/distributed-dp-beauty
    python bench/distributed_dp.py --scaling 8,32,64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.client_app import app as client_app  # noqa: E402
from server.coordinator import run_federation  # noqa: E402
from shared_model.evaluation import paired_ratio  # noqa: E402
from shared_model.merchant_data import simulated_merchants  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from simulations.inprocess import InProcessGrid  # noqa: E402
from simulations.simulate import per_user_ndcg, published_per_user_ndcg, train_centralized  # noqa: E402


def federated(run: RunConfig, merchants: int, out: Path, label: str) -> tuple[np.ndarray, dict]:
    run = run.replace(run_dir=str(out / label), fraction_evaluate=0.0)  # scored once at the end, below
    started = time.perf_counter()
    result = run_federation(InProcessGrid(client_app, merchants), run,
                            on_round=lambda row: print(f"  {label} round {row['round']} "
                                                       f"{row.get('seconds', 0):.1f}s", flush=True)
                            if row["round"] % 20 == 0 or row["round"] == 1 else None)
    seconds = time.perf_counter() - started
    scores, _ = published_per_user_ndcg(run, merchants, result.model_dir)
    rows = result.history
    figures = {"ndcg@10": float(scores.mean()), "seconds": seconds, "rounds": len(rows),
               "aggregated": sum(bool(r.get("aggregated")) for r in rows),
               "epsilon": max(result.epsilon.values(), default=0.0)}
    if run.distributed_dp:
        later = rows[1:] or rows  # round 1 also loads every merchant's data and solves sigma
        figures.update({
            "round_seconds": float(np.mean([r["seconds"] for r in later])),
            "secure_sum_seconds": float(np.mean([r.get("secure-sum-seconds", 0.0) for r in later])),
            "accounting_seconds": float(np.mean([r.get("accounting-seconds", 0.0) for r in later])),
            "merchant_step_seconds": float(np.mean([r.get("merchant-step-seconds", 0.0) for r in later])),
            "noise_share": rows[-1].get("noise-share"), "resolution": rows[-1].get("resolution"),
            "sum_bound": rows[-1].get("sum-bound"), "sigma": run.distributed_noise()})
        figures["secure_sum_share"] = figures["secure_sum_seconds"] / figures["round_seconds"]
    return scores, figures


def compare(args) -> dict:
    base = RunConfig(data=args.data, data_format=args.format, seed=args.seed,
                     partitioning="natural" if args.data == "synthetic" else "iid",
                     target_epsilon=args.epsilon, min_replies=min(2, args.merchants))
    if args.users:
        base = base.replace(synthetic_users=args.users)
    if args.set:  # any run-config key, as `fedprofile simulate --set`
        base = RunConfig.from_flat({**base.to_flat(), **dict(item.split("=", 1) for item in args.set)})
    distributed = base.replace(privacy="distributed", num_rounds=args.rounds, sample_rate=args.sample_rate,
                               server_lr=args.lr, max_grad_norm=args.clip)
    out = Path(args.out)
    arms, figures = {}, {}
    print(f"distributed DP: {args.rounds} rounds at sample rate {args.sample_rate}, sigma "
          f"{distributed.distributed_noise():.3f}", flush=True)
    arms["distributed"], figures["distributed"] = federated(distributed, args.merchants, out, "distributed")
    started = time.perf_counter()
    model, result, _ = train_centralized(distributed, args.merchants)
    arms["central"] = per_user_ndcg(model, simulated_merchants(distributed, args.merchants))
    figures["central"] = {"ndcg@10": float(arms["central"].mean()), "epsilon": result.epsilon,
                          "steps": result.steps, "seconds": time.perf_counter() - started}
    if not args.skip_baselines:
        local = base.replace(privacy="local")  # the run-config defaults otherwise: rounds x local epochs, batch
        arms["local"], figures["local"] = federated(local, args.merchants, out, "local")
        arms["none"], figures["none"] = federated(local.replace(dp=False), args.merchants, out, "none")
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / PER_USER, **arms)  # for pooling seeds: `--pool`
    return {"arms": figures, "ratios": ratios_of(arms, seed=args.seed)}


PER_USER = "per-user-ndcg.npz"  # each arm's test NDCG@10, user by user, in one order
PAIRS = [("distributed", "central"), ("distributed", "local"), ("distributed", "none"), ("central", "none"),
         ("local", "none")]


def ratios_of(arms: dict[str, np.ndarray], *, seed: int) -> dict:
    return {f"{a}/{b}": paired_ratio(arms[a], arms[b], seed=seed) for a, b in PAIRS if a in arms and b in arms}


def pool(args) -> dict:
    """Runs of several seeds pooled: each (seed, user) pair is one paired observation, so the interval holds the
    test users' sampling and, across seeds, the training noise of both models."""
    folders = [Path(f) for f in args.pool.split(",")]
    runs = [dict(np.load(f / PER_USER)) for f in folders]
    arms = {name: np.concatenate([r[name] for r in runs]) for name in runs[0] if all(name in r for r in runs)}
    per_seed = {str(f): {name: float(r[name].mean()) for name in r} for f, r in zip(folders, runs)}
    return {"runs": per_seed, "pooled_means": {name: float(v.mean()) for name, v in arms.items()},
            "ratios": ratios_of(arms, seed=0)}


def scaling(args) -> dict:
    """The secure sum's cost with many merchants: small shops, a narrow model, a few rounds each."""
    out = {}
    for count in [int(c) for c in args.scaling.split(",")]:
        run = RunConfig(privacy="distributed", num_rounds=3, sample_rate=0.1, synthetic_users=40, max_len=20,
                        d_model=32, profile_dim=32, n_heads=1, n_layers=1, item_buckets=4096, negatives=64,
                        fraction_evaluate=0.0, min_replies=2, run_dir=str(Path(args.out) / f"scaling-{count}"))
        result = run_federation(InProcessGrid(client_app, count), run)
        later = result.history[1:]
        out[count] = {"round_seconds": float(np.mean([r["seconds"] for r in later])),
                      "secure_sum_seconds": float(np.mean([r["secure-sum-seconds"] for r in later])),
                      "aggregated": all(r["aggregated"] for r in result.history)}
        out[count]["secure_sum_share"] = out[count]["secure_sum_seconds"] / out[count]["round_seconds"]
        print(f"  {count} merchants: round {out[count]['round_seconds']:.2f}s, secure sum "
              f"{out[count]['secure_sum_seconds']:.2f}s ({out[count]['secure_sum_share']:.0%})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--format", default="synthetic")
    parser.add_argument("--merchants", type=int, default=4)
    parser.add_argument("--users", type=int, default=None, help="synthetic customers per merchant")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-2, help="the coordinator's Adam learning rate (server-lr)")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="run-config key=value (repeatable)")
    parser.add_argument("--skip-baselines", action="store_true", help="distributed and central only")
    parser.add_argument("--scaling", default=None, help="comma-separated merchant counts: time the secure sum only")
    parser.add_argument("--pool", default=None, help="comma-separated output folders of earlier runs (seeds): "
                        "their per-user figures pooled")
    parser.add_argument("--out", default="runs/distributed-dp")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()} {platform.processor()} "
              f"{torch.get_num_threads()} threads, {'cuda' if torch.cuda.is_available() else 'cpu'}",
              "date": time.strftime("%Y-%m-%d")}
    report.update(scaling(args) if args.scaling else pool(args) if args.pool else compare(args))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / ("scaling.json" if args.scaling else "pooled.json" if args.pool else "results.json")).write_text(
        json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    print(f"repeat: {report['command']}")


if __name__ == "__main__":
    main()

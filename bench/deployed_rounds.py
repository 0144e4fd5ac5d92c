"""A deployed round's overhead: round time minus the merchants' own training and evaluation, on 127.0.0.1.

Issue 19. `fedprofile federation local`'s deployment (SuperLink with TLS and SuperNode authentication, merchant
daemons as separate processes) with a narrow model and few customers, so that what is left of a round is what
the deployment adds: Flower's message passing and polling, (cold) a process per message loading the merchant's data
and the app. Per round, from the coordinator's checkpointed history:
    overhead = round seconds - the slowest merchant's training (its own `train-seconds`)
               - one merchant's evaluation (timed here, in process, on the same data and model)
Both privacy modes: `local` (per-merchant DP-SGD: a train and an evaluate message per round) and `distributed`
(one DP-SGD step through the secure sum: after the first round, its masked step with the next round's keys beside
it, and with `--min-survivors 2` of 3 the shares and unmask a sum that may lose a merchant needs; evaluate). A
round's evaluation rides on the next round's training messages (run config `evaluate-with-training`;
`--evaluate-with-training false true` measures both side by side), and the last round's is a stage of its own. The narrow model's metadata tables
(categories, brands, title words) are most of its 9.0 MB unless `--metadata-buckets N` narrows them too (256: 1.4 MB;
`--metadata-buckets 0 256` measures both side by side). With `--evaluate-every N` evaluations
run every N rounds and after the last; the overhead is then reported for rounds with and without a stage. Repeat:
    python bench/deployed_rounds.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedprofile.federation import LocalFederation  # noqa: E402
from shared_model.checkpoint import model_for_catalogue  # noqa: E402
from shared_model.merchant_data import load_merchant  # noqa: E402
from shared_model.merchant_round import local_evaluate  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from shared_model.shared_weights import initial_shared_state  # noqa: E402

# the deployment tests' narrow model: the figure is about the deployment, not the model
TINY = {"d-model": 32, "profile-dim": 32, "n-heads": 1, "n-layers": 1, "max-len": 20, "item-buckets": 2048,
        "negatives": 64, "batch-size": 32}
METADATA = ("category-buckets", "brand-buckets", "token-buckets")  # 4,096 / 8,192 / 16,384 rows unless narrowed


def evaluate_seconds(fed: LocalFederation, extra: dict, repeats: int = 3) -> float:
    """One merchant's evaluate compute on its own data with the run's model, warm, in this process."""
    run = RunConfig.from_flat({k: str(v) for k, v in extra.items()})
    merchant = load_merchant(str(fed.out / "data" / "merchant-0"), "synthetic", run, name="shop-0")
    catalogue = merchant.sequences.catalogue
    model = model_for_catalogue(run.model_config(local_items=catalogue.num_items + 1),
                                initial_shared_state(run.model_config(), seed=0), catalogue, {})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        local_evaluate(model, merchant.sequences, device=torch.device("cpu"))
        times.append(time.perf_counter() - started)
    return min(times)


def measure(out: Path, *, privacy: str, worker: str, merchants: int, rounds: int, users: int,
            evaluate_every: int = 1, with_training: bool = True, metadata_buckets: int = 0,
            min_survivors: int = 0) -> dict:
    name = f"{privacy}-{worker}-{'folded' if with_training else 'stage'}" \
        + (f"-meta{metadata_buckets}" if metadata_buckets else "") + (f"-survivors{min_survivors}" if min_survivors else "")
    fed = LocalFederation(out / name, merchants=merchants, users=users, onsite_fit=False, round_worker=worker == "warm")
    extra = {**TINY, "privacy": privacy, "min-replies": merchants, "round-timeout": 300,
             "evaluate-every": evaluate_every, "evaluate-with-training": str(with_training).lower(),
             "min-survivors": min_survivors,
             **({key: metadata_buckets for key in METADATA} if metadata_buckets else {})}
    run = RunConfig.from_flat({k: str(v) for k, v in extra.items()})
    model_mb = sum(v.numel() * 4 for v in initial_shared_state(run.model_config(), seed=0).values()) / 1e6
    started = time.perf_counter()
    try:
        summary = fed.run(rounds=rounds, epsilon=8.0, timeout=60 + 120 * rounds, extra=extra)
    finally:
        fed.stop()
    wall = time.perf_counter() - started
    history = fed.checkpoint_state().get("history", [])
    if len(history) < rounds:
        raise SystemExit(f"{privacy}: {len(history)} of {rounds} rounds completed; see {fed.logs}")
    evaluate = evaluate_seconds(fed, extra)
    rows = []
    for row in history:
        train = max(row.get("local-train-seconds", {}).values(), default=0.0) if privacy == "local" \
            else float(row.get("merchant-step-seconds", 0.0))
        # an evaluate stage; or (evaluate-with-training) the previous round's model evaluated in the training stage
        evaluations = int("evaluate-phase-seconds" in row) + int("model-evaluated" in row)
        rows.append({"round": row["round"], "seconds": row["seconds"], "merchant-train-seconds": train,
                     "evaluated": "evaluate-phase-seconds" in row, "overhead": row["seconds"] - train
                     - evaluations * evaluate})
    later = rows[1:] or rows[:1]  # round 1 also starts every process
    medians = {f"overhead-median{suffix}": statistics.median(chosen) for suffix, chosen in (
        ("", [r["overhead"] for r in later]),
        ("-evaluated", [r["overhead"] for r in later if r["evaluated"]]),
        ("-not-evaluated", [r["overhead"] for r in later if not r["evaluated"]])) if chosen}
    return {"privacy": privacy, "worker": worker, "rounds": rows, "evaluate-seconds": evaluate, "wall-seconds": wall,
            **medians, "overhead-round-1": rows[0]["overhead"], "evaluate-every": evaluate_every,
            "evaluate-with-training": with_training, "metadata-buckets": metadata_buckets, "model-mb": model_mb,
            "min-survivors": min_survivors,
            "epsilon": summary["merchants"][0]["epsilon"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--privacy", nargs="+", default=["local", "distributed"], choices=["local", "distributed"])
    parser.add_argument("--workers", nargs="+", default=["cold", "warm"], choices=["cold", "warm"],
                        help="cold: a fresh ClientApp process loads everything per message (Flower's way); warm: "
                             "the merchant daemon's round worker takes the SuperNode's tasks itself")
    parser.add_argument("--evaluate-every", type=int, default=1, help="the run's evaluate-every (1: every round)")
    parser.add_argument("--evaluate-with-training", nargs="+", default=["true"], choices=["true", "false"],
                        help="the run's evaluate-with-training (both: side by side); true: a round's evaluation "
                             "rides on the next round's training messages, false: a message stage of its own")
    parser.add_argument("--metadata-buckets", nargs="+", type=int, default=[0],
                        help="rows of each metadata table (category, brand, title words; several: side by side); 0: "
                             "the model's defaults (the narrow model is then 9.0 MB, 1.4 MB with 256)")
    parser.add_argument("--min-survivors", nargs="+", type=int, default=[0],
                        help="distributed privacy's min-survivors (several: side by side); 0: a sum of every merchant "
                             "(its masked step alone after the first round), below the merchants: a sum that may lose "
                             "some (shares and an unmask too)")
    parser.add_argument("--out", default="runs/deployed-rounds")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    results = []
    for privacy, worker, folded, buckets, survivors in itertools.product(
            args.privacy, args.workers, args.evaluate_with_training, args.metadata_buckets, args.min_survivors):
        if privacy == "local" and survivors != args.min_survivors[0]:
            continue  # a distributed setting only
        result = measure(out, privacy=privacy, worker=worker, merchants=args.merchants, rounds=args.rounds,
                         users=args.users, evaluate_every=args.evaluate_every, with_training=folded == "true",
                         metadata_buckets=buckets, min_survivors=survivors if privacy == "distributed" else 0)
        results.append(result)
        per_round = ", ".join(f"{r['seconds']:.1f}" for r in result["rounds"])
        print(f"{privacy:>11}, {worker}, evaluate-with-training {folded}, model {result['model-mb']:.1f} MB"
              + (f", min-survivors {result['min-survivors']} of {args.merchants}" if privacy == "distributed" else "")
              + f"{f' (metadata tables of {buckets} rows)' if buckets else ''}: rounds {per_round} s; merchant training up to "
              f"{max(r['merchant-train-seconds'] for r in result['rounds']):.2f} s, evaluation "
              f"{result['evaluate-seconds']:.2f} s; overhead median (rounds 2+) {result['overhead-median']:.1f} s"
              + "".join(f", {label} {result[key]:.1f} s" for key, label in (
                  ("overhead-median-evaluated", "with an evaluate stage"),
                  ("overhead-median-not-evaluated", "without")) if key in result and args.evaluate_every > 1)
              + f", "
              f"round 1 {result['overhead-round-1']:.1f} s; {result['wall-seconds']:.0f} s in all", flush=True)
    command = "python " + " ".join(sys.argv)
    (out / "results.json").write_text(json.dumps(
        {"results": results, "command": command, "machine": {"platform": platform.platform(),
                                                             "threads": torch.get_num_threads()}}, indent=2))
    print(f"repeat: {command}")


if __name__ == "__main__":
    main()

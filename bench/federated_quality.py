"""Federated quality and round cost: N merchants vs a centralized model with the same epoch budget.

Runs `fedprofile simulate` with the benchmark settings and prints the final metrics, the federated /
centralized ratio, epsilon per merchant, and where each round's time went (local training vs the rest:
Flower messaging, serialisation, aggregation, evaluation). Repeat:
    python bench/federated_quality.py --out runs/fed-beauty                 # Amazon Beauty, 8 merchants, no DP
    python bench/federated_quality.py --dp --out runs/fed-beauty-dp         # the same at epsilon 8 per merchant
    python bench/federated_quality.py --synthetic --dp --out runs/fed-synth # 4 synthetic merchants, epsilon 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

BEAUTY = Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"
# 20 rounds x 1 local epoch = 20 epochs, the centralized baseline's budget. Each merchant steps on batches
# of 16 customers, so eight merchants together take as many steps per epoch as the centralized model does
# on batches of 128 (its best batch); with 128 per merchant, FedAvg took 8x fewer effective steps (0.366).
# One block as in the centralized benchmark; FedAvgM with server momentum 0.5; dropout 0.2 for both (the
# federation's best by validation on seed 0; the centralized model's is 0.3, also reported in docs/benchmarks.md,
# 4b). Each merchant keeps its Adam moments from round to round (4b: +3-5% on every seed). Judge the ratio over
# seeds (`-- --set seed=N`, then bench/federated_seeds.py): one run's noise is ~0.002.
BEAUTY_ARGS = ["--data", str(BEAUTY), "--format", "amazon", "--merchants", "8", "--partitioning", "iid",
               "--rounds", "20", "--local-epochs", "1", "--set", "batch-size=16", "--centralized-batch-size", "128",
               "--set", "negatives=1024", "--set", "lr=1e-3", "--set", "dropout=0.2", "--set", "n-heads=1",
               "--set", "n-layers=1", "--set", "strategy=fedavgm", "--set", "server-momentum=0.5",
               "--set", "keep-optimizer-state=true"]
BEAUTY_DP = ["--dp", "--privacy", "local", "--epsilon", "8", "--delta", "1e-5", "--set", "batch-size=256", "--centralized-batch-size", "1024",
             "--set", "lr=3e-3",
             "--set", "dropout=0.2",
             "--set", "keep-optimizer-state=false"]  # the DP runs of 4c start a fresh Adam each round
SYNTHETIC_ARGS = ["--merchants", "4"]  # the run-config defaults (`make run`): distributed DP, 20 rounds at rate 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dp", action="store_true", help="DP-SGD at epsilon 8 per merchant")
    parser.add_argument("--synthetic", action="store_true", help="the built-in synthetic merchants instead of Beauty")
    parser.add_argument("--no-baseline", action="store_true", help="skip the centralized baseline")
    parser.add_argument("--report-only", action="store_true", help="print the figures of an earlier run in --out")
    parser.add_argument("--central-model", help="also compare the published model with this `fedprofile train` model "
                        "(e.g. the recipe's), paired over every merchant's test users on its own catalogue")
    parser.add_argument("extra", nargs="*", help="further `fedprofile simulate` options (after --)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    base = SYNTHETIC_ARGS if args.synthetic else BEAUTY_ARGS + (BEAUTY_DP if args.dp else ["--no-dp"])
    if args.synthetic:
        base = base + (["--dp", "--epsilon", "8"] if args.dp else ["--no-dp"])
    # --no-served: this benchmark reports the published model; the served figures (bench/served_quality.py) train
    # every merchant's own and fine-tuned models after the last round, and metrics.json waits for them
    cmd = [sys.executable, "-m", "fedprofile", "simulate", "--out", args.out, *base, "--no-served",
           *([] if args.no_baseline else ["--centralized-baseline"]), *args.extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    if not args.report_only:
        subprocess.run(cmd, check=True, env=env)
    m = json.loads((Path(args.out) / "metrics.json").read_text())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, device {m['device']}")
    print(f"federated ({m['merchants']} merchants, {m['rounds']} rounds): test NDCG@10 {m['ndcg@10']:.4f} "
          f"HR@10 {m['hr@10']:.4f} MRR {m['mrr']:.4f}")
    if "centralized" in m:
        c = m["centralized"]
        print(f"centralized ({c['epochs']:g} epochs, batch {c.get('batch_size', '?')}): test NDCG@10 {c['ndcg@10']:.4f} HR@10 {c['hr@10']:.4f} "
              f"({c['train_seconds']:.0f} s training); federated / centralized NDCG@10 = {m['ndcg@10'] / c['ndcg@10']:.3f}")
        paired = c.get("paired") or {}
        if paired.get("low") is not None:
            print(f"the same users under both models: ratio {paired['ratio']:.3f}, {paired['level']:.0%} paired bootstrap "
                  f"interval [{paired['low']:.3f}, {paired['high']:.3f}] over {paired['users']} test users "
                  "(test-set noise only; the seed's training noise comes on top: bench/federated_seeds.py)")
    if m["dp"]:
        eps = m["epsilon"].values()
        print(f"epsilon per merchant: min {min(eps):.3f} max {max(eps):.3f} (target {m['target_epsilon']})")
    print("round  NDCG@10  valid  seconds  train-phase  local-training(sum)  evaluate-phase  overhead(share)")
    shares = []
    for row in m["history"]:
        local = sum(row["local-train-seconds"].values())
        train, evaluate = row["train-phase-seconds"], row.get("evaluate-phase-seconds", 0.0)
        overhead = row["seconds"] - local - evaluate  # messaging, (de)serialisation, screening, aggregation, checkpoint
        shares.append(overhead / row["seconds"])
        print(f"{row['round']:5d}  {row.get('ndcg@10', float('nan')):.4f}  {row.get('valid-ndcg@10', float('nan')):.4f}"
              f"  {row['seconds']:7.1f}  {train:11.1f}  "
              f"{local:19.1f}  {evaluate:14.1f}  {overhead:6.1f} ({overhead / row['seconds']:.0%})")
    validated = [row for row in m["history"] if row.get("valid-ndcg@10") is not None and row.get("ndcg@10") is not None]
    if validated:  # what a coordinator could publish as final without looking at any test user
        best = max(validated, key=lambda row: row["valid-ndcg@10"])
        print(f"validation-selected round {best['round']}: valid NDCG@10 {best['valid-ndcg@10']:.4f}, test NDCG@10 "
              f"{best['ndcg@10']:.4f} HR@10 {best.get('hr@10', float('nan')):.4f} (last round: test "
              f"{validated[-1]['ndcg@10']:.4f})")
    later = shares[1:] or shares
    print(f"Flower and bookkeeping overhead, rounds 2+: {sum(later) / len(later):.0%} of a round (round 1 also starts "
          "Ray and loads the data). Merchants train one after another here (one Ray actor of 2 cores).")
    if args.central_model:
        _against_central(m, Path(args.out), Path(args.central_model))
    print("repeat: python " + " ".join(a for a in sys.argv if a != "--report-only"))


def _against_central(m: dict, out: Path, central: Path) -> None:
    """The published model / a centralized model, per user on each merchant's own test users and catalogue."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from shared_model.checkpoint import load_model
    from shared_model.evaluation import paired_ratio
    from shared_model.merchant_data import simulated_merchants
    from shared_model.run_config import RunConfig
    from simulations.simulate import per_user_ndcg, published_per_user_ndcg

    run = RunConfig.from_flat(m["run_config"])
    federated, manifest = published_per_user_ndcg(run, m["merchants"], out / "models")
    model, _, _ = load_model(central / "model.pt" if central.is_dir() else central)
    centralized = per_user_ndcg(model, simulated_merchants(run, m["merchants"]))
    r = paired_ratio(federated, centralized, seed=run.seed)
    print(f"published {manifest.get('version')} / {central}: test NDCG@10 {federated.mean():.4f} / "
          f"{centralized.mean():.4f} = {r['ratio']:.3f} ({r['low']:.3f}-{r['high']:.3f}, {r['users']} users paired)")


if __name__ == "__main__":
    main()

"""Federated / centralized NDCG@10 over several seeds: one line per finished `bench/federated_quality.py` run, and means.

One run's test NDCG@10 moves by about 0.002 with the seed (split, initialisation, batches), the size of the
target's margin, so the target is judged on the mean. Each run also compares the two models user by user on the
same test users (a paired bootstrap interval: test-set noise only; the seeds show the training noise); runs made
before that comparison existed get it with --pair, which trains their centralized baseline again (it is
deterministic: the figure must come out as stored). Run each seed, then summarise:
    python bench/federated_quality.py --out runs/fed-beauty-d02                       # seed 0
    python bench/federated_quality.py --out runs/fed-beauty-d02-s1 -- --set seed=1    # and so on
    python bench/federated_seeds.py runs/fed-beauty-d02 runs/fed-beauty-d02-s1 runs/fed-beauty-d02-s2 [--pair]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.evaluation import paired_ratio  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from simulations.simulate import PAIRED_FILE, centralized_baseline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="--out folders of finished runs with a centralized baseline")
    parser.add_argument("--pair", action="store_true",
                        help="train the centralized baseline again where a run has no per-user comparison yet")
    args = parser.parse_args()
    rows, pooled = [], []
    for folder in args.runs:
        m = json.loads((Path(folder) / "metrics.json").read_text())
        if "centralized" not in m:
            sys.exit(f"{folder}/metrics.json has no centralized baseline (run without --no-baseline)")
        c = m["centralized"]
        seed = m.get("run_config", {}).get("seed", "?")
        if args.pair and not (Path(folder) / PAIRED_FILE).exists():
            run = RunConfig.from_flat({**m["run_config"], "run-dir": folder})
            again = centralized_baseline(run, m["merchants"], batch_size=c.get("batch_size"), federated_model=folder)
            print(f"{folder}: centralized baseline trained again: NDCG@10 {again['ndcg@10']:.5f} "
                  f"(stored {c['ndcg@10']:.5f}{', the same' if abs(again['ndcg@10'] - c['ndcg@10']) < 1e-9 else ', DIFFERENT'})",
                  flush=True)
        paired = None
        if (Path(folder) / PAIRED_FILE).exists():
            users = np.load(Path(folder) / PAIRED_FILE)
            pooled.append((users["federated"], users["centralized"]))
            paired = paired_ratio(users["federated"], users["centralized"], seed=0)
        rows.append((folder, seed, m["ndcg@10"], c["ndcg@10"], m["history"][-1]["valid-ndcg@10"], c["valid-ndcg@10"],
                     paired))
    print("run  seed  federated  centralized  ratio [paired 95% interval over users] | valid: federated  centralized  ratio")
    for folder, seed, fed, cen, fed_v, cen_v, paired in rows:
        interval = f" [{paired['low']:.3f}, {paired['high']:.3f}]" if paired and paired["low"] is not None else ""
        print(f"{folder}  {seed}  {fed:.4f}  {cen:.4f}  {fed / cen:.3f}{interval} | {fed_v:.4f}  {cen_v:.4f}  "
              f"{fed_v / cen_v:.3f}")
    fed, cen = mean(r[2] for r in rows), mean(r[3] for r in rows)
    fed_v, cen_v = mean(r[4] for r in rows), mean(r[5] for r in rows)
    print(f"mean over {len(rows)}: federated {fed:.4f}, centralized {cen:.4f}, ratio of means {fed / cen:.3f} "
          f"(per-seed ratios {', '.join(f'{r[2] / r[3]:.3f}' for r in rows)}); validation {fed_v / cen_v:.3f}")
    if len(pooled) == len(rows) > 1:
        both = paired_ratio(np.concatenate([f for f, _ in pooled]), np.concatenate([c for _, c in pooled]), seed=0)
        interval = f"[{both['low']:.3f}, {both['high']:.3f}]" if both["low"] is not None else "(none: too few hits)"
        print(f"all seeds' users pooled: ratio {both['ratio']:.3f}, 95% interval over users {interval} "
              f"({both['users']} user-runs; seed-to-seed spread comes on top)")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

"""Federated / centralized NDCG@10 over several seeds: one line per finished `bench/federated_quality.py` run, and means.

One run's test NDCG@10 moves by about 0.002 with the seed (split, initialisation, batches), the size of the
target's margin, so the target is judged on the mean. Each run also compares the two models user by user on the
same test users (a paired bootstrap interval: test-set noise only; the seeds show the training noise); runs made
before that comparison existed get it with --pair, which trains their centralized baseline again (it is
deterministic: the figure must come out as stored). A variant of the federation run with --no-baseline borrows
the baseline of a run with the same seed and data (--baseline-from, one per run; the baseline reads none of the
federation's own settings, which the script checks) and is also paired with that run's federation. Run each
seed, then summarise:
    python bench/federated_quality.py --out runs/fed-beauty-d02                       # seed 0
    python bench/federated_quality.py --out runs/fed-beauty-d02-s1 -- --set seed=1    # and so on
    python bench/federated_seeds.py runs/fed-beauty-d02 runs/fed-beauty-d02-s1 runs/fed-beauty-d02-s2 [--pair]
    python bench/federated_seeds.py runs/VARIANT runs/VARIANT-s1 runs/VARIANT-s2 \
        --baseline-from runs/fed-beauty-d02 runs/fed-beauty-d02-s1 runs/fed-beauty-d02-s2
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
from simulations.simulate import PAIRED_FILE, centralized_baseline, published_per_user_ndcg  # noqa: E402

# Settings only the federation reads: runs that differ in these alone share one centralized baseline.
FEDERATION_ONLY = {"strategy", "min-replies", "fraction-train", "fraction-evaluate", "round-timeout", "proximal-mu",
                   "server-lr", "server-tau", "server-momentum", "sparse-rows", "trim-beta", "krum-byzantine",
                   "keep-optimizer-state", "run-dir", "resume"}


def borrow_baseline(folder: Path, reference: Path, m: dict) -> tuple[dict, dict]:
    """The centralized figures of `reference` for the run in `folder`, after checking that its baseline is this
    run's too; the run's published model is scored per user beside them (PAIRED_FILE in `folder`), and the per-user
    ratio to `reference`'s own federation is returned as well."""
    ref = json.loads((reference / "metrics.json").read_text())
    if "centralized" not in ref or not (reference / PAIRED_FILE).exists():
        sys.exit(f"{reference} has no centralized baseline with per-user figures to borrow")
    differ = {k for k in m["run_config"].keys() | ref["run_config"].keys()
              if m["run_config"].get(k) != ref["run_config"].get(k)}
    budget = (m["run_config"]["num-rounds"] * m["run_config"]["local-epochs"],
              ref["run_config"]["num-rounds"] * ref["run_config"]["local-epochs"])
    if differ - FEDERATION_ONLY - {"num-rounds", "local-epochs"} or budget[0] != budget[1] \
            or m["merchants"] != ref["merchants"]:
        sys.exit(f"{folder} and {reference} differ in settings the centralized baseline reads: "
                 f"{sorted(differ - FEDERATION_ONLY) or 'the epoch budget or the number of merchants'}")
    run = RunConfig.from_flat({**m["run_config"], "run-dir": str(folder)})
    federated, _ = published_per_user_ndcg(run, m["merchants"], folder)
    stored = np.load(reference / PAIRED_FILE)
    np.savez_compressed(folder / PAIRED_FILE, federated=federated, centralized=stored["centralized"])
    return ref["centralized"], paired_ratio(federated, stored["federated"], seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="--out folders of finished runs with a centralized baseline")
    parser.add_argument("--pair", action="store_true",
                        help="train the centralized baseline again where a run has no per-user comparison yet")
    parser.add_argument("--baseline-from", nargs="+", type=Path, default=[],
                        help="for runs made with --no-baseline: the run (same seed and data) whose baseline to use, one per run")
    args = parser.parse_args()
    if args.baseline_from and len(args.baseline_from) != len(args.runs):
        sys.exit("--baseline-from needs one run per run summarised, in the same order")
    rows, pooled, against_reference = [], [], []
    for i, folder in enumerate(args.runs):
        m = json.loads((Path(folder) / "metrics.json").read_text())
        if args.baseline_from:
            m["centralized"], versus = borrow_baseline(Path(folder), args.baseline_from[i], m)
            against_reference.append((folder, args.baseline_from[i], versus))
        if "centralized" not in m:
            sys.exit(f"{folder}/metrics.json has no centralized baseline (run without --no-baseline, or --baseline-from)")
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
    for folder, reference, versus in against_reference:
        print(f"{folder} against the federation of {reference}, same users: {versus['ratio']:.3f} "
              f"[{versus['low']:.3f}, {versus['high']:.3f}]")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

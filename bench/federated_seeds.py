"""Federated / centralized NDCG@10 over several seeds: one line per finished `bench/federated_quality.py` run, and means.

One run's test NDCG@10 moves by about 0.002 with the seed (split, initialisation, batches), the size of the
target's margin, so the target is judged on the mean. Run each seed, then summarise:
    python bench/federated_quality.py --out runs/fed-beauty-d02                       # seed 0
    python bench/federated_quality.py --out runs/fed-beauty-d02-s1 -- --set seed=1    # and so on
    python bench/federated_seeds.py runs/fed-beauty-d02 runs/fed-beauty-d02-s1 runs/fed-beauty-d02-s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="--out folders of finished runs with a centralized baseline")
    args = parser.parse_args()
    rows = []
    for folder in args.runs:
        m = json.loads((Path(folder) / "metrics.json").read_text())
        if "centralized" not in m:
            sys.exit(f"{folder}/metrics.json has no centralized baseline (run without --no-baseline)")
        c = m["centralized"]
        seed = m.get("run_config", {}).get("seed", "?")
        rows.append((folder, seed, m["ndcg@10"], c["ndcg@10"], m["history"][-1]["valid-ndcg@10"], c["valid-ndcg@10"]))
    print("run  seed  federated  centralized  ratio | valid: federated  centralized  ratio")
    for folder, seed, fed, cen, fed_v, cen_v in rows:
        print(f"{folder}  {seed}  {fed:.4f}  {cen:.4f}  {fed / cen:.3f} | {fed_v:.4f}  {cen_v:.4f}  {fed_v / cen_v:.3f}")
    fed, cen = mean(r[2] for r in rows), mean(r[3] for r in rows)
    fed_v, cen_v = mean(r[4] for r in rows), mean(r[5] for r in rows)
    print(f"mean over {len(rows)}: federated {fed:.4f}, centralized {cen:.4f}, ratio of means {fed / cen:.3f} "
          f"(per-seed ratios {', '.join(f'{r[2] / r[3]:.3f}' for r in rows)}); validation {fed_v / cen_v:.3f}")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

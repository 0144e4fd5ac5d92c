"""Run several `fedprofile train` configurations side by side and rank them by validation NDCG@10.

Repeat: python bench/sweep.py --data ../shared/data/amazon-beauty --format amazon --grid bench/grids/beauty.json --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--grid", required=True, help="JSON list of {name: ..., args: [CLI args]}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    runs = json.loads(Path(args.grid).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending, active, started = list(runs), [], time.time()
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    while pending or active:
        while pending and len(active) < args.parallel:
            run = pending.pop(0)
            folder = out / run["name"]
            cmd = [sys.executable, "-m", "fedprofile", "train", "--data", args.data, "--format", args.format,
                   "--out", str(folder), *run["args"]]
            log = open(out / f"{run['name']}.log", "w")
            active.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(2)
        for item in list(active):
            if item[1].poll() is not None:
                active.remove(item)
                print(f"[{time.time() - started:6.0f}s] {item[0]['name']} exited {item[1].returncode}", flush=True)
    rows = []
    for run in runs:
        metrics_file = out / run["name"] / "metrics.json"
        if not metrics_file.exists():
            rows.append((run["name"], None))
            continue
        m = json.loads(metrics_file.read_text())
        rows.append((run["name"], m))
    print(f"{'run':28} {'valid ndcg@10':>13} {'test ndcg@10':>12} {'test hr@10':>10} {'eps':>6} {'best ep':>7} {'secs':>7}")
    for name, m in sorted(rows, key=lambda r: -(r[1]["valid"]["ndcg@10"] if r[1] else -1)):
        if m is None:
            print(f"{name:28} failed")
            continue
        print(f"{name:28} {m['valid']['ndcg@10']:13.4f} {m['ndcg@10']:12.4f} {m['hr@10']:10.4f} {m['epsilon']:6.2f} "
              f"{m['best_epoch']:7d} {m['train_seconds']:7.0f}")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

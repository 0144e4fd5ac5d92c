"""Amazon Beauty quality benchmark: leave-one-out, full ranking, history masked; NDCG@10 vs training time.

Runs `fedprofile train` with its defaults (the recipe), then prints the figures, the metric-vs-time curve and
the published anchors. Repeat (non-private):
    python bench/beauty_quality.py --out runs/beauty
and with DP at epsilon 8:
    python bench/beauty_quality.py --dp --out runs/beauty-dp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ANCHORS = {  # NDCG@10, HR@10 on exactly this file (S3-Rec preprocessing, 22,363 users)
    "SASRec": (0.0318, 0.0605),
    "SASRec + 256-negative sampled softmax": (0.0531, 0.0921),
    "eSASRec": (0.0523, 0.0928),
    "BSARec": (0.0611, 0.1008),
}
# Plain training is `fedprofile train`'s defaults (fedprofile/recipes.py); the script only asks for test figures
# at every evaluation (the curve) and the refit beside the validation-selected model.
PLAIN = ["--track-test", "--refit"]
# The DP figure of docs/benchmarks.md 2 was measured with these settings (two blocks of two heads then).
PRIVATE = ["--dp", "--epsilon", "8", "--delta", "1e-5", "--layers", "2", "--heads", "2", "--lr", "3e-3",
           "--batch-size", "1024", "--eval-every", "2", "--track-test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--dp", action="store_true", help="DP-SGD at epsilon 8, delta 1e-5")
    parser.add_argument("--minutes", type=float, default=60.0, help="training-time budget")
    parser.add_argument("extra", nargs="*", help="further `fedprofile train` options (after --)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "fedprofile", "train", "--data", args.data, "--format", "amazon", "--out", args.out,
           "--max-minutes", str(args.minutes), *(PRIVATE if args.dp else PLAIN), *args.extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run(cmd, check=True, env=env)
    m = json.loads((Path(args.out) / "metrics.json").read_text())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, device {m['device']}, torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"test  NDCG@10 {m['ndcg@10']:.4f}  HR@10 {m['hr@10']:.4f}  MRR {m['mrr']:.4f}  "
          f"(best epoch {m['best_epoch']}, {m['train_seconds'] / 60:.1f} min training, "
          f"{m['examples_per_second']:.0f} users/s, epsilon {m['epsilon']:.3f}, delta {m['delta']:g})")
    print(f"valid NDCG@10 {m['valid']['ndcg@10']:.4f}  HR@10 {m['valid']['hr@10']:.4f}")
    if "selection_test" in m:
        t = m["selection_test"]
        print(f"test of the validation-selected model (before the refit on train + validation): NDCG@10 "
              f"{t['ndcg@10']:.4f}  HR@10 {t['hr@10']:.4f}  MRR {t['mrr']:.4f}")
    if "with_adjacency" in m:
        b = m["with_adjacency"]
        print(f"with the item adjacency (what a merchant serves; weight {b['weight']:g}, chosen on validation: valid "
              f"NDCG@10 {b['valid']:.4f}): test NDCG@10 {b['test']['ndcg@10']:.4f}  HR@10 {b['test']['hr@10']:.4f}"
              + (f"; validation-selected model {b['selection_test']['ndcg@10']:.4f}" if "selection_test" in b else ""))
    print("curve (minutes of training -> valid / test NDCG@10):")
    for row in m["history"]:
        if "valid" in row and not row.get("refit"):
            test = row.get("test", {}).get("ndcg@10", float("nan"))
            eps = f"  eps {row['epsilon']:.2f}" if "epsilon" in row else ""
            print(f"  epoch {row['epoch']:4d}  {row['seconds'] / 60:6.1f} min  {row['valid']['ndcg@10']:.4f} / {test:.4f}{eps}")
    for name, (ndcg, hr) in ANCHORS.items():
        print(f"  anchor {name:40s} NDCG@10 {ndcg:.4f} HR@10 {hr:.4f}  (ours / anchor NDCG: {m['ndcg@10'] / ndcg:.2f})")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

"""The shared model's DP / non-private NDCG@10 against the number of customers in the federation.

For each total N (synthetic customers, split evenly over `--merchants` built-in shops): the distributed-DP
federation at epsilon 8 with a fixed expected batch (`--batch`, so the sample rate is batch / N and a larger
federation pays less noise per step for the same epsilon) and the same federation without DP (the run-config
defaults: rounds x 1 local epoch), side by side on the same customers; each published model is scored on every
test user, the ratio paired over users. Each point is kept in OUT/N-bBATCH/result.json; the no-DP federation of
an N already trained for another batch is scored again, not retrained; `--plot` draws every point found in OUT,
a line per batch. Repeat:
    python bench/dp_scale.py --customers 2000 20000 --out runs/dp-scale --plot docs/img/dp-scale.png
    python bench/dp_scale.py --customers 20000 --batch 4000 --out runs/dp-scale --plot docs/img/dp-scale.png
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
from shared_model.run_config import RunConfig  # noqa: E402
from simulations.inprocess import InProcessGrid  # noqa: E402
from simulations.simulate import published_per_user_ndcg  # noqa: E402


def federation(run: RunConfig, merchants: int, folder: Path) -> tuple[np.ndarray, dict]:
    run = run.replace(run_dir=str(folder), fraction_evaluate=0.0)
    started = time.perf_counter()
    result = run_federation(InProcessGrid(client_app, merchants), run)
    scores, _ = published_per_user_ndcg(run, merchants, result.model_dir)
    return scores, {"ndcg@10": float(scores.mean()), "seconds": time.perf_counter() - started,
                    "epsilon": max(result.epsilon.values(), default=0.0)}


def point(total: int, args, base: RunConfig) -> dict:
    users = total // args.merchants
    run = base.replace(synthetic_users=users)
    rate = min(1.0, args.batch / (users * args.merchants))
    dp = run.replace(privacy="distributed", sample_rate=rate)
    folder = Path(args.out) / f"{total}-b{args.batch:g}"
    print(f"{total} customers ({users} per merchant): DP sample rate {rate:.4f}, sigma "
          f"{dp.distributed_noise():.3f}", flush=True)
    dp_scores, dp_row = federation(dp, args.merchants, folder / "dp")
    print(f"  DP: NDCG@10 {dp_row['ndcg@10']:.4f} ({dp_row['seconds']:.0f} s)", flush=True)
    # the no-DP federation does not depend on the DP batch: one trained for another batch is scored again
    earlier = sorted(Path(args.out).glob(f"{total}-b*/no-dp/models"))
    if earlier:
        plain_scores, _ = published_per_user_ndcg(run.replace(dp=False), args.merchants, earlier[0])
        plain_row = {**json.loads((earlier[0].parents[1] / "result.json").read_text())["no-dp"],
                     "ndcg@10": float(plain_scores.mean()), "from": str(earlier[0].parent)}
    else:
        plain_scores, plain_row = federation(run.replace(dp=False), args.merchants, folder / "no-dp")
    print(f"  no DP: NDCG@10 {plain_row['ndcg@10']:.4f} ({plain_row['seconds']:.0f} s)", flush=True)
    result = {"customers": total, "merchants": args.merchants, "batch": args.batch, "sample_rate": rate,
              "sigma": dp.distributed_noise(), "dp": dp_row, "no-dp": plain_row, "test_users": int(len(dp_scores)),
              "dp/no-dp": paired_ratio(dp_scores, plain_scores, seed=0), "date": time.strftime("%Y-%m-%d"),
              "command": "python " + " ".join(sys.argv),
              "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} threads, "
                         f"{'cuda' if torch.cuda.is_available() else 'cpu'}"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def plot(out: Path, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((json.loads(p.read_text()) for p in out.glob("*/result.json")), key=lambda r: r["customers"])
    if not points:
        raise SystemExit(f"{out}: no */result.json to plot")
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    for batch in sorted({p.get("batch", 1000.0) for p in points}):
        series = [p for p in points if p.get("batch", 1000.0) == batch]
        ratio = [p["dp/no-dp"]["ratio"] for p in series]
        low = [r - (p["dp/no-dp"]["low"] or r) for r, p in zip(ratio, series)]  # no interval: no bar
        high = [(p["dp/no-dp"]["high"] or r) - r for r, p in zip(ratio, series)]
        axis.errorbar([p["customers"] for p in series], ratio, yerr=[low, high], marker="o", capsize=3,
                      label=f"distributed DP, epsilon 8, expected batch {batch:g}")
    axis.axhline(1.0, color="grey", lw=0.8, ls=":")
    axis.set_ylim(0, 1.05)
    axis.set_xscale("log")
    axis.set_xlabel(f"customers in the federation ({points[0]['merchants']} merchants)")
    axis.set_ylabel("NDCG@10, DP / no DP")
    axis.set_title("What DP costs the shared model, by federation size")
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120)
    print(f"plotted {len(points)} points to {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="*", default=[2000, 20000])
    parser.add_argument("--merchants", type=int, default=8)
    parser.add_argument("--batch", type=float, default=1000.0, help="expected DP batch (customers a round)")
    parser.add_argument("--set", action="append", default=[], help="run-config key=value for both arms")
    parser.add_argument("--out", default="runs/dp-scale")
    parser.add_argument("--plot", default=None, help="draw every point found in --out into this PNG")
    args = parser.parse_args()
    base = RunConfig(data="synthetic", data_format="synthetic", partitioning="natural", min_replies=2)
    base = RunConfig.from_flat({**base.to_flat(), **dict(item.split("=", 1) for item in args.set)})
    results = [point(total, args, base) for total in args.customers]
    print(json.dumps(results, indent=2, default=str))
    if args.plot:
        plot(Path(args.out), Path(args.plot))
    print(f"repeat: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()

"""What merchants would serve, from two federations already trained: the DP one and its twin without DP.

`fedprofile simulate` measures this at the end of a run (metrics.json `served`); this script measures it for
federations too long to train again beside it (Beauty: 51 minutes for the distributed-DP federation of
docs/benchmarks.md 10b). Per merchant, on its own test customers: the merchant alone (its own model, no DP),
the DP shared model, the on-site model (the best on the merchant's validation customers of the shared model,
it fine-tuned on site and the merchant's own model; client/onsite/personalise.py), and the same two for the
federation without DP, all in this one run, with paired intervals over the test users. Repeat (Beauty):
    python bench/served_quality.py --dp-model runs/distributed-dp-beauty/distributed \
        --plain-model runs/fed-beauty-served/simulate --data ../shared/data/amazon-beauty --format amazon \
        --merchants 8 --set n-layers=1 --set n-heads=1 --set dropout=0.2 --set lr=1e-3 --set negatives=1024 \
        --out runs/served-beauty
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.run_config import RunConfig  # noqa: E402
from simulations.served import onsite_config, served_figures  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dp-model", required=True, help="the DP federation's run or model folder")
    parser.add_argument("--plain-model", help="the same federation's, trained without DP (its arm is left out "
                                                "without it)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--merchants", type=int, required=True)
    parser.add_argument("--partitioning", default="iid")
    parser.add_argument("--set", action="append", default=[], help="run-config key=value (model, on-site lr ...)")
    parser.add_argument("--no-blend", action="store_true", help="serve the models alone, without the merchants' "
                                                                    "item adjacency (the blend's own effect)")
    parser.add_argument("--ensemble", action="store_true", help="also measure the score ensemble of each merchant's "
                                                                   "own model and the federation's (not served yet)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    values = dict(item.split("=", 1) for item in args.set)
    run = RunConfig.from_flat({**values, "data": args.data, "data-format": args.format,
                                  "partitioning": args.partitioning})
    started = time.perf_counter()
    figures = served_figures(run, args.merchants, args.dp_model, without_dp=args.plain_model,
                             onsite=onsite_config(run, blend=not args.no_blend), ensemble=args.ensemble)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"served": figures, "seconds": round(seconds, 1), "command": "python " + " ".join(sys.argv),
              "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "device": "cuda" if torch.cuda.is_available() else "cpu"}}
    (out / "served.json").write_text(json.dumps(result, indent=2, default=str))
    for kind in ("alone", "shared", "onsite") + (("ensemble",) if args.ensemble else ()):
        print(f"{kind:>14}: NDCG@10 {figures[kind]['ndcg@10']:.4f}  HR@10 {figures[kind]['hr@10']:.4f}")
    for kind in ("shared", "onsite") if "no-dp" in figures else ():
        print(f"{'no-DP ' + kind:>14}: NDCG@10 {figures['no-dp'][kind]['ndcg@10']:.4f}  "
              f"HR@10 {figures['no-dp'][kind]['hr@10']:.4f}")
    for key, ratio in figures["ratios"].items():
        interval = f" ({ratio['low']:.3f}-{ratio['high']:.3f})" if ratio.get("low") is not None else ""
        print(f"{key}: {ratio['ratio']:.3f}{interval}")
    for name, row in sorted(figures["merchants"].items()):
        plain = (f", no-DP on-site {row['no-dp-onsite']['ndcg@10']:.4f} ({row['no-dp-onsite-fit']['chosen']}, "
                 f"blend {row['no-dp-onsite-fit']['adjacency-weight']:g})" if "no-dp-onsite" in row else "")
        print(f"{name}: alone {row['alone']['ndcg@10']:.4f} (blend {row['alone-fit']['adjacency-weight']:g}), "
              f"shared {row['shared']['ndcg@10']:.4f}, on-site {row['onsite']['ndcg@10']:.4f} "
              f"({row['onsite-fit']['chosen']}, fine-tuned {row['onsite-fit'].get('epochs', 0)} epochs, "
              f"blend {row['onsite-fit']['adjacency-weight']:g}){plain}")
    print(f"{seconds / 60:.1f} min; figures in {out}/served.json; repeat: {result['command']}")


if __name__ == "__main__":
    main()

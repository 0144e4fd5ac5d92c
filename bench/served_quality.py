"""What merchants would serve, from two federations already trained: the DP one and its twin without DP.

`fedprofile simulate` measures this at the end of a run (metrics.json `served`); this script measures it for
federations too long to train again beside it (Beauty: 51 minutes for the distributed-DP federation of
docs/benchmarks.md 10b). Per merchant, on its own test customers: the merchant alone (its own model, no DP),
the DP shared model, the on-site model (the best on the merchant's validation customers of the shared model,
it fine-tuned on site, the merchant's own model and the own model plus the federation's, scores added;
client/onsite/personalise.py), and the same two for the
federation without DP, all in this one run, with paired intervals over the test users. Repeat (Beauty):
    python bench/served_quality.py --dp-model runs/distributed-dp-beauty/distributed \
        --plain-model runs/fed-beauty-served/simulate --data ../shared/data/amazon-beauty --format amazon \
        --merchants 8 --set n-layers=1 --set n-heads=1 --set dropout=0.2 --set lr=1e-3 --set negatives=1024 \
        --out runs/served-beauty
`--alone-pair N`, instead of all that, is the ensemble's control: at the first N merchants, own model plus own model.
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
from simulations.report import describe_choice  # noqa: E402
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
    parser.add_argument("--alone-pair", type=int, default=0, metavar="N",
                        help="the control for the on-site ensemble instead: at the first N merchants, the merchant's own model "
                             "plus a second own model from another seed (what ensembling gives without the federation)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    values = dict(item.split("=", 1) for item in args.set)
    run = RunConfig.from_flat({**values, "data": args.data, "data-format": args.format,
                                  "partitioning": args.partitioning})
    if args.alone_pair:
        return alone_pair(run, args.merchants, args.alone_pair, args.dp_model, Path(args.out))
    started = time.perf_counter()
    figures = served_figures(run, args.merchants, args.dp_model, without_dp=args.plain_model,
                             onsite=onsite_config(run, blend=not args.no_blend),
                             progress=lambda name, row: print(_row(name, row), flush=True))
    seconds = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"served": figures, "seconds": round(seconds, 1), "command": "python " + " ".join(sys.argv),
              "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "device": "cuda" if torch.cuda.is_available() else "cpu"}}
    (out / "served.json").write_text(json.dumps(result, indent=2, default=str))
    for kind in ("alone", "shared", "onsite"):
        print(f"{kind:>14}: NDCG@10 {figures[kind]['ndcg@10']:.4f}  HR@10 {figures[kind]['hr@10']:.4f}")
    for kind in ("shared", "onsite") if "no-dp" in figures else ():
        print(f"{'no-DP ' + kind:>14}: NDCG@10 {figures['no-dp'][kind]['ndcg@10']:.4f}  "
              f"HR@10 {figures['no-dp'][kind]['hr@10']:.4f}")
    for key, ratio in figures["ratios"].items():
        interval = f" ({ratio['low']:.3f}-{ratio['high']:.3f})" if ratio.get("low") is not None else ""
        print(f"{key}: {ratio['ratio']:.3f}{interval}")
    for name, row in sorted(figures["merchants"].items()):
        print(_row(name, row))
    print(f"{seconds / 60:.1f} min; figures in {out}/served.json; repeat: {result['command']}")


def _row(name: str, row: dict) -> str:
    plain = (f", no-DP on-site {row['no-dp-onsite']['ndcg@10']:.4f} ({describe_choice(row['no-dp-onsite-fit'])})"
             if "no-dp-onsite" in row else "")
    return (f"{name}: alone {row['alone']['ndcg@10']:.4f} (blend {row['alone-fit']['adjacency-weight']:g}), "
            f"shared {row['shared']['ndcg@10']:.4f}, on-site {row['onsite']['ndcg@10']:.4f} "
            f"({describe_choice(row['onsite-fit'])}){plain}")


def alone_pair(run: RunConfig, merchants: int, first: int, dp_model: str, out: Path) -> None:
    """Each of the first `first` merchants' own model (seed as run) against the score ensemble of it and a second
    own model (seed + 1), both blended with the merchant's item adjacency as chosen on validation; the
    architecture of the federation's model in `dp_model`, as the merchant alone has in the main measurement."""
    import dataclasses

    import numpy as np

    from client.onsite.adjacency import ItemAdjacency
    from client.onsite.personalise import best_ensemble, blend_weight, train_alone
    from shared_model.checkpoint import load_global_model, model_for_catalogue, resolve_model_folder
    from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio
    from shared_model.merchant_data import simulated_merchants

    started, device = time.perf_counter(), torch.device("cpu")
    config = onsite_config(run)
    model_config, shared, _ = load_global_model(resolve_model_folder(dp_model))
    scores = {"alone": [], "alone-pair": []}
    for merchant in simulated_merchants(run, merchants)[:first]:
        data = merchant.sequences
        adjacency = ItemAdjacency.from_training(data.train, data.catalogue.num_items)
        template = model_for_catalogue(model_config, shared, data.catalogue)  # its architecture; weights fresh
        one, _ = train_alone(template, data, config, device=device)
        two, _ = train_alone(template, data, dataclasses.replace(config, seed=config.seed + 1), device=device)
        _, weight = blend_weight(one, data, adjacency, device=device)
        pair, _, pair_weight = best_ensemble(one, two, data, adjacency, device=device)
        for kind, model, w in (("alone", one, weight), ("alone-pair", pair, pair_weight)):
            ranks = held_out_ranks(model, data.test, device=device, boost=adjacency.booster(w))
            scores[kind].append(ndcg_at(ranks, 10).numpy())
        print(f"{merchant.name}: alone {scores['alone'][-1].mean():.4f}, alone pair "
              f"{scores['alone-pair'][-1].mean():.4f} (second weight {pair.weight:g}, blend {pair_weight:g})",
              flush=True)
    per_user = {kind: np.concatenate(parts) for kind, parts in scores.items()}
    ratio = paired_ratio(per_user["alone-pair"], per_user["alone"], seed=run.seed)
    result = {"alone": float(per_user["alone"].mean()), "alone-pair": float(per_user["alone-pair"].mean()),
              "alone-pair/alone": ratio, "merchants": first, "seconds": round(time.perf_counter() - started, 1),
              "command": "python " + " ".join(sys.argv)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "alone-pair.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"alone {result['alone']:.4f}, alone pair {result['alone-pair']:.4f}: ratio {ratio['ratio']:.3f} "
          f"({ratio['low']:.3f}-{ratio['high']:.3f}); {result['seconds'] / 60:.1f} min; repeat: {result['command']}")


if __name__ == "__main__":
    main()

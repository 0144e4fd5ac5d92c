"""The shared model's DP recipe, lever by lever: distributed-DP federations that differ in one setting, side by side.

Each arm is a distributed-DP federation (the real ClientApp and coordinator through the in-process grid, no Ray)
at `make run`'s setting unless `--set` or the arm says otherwise; an arm is `NAME` or `NAME:key=value,key=value`
(run-config keys). Every arm runs once per seed; the published model is scored on every merchant's test users
and each arm is compared with the first, paired over (seed, user) (bootstrap 95% interval). Each run is scored
twice over: its last weights (`NAME/last`) and the moving average of its weights over rounds at each of
`--decays` (`NAME/average-D`, what `published-average = D` publishes), so averaging, the one lever that is pure
post-processing, is compared within a run with no other noise. The merchants' DP
noise is secret (drawn afresh each run), so seeds repeat the initial weights, not the noise. Repeat:
    python bench/dp_recipe.py --seeds 0 1 2 --out runs/dp-recipe
    python bench/dp_recipe.py --seeds 0 1 --arm adam --arm lr-0.03:server-lr=0.03 --out runs/dp-recipe-lr
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
from server.store import RunStore  # noqa: E402
from server.weight_average import WeightAverage  # noqa: E402
from shared_model.checkpoint import model_for_catalogue  # noqa: E402
from shared_model.evaluation import paired_ratio  # noqa: E402
from shared_model.merchant_data import simulated_merchants  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from simulations.inprocess import InProcessGrid  # noqa: E402
from simulations.simulate import per_user_ndcg  # noqa: E402

ARMS = ["adam", "adambc:server-optimizer=adambc", "lr-0.03:server-lr=0.03"]


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"arm {text!r}: settings are key=value, comma-separated")
    return name, dict(pairs)


def run_arm(base: RunConfig, settings: dict, merchants: int, folder: Path,
            decays: list[float]) -> dict[str, tuple[np.ndarray, dict]]:
    """Per-user NDCG@10 and figures of the run's last weights ("last") and of the moving average of its weights
    over rounds at each decay ("average-D"), all from this one run."""
    run = RunConfig.from_flat({**base.to_flat(), **settings}).replace(run_dir=str(folder), fraction_evaluate=0.0,
                                                                       published_average=0.0)
    store, averages = RunStore(run.run_path), [WeightAverage(d) for d in decays]
    last: dict[str, np.ndarray] = {}

    def keep(row):  # the checkpoint of the round just finished holds its weights
        nonlocal last
        last = store.latest().arrays
        for average in averages:
            average.update(last)

    started = time.perf_counter()
    result = run_federation(InProcessGrid(client_app, merchants), run, on_round=keep)
    row = {"seconds": time.perf_counter() - started, "epsilon": max(result.epsilon.values(), default=0.0),
           "aggregated": sum(bool(r.get("aggregated")) for r in result.history)}
    merchant_data = simulated_merchants(run, merchants)
    out = {}
    for label, arrays in [("last", last)] + [(f"average-{a.decay:g}", a.average) for a in averages]:
        model = model_for_catalogue(run.model_config(), {k: torch.from_numpy(v) for k, v in arrays.items()},
                                    merchant_data[0].sequences.catalogue)
        scores = per_user_ndcg(model, merchant_data)
        out[label] = (scores, {**row, "ndcg@10": float(scores.mean())})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--format", default="synthetic")
    parser.add_argument("--merchants", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arm", action="append", default=None, help="NAME[:key=value,...]; the first is the "
                        "reference (repeatable; default: " + " ".join(ARMS) + ")")
    parser.add_argument("--set", action="append", default=[], help="run-config key=value for every arm")
    parser.add_argument("--decays", type=float, nargs="*", default=[0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--out", default="runs/dp-recipe")
    args = parser.parse_args()
    arms = [parse_arm(a) for a in (args.arm or ARMS)]
    base = RunConfig(data=args.data, data_format=args.format, privacy="distributed",
                     partitioning="natural" if args.data == "synthetic" else "iid", min_replies=min(2, args.merchants))
    base = RunConfig.from_flat({**base.to_flat(), **dict(item.split("=", 1) for item in args.set)})
    out = Path(args.out)
    scores: dict[str, list[np.ndarray]] = {}
    figures: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name, settings in arms:
            for label, (user_scores, row) in run_arm(base.replace(seed=seed), settings, args.merchants,
                                                     out / f"{name}-s{seed}", args.decays).items():
                scores.setdefault(f"{name}/{label}", []).append(user_scores)
                figures.setdefault(f"{name}/{label}", []).append({"seed": seed, "settings": settings, **row})
                print(f"  seed {seed} {name}/{label}: NDCG@10 {row['ndcg@10']:.4f} ({row['seconds']:.0f} s)",
                      flush=True)
    reference = arms[0][0] + "/last"
    pooled = {name: np.concatenate(v) for name, v in scores.items()}
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} threads, "
                         f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
              "arms": {name: {"mean ndcg@10": float(pooled[name].mean()), "runs": figures[name]} for name in pooled},
              "ratios": {f"{name} / {reference}": paired_ratio(pooled[name], pooled[reference], seed=0)
                         for name in pooled if name != reference}}
    for name in pooled:  # each average against the same runs' last weights
        arm, _, label = name.partition("/")
        if label != "last" and arm != arms[0][0]:
            report["ratios"][f"{name} / {arm}/last"] = paired_ratio(pooled[name], pooled[f"{arm}/last"], seed=0)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "per-user-ndcg.npz", **pooled)
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    print(f"repeat: {report['command']}")


if __name__ == "__main__":
    main()

"""Averaging the last weights on both sides: the federation's last published global models and the centralized model's last epochs.

For finished `bench/federated_quality.py` runs, each with `paired-ndcg.npz` (from its own centralized baseline, or
from one borrowed with `bench/federated_seeds.py --baseline-from`): the mean of the last K published global models
(the coordinator keeps three), and the centralized baseline trained again (deterministic: its final weights must
score exactly as stored) with its weights kept at each epoch's end and the mean of its last K epochs. All scored
per test user like `simulate`'s paired comparison. Repeat:
    python bench/weight_averaging.py runs/fed-beauty-keepopt runs/fed-beauty-keepopt-s1 runs/fed-beauty-keepopt-s2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.checkpoint import load_global_model, model_for_catalogue  # noqa: E402
from shared_model.device import pick_device  # noqa: E402
from shared_model.evaluation import paired_ratio  # noqa: E402
from shared_model.run_config import RunConfig  # noqa: E402
from simulations.datasets import simulated_merchants  # noqa: E402
from simulations.simulate import PAIRED_FILE, per_user_ndcg, train_centralized  # noqa: E402


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point weights (in float64, then back); other entries from the newest."""
    return {k: (sum(s[k].double() for s in states) / len(states)).to(states[-1][k].dtype)
            if states[-1][k].is_floating_point() else states[-1][k] for k in states[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="--out folders of finished runs with a paired comparison")
    parser.add_argument("--last", type=int, nargs="+", default=[2, 3], help="how many final rounds / epochs to average")
    parser.add_argument("--centralized-batch-size", type=int, default=128,
                        help="for runs whose baseline was borrowed (bench/federated_seeds.py --baseline-from)")
    args = parser.parse_args()
    device = pick_device()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}")
    pooled: dict[str, list[np.ndarray]] = {}
    for folder in map(Path, args.runs):
        m = json.loads((folder / "metrics.json").read_text())
        run = RunConfig.from_flat({**m["run_config"], "run-dir": str(folder)})
        stored = np.load(folder / PAIRED_FILE)
        merchants = simulated_merchants(run, m["merchants"])
        versions = sorted((folder / "models").glob("v[0-9]*"))
        if len(versions) < max(args.last):
            sys.exit(f"{folder}/models keeps {len(versions)} versions; --last asks for {max(args.last)}")
        shared = [load_global_model(v)[1] for v in versions]
        config = load_global_model(versions[-1])[0]
        federated = {}
        for k in [1, *args.last]:
            model = model_for_catalogue(config, mean_state(shared[-k:]), merchants[0].sequences.catalogue)
            federated[k] = per_user_ndcg(model, merchants)
        if not np.array_equal(federated[1], stored["federated"]):
            sys.exit(f"{folder}: the last published model does not score as stored in {PAIRED_FILE}")

        kept: list[dict[str, torch.Tensor]] = []

        def keep_epoch_end(model) -> None:
            kept.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            del kept[:-max(args.last)]

        batch_size = m.get("centralized", {}).get("batch_size", args.centralized_batch_size)
        model, _, _ = train_centralized(run, m["merchants"], batch_size=batch_size, on_epoch=keep_epoch_end)
        centralized = {}
        for k in [1, *args.last]:
            model.load_state_dict(mean_state(kept[-k:]))
            centralized[k] = per_user_ndcg(model, merchants)
        same = np.array_equal(centralized[1], stored["centralized"])
        print(f"\n{folder} (seed {run.seed}): centralized trained again, final weights "
              f"{'score as stored' if same else 'score DIFFERENTLY from the stored run'}")
        print("last K  federated  centralized  fed/cen [95% paired interval]  fed vs its final  cen vs its final")
        for k in [1, *args.last]:
            both = paired_ratio(federated[k], centralized[k], seed=0)
            own_f = paired_ratio(federated[k], federated[1], seed=0)["ratio"]
            own_c = paired_ratio(centralized[k], centralized[1], seed=0)["ratio"]
            print(f"{k:6d}  {federated[k].mean():.4f}     {centralized[k].mean():.4f}       {both['ratio']:.3f} "
                  f"[{both['low']:.3f}, {both['high']:.3f}]      {own_f:.3f}            {own_c:.3f}")
            pooled.setdefault(f"fed-{k}", []).append(federated[k])
            pooled.setdefault(f"cen-{k}", []).append(centralized[k])
    print("\nall runs' users pooled:")
    for k in [1, *args.last]:
        fed, cen = np.concatenate(pooled[f"fed-{k}"]), np.concatenate(pooled[f"cen-{k}"])
        both, fed_only = paired_ratio(fed, cen, seed=0), paired_ratio(fed, np.concatenate(pooled["cen-1"]), seed=0)
        print(f"last {k}: both averaged {both['ratio']:.3f} [{both['low']:.3f}, {both['high']:.3f}]; only the federation "
              f"averaged, against the final centralized model {fed_only['ratio']:.3f} "
              f"[{fed_only['low']:.3f}, {fed_only['high']:.3f}]")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

"""Two `fedprofile train` runs (seeds) as one model: does an ensemble inside the training budget beat one run?

Scores each run's validation-selected model alone and with the item adjacency, then the two as one
(`first + w * second`, `client/onsite/ensemble.py`), w and the adjacency weight chosen together on the validation
users, and prints test NDCG@10 of each with the paired ratio of the ensemble over the first run (users resampled).
Trains the runs that are not there yet with `fedprofile train`'s defaults. Repeat:
    python bench/seed_ensemble.py --runs runs/beauty-seed0 runs/beauty-seed1
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty"


def main() -> None:
    from client.onsite.adjacency import ItemAdjacency
    from client.onsite.personalise import best_ensemble, blend_weight
    from shared_model.checkpoint import load_model
    from shared_model.data.loaders import load_events
    from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio
    from shared_model.features import build_sequences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs=2, required=True, help="two run folders (trained with seeds 0 and 1 if absent)")
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--format", default="amazon")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget of each run")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for seed, run in enumerate(args.runs):
        if not (Path(run) / "model.pt").exists():
            subprocess.run([sys.executable, "-m", "fedprofile", "train", "--data", args.data, "--format", args.format,
                            "--out", run, "--seed", str(seed), "--max-minutes", str(args.minutes), "--device", "cpu"],
                           check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    models = [load_model(Path(run) / "model.pt")[0] for run in args.runs]
    log = load_events(args.data, args.format)
    config = models[0].config
    data = build_sequences(log.events, log.users, config.hash_spec, max_len=config.max_len, titles=log.item_titles)
    for model in models:
        model.set_catalogue(data.catalogue.descriptors)
    adjacency = ItemAdjacency.from_training(data.train, data.catalogue.num_items)
    device = torch.device("cpu")

    def test(model, weight: float):
        return ndcg_at(held_out_ranks(model, data.test, device=device, boost=adjacency.booster(weight)), 10).numpy()

    rows = {}
    for run, model in zip(args.runs, models):
        valid, weight = blend_weight(model, data, adjacency, device=device)
        rows[run] = (test(model, 0.0), test(model, weight), weight)
        print(f"{run}: test NDCG@10 {rows[run][0].mean():.4f}; with the adjacency (w {weight:g}, valid {valid:.4f}) "
              f"{rows[run][1].mean():.4f}", flush=True)
    both, valid, weight = best_ensemble(models[0], models[1], data, adjacency, device=device)
    ensemble = test(both, weight)
    first = rows[args.runs[0]][1]
    r = paired_ratio(ensemble, first)
    print(f"ensemble (second part's weight {both.weight:g}, adjacency {weight:g}; valid {valid:.4f}): test NDCG@10 "
          f"{ensemble.mean():.4f}; / the first run with the adjacency {r['ratio']:.3f} ({r['low']:.3f}-{r['high']:.3f})")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

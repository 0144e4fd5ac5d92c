"""One lever against `fedprofile train`'s defaults: same data, seed and stopping rule, paired over test users.

Trains the defaults plus the lever's flags (and the defaults alone, unless --base names a finished run), each
validation-selected, then scores both models on the same test users (full ranking, history masked): alone, and
blended with the item adjacency at the weight each one's validation users choose (as a merchant serves it). Prints
test NDCG@10 of each and the paired ratios lever / defaults (users resampled). Repeat:
    python bench/lever_check.py --out runs/beauty-frequency --base runs/beauty-base -- --frequency-mix 0.7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty"


def _train(out: Path, flags: list[str], args) -> None:
    subprocess.run([sys.executable, "-m", "fedprofile", "train", "--data", args.data, "--format", args.format,
                    "--out", str(out), "--seed", str(args.seed), "--max-minutes", str(args.minutes), "--track-test",
                    "--device", "cpu", *flags], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def main() -> None:
    from client.onsite.adjacency import ItemAdjacency
    from client.onsite.personalise import blend_weight
    from shared_model.checkpoint import load_model
    from shared_model.data.loaders import load_events
    from shared_model.evaluation import held_out_ranks, ndcg_at, paired_ratio
    from shared_model.features import build_sequences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the lever's run folder (trained unless it holds a model)")
    parser.add_argument("--base", help="a finished run of the defaults with the same seed (else trained in OUT-base)")
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--format", default="amazon")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget of each run")
    parser.add_argument("flags", nargs="+", help="the lever: `fedprofile train` options (after --)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; lever: {' '.join(args.flags)}")
    runs = {"defaults": Path(args.base or f"{args.out}-base"), "lever": Path(args.out)}
    for label, run in runs.items():
        if not (run / "model.pt").exists():
            _train(run, args.flags if label == "lever" else [], args)
        metrics = json.loads((run / "metrics.json").read_text())
        if "selection_test" in metrics:
            parser.error(f"{run} is a refit (--refit): compare validation-selected runs")
    models = {label: load_model(run / "model.pt")[0] for label, run in runs.items()}
    log = load_events(args.data, args.format)
    config = models["defaults"].config
    data = build_sequences(log.events, log.users, config.hash_spec, max_len=config.max_len, titles=log.item_titles)
    adjacency = ItemAdjacency.from_training(data.train, data.catalogue.num_items)
    device = torch.device("cpu")
    scores = {}
    for label, model in models.items():
        model.set_catalogue(data.catalogue.descriptors)
        valid, weight = blend_weight(model, data, adjacency, device=device)
        scores[label] = [ndcg_at(held_out_ranks(model, data.test, device=device, boost=adjacency.booster(w)), 10).numpy()
                         for w in (0.0, weight)]
        metrics = json.loads((runs[label] / "metrics.json").read_text())
        print(f"{label} ({runs[label]}): valid NDCG@10 {metrics['valid']['ndcg@10']:.4f} (best epoch "
              f"{metrics['best_epoch']}), test {scores[label][0].mean():.4f}; with the adjacency (w {weight:g}, valid "
              f"{valid:.4f}) test {scores[label][1].mean():.4f}", flush=True)
    for i, what in enumerate(("models alone", "with the adjacency")):
        r = paired_ratio(scores["lever"][i], scores["defaults"][i], seed=args.seed)
        print(f"lever / defaults, {what}: test NDCG@10 {r['ratio']:.3f} ({r['low']:.3f}-{r['high']:.3f}, "
              f"{r['users']} users)")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

"""Does `fedprofile train`'s recipe hold on data it was not tuned on? Its defaults against the defaults it replaced.

For each shared data set, trains with `fedprofile train`'s defaults (tuned on Amazon Beauty) and with the model it
used before (2 blocks of 2 heads, dropout 0.2, 256 sampled negatives, no weight average, the profile MLP, separate
input and output item tables, the loss averaged over customers) under the same stopping rule and
time budget, each validation-selected, then tests both on the same users: full ranking, history masked, and
prints test NDCG@10 (the model alone, and blended with the item adjacency as a merchant serves it) with the paired
ratio of the models alone (users resampled). One training seed each (`--seed`). Repeat:
    python bench/recipe_check.py --sets movielens-100k taobao --minutes 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
SETS = {  # name: (folder, format)
    "movielens-100k": ("movielens-100k", "movielens"),
    "movielens-latest-small": ("movielens-latest-small", "movielens"),
    "taobao": ("taobao-userbehavior", "taobao"),
    "jdata2016": ("jdata2016", "jdata"),
}
BEFORE = ["--layers", "2", "--heads", "2", "--dropout", "0.2", "--negatives", "256", "--no-full-softmax", "--ema-decay",
          "0", "--profile-mlp", "--no-tie-item-tables", "--loss-average", "users"]


def _train(data: Path, fmt: str, out: Path, flags: list[str], seed: int, minutes: float) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedprofile", "train", "--data", str(data), "--format", fmt, "--out",
                    str(out), "--seed", str(seed), "--max-minutes", str(minutes), "--device", "cpu", *flags],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics, "wall": time.perf_counter() - started}


def _test_ndcg(run: Path, data: Path, fmt: str) -> np.ndarray:
    """Per-user test NDCG@10 of a run's saved model, over the same users for every run on this data."""
    from shared_model.checkpoint import load_model
    from shared_model.data.loaders import load_events
    from shared_model.evaluation import held_out_ranks, ndcg_at
    from shared_model.features import build_sequences

    model, _, _ = load_model(run / "model.pt")
    log = load_events(str(data), fmt)
    sequences = build_sequences(log.events, log.users, model.config.hash_spec, max_len=model.config.max_len,
                                titles=log.item_titles)
    model.set_catalogue(sequences.catalogue.descriptors)
    return ndcg_at(held_out_ranks(model, sequences.test, device=torch.device("cpu")), 10).numpy()


def main() -> None:
    from shared_model.evaluation import paired_ratio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each run")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            folder, fmt = SETS[name]
            data = SHARED / folder
            if not data.exists():
                print(f"{name}: skipped, {data} is absent")
                continue
            runs = {}
            for label, flags in (("recipe", []), ("before", BEFORE)):
                out = Path(tmp) / f"{name}-{label}"
                m = _train(data, fmt, out, flags, args.seed, args.minutes)
                runs[label] = (out, m)
                blend = m["with_adjacency"]
                print(f"{name} {label:6s}: test NDCG@10 {m['ndcg@10']:.4f} HR@10 {m['hr@10']:.4f}, valid NDCG@10 "
                      f"{m['valid']['ndcg@10']:.4f}; with the item adjacency (weight {blend['weight']:g}) test "
                      f"{blend['test']['ndcg@10']:.4f}; best epoch {m['best_epoch']}, {m['train_seconds']:.0f} s "
                      "training", flush=True)
            recipe, before = (_test_ndcg(runs[label][0], data, fmt) for label in ("recipe", "before"))
            r = paired_ratio(recipe, before)
            interval = f"{r['low']:.3f}-{r['high']:.3f}" if r["low"] is not None else "n/a"
            print(f"{name}: recipe / before test NDCG@10 {r['ratio']:.3f} ({interval}, {r['users']} users)", flush=True)
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

"""Training speed on real data: users per second with length-grouped, trimmed batches vs full-window batches.

Same model, data, batch size and negatives, measured side by side in one run (alternating, best of --rounds),
plus one full-ranking evaluation pass. Repeat:
    python bench/train_speed.py                      # Amazon Beauty, sampled softmax with 1,024 negatives
    python bench/train_speed.py --full-softmax
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_model.data.loaders import load_events  # noqa: E402
from shared_model.evaluation import evaluate  # noqa: E402
from shared_model.features import build_sequences  # noqa: E402
from shared_model.model import ProfileConfig, ProfileTransformer  # noqa: E402
from shared_model.training import TrainConfig, train  # noqa: E402

BEAUTY = Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty"


def users_per_second(data, config: ProfileConfig, train_config: TrainConfig) -> float:
    torch.manual_seed(0)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    result = train(model, data, train_config, validate=False, device=torch.device("cpu"))
    return result.examples_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(BEAUTY))
    parser.add_argument("--format", default="amazon")
    parser.add_argument("--full-softmax", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    log = load_events(args.data, args.format)
    config = ProfileConfig(n_heads=1, dropout=0.3)
    data = build_sequences(log.events, log.users, config.hash_spec, max_len=config.max_len, titles=log.item_titles)
    real = float(data.train.lengths.float().mean())
    print(f"{len(data.train)} training users, {data.catalogue.num_items} items, "
          f"mean {real:.1f} target positions in a {config.max_len}-event window")
    base = dict(epochs=1, batch_size=128, negatives=1024, full_softmax=args.full_softmax, show_progress=False)
    best = {True: 0.0, False: 0.0}
    for _ in range(args.rounds):
        for grouped in (False, True):
            speed = users_per_second(data, config, TrainConfig(**base, group_by_length=grouped))
            best[grouped] = max(best[grouped], speed)
    model = ProfileTransformer(config, data.catalogue.descriptors)
    started = time.perf_counter()
    evaluate(model, data.valid, device=torch.device("cpu"))
    evaluation = time.perf_counter() - started
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    loss = "full softmax" if args.full_softmax else "1,024 sampled negatives"
    print(f"{loss}: full-window batches {best[False]:.0f} users/s, length-grouped trimmed batches "
          f"{best[True]:.0f} users/s, ratio {best[True] / best[False]:.2f}")
    print(f"one full-ranking evaluation pass over {len(data.valid)} users: {evaluation:.1f} s")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

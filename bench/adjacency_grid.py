"""Does the item adjacency's weight grid stop short? A trained model blended at weights past the grid's top.

Loads a `fedprofile train` model, builds the item adjacency from its data's training events (as `fedprofile train`
and a merchant do) and prints validation and test NDCG@10 (full ranking, history masked) at each weight of
`client/onsite/adjacency.py` WEIGHTS and beyond it. Repeat:
    python bench/adjacency_grid.py runs/taobao-recipe --data ../shared/data/taobao-userbehavior --format taobao
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEYOND = (32.0, 64.0, 128.0, 256.0, 1000.0)


def main() -> None:
    from client.onsite.adjacency import WEIGHTS, ItemAdjacency
    from shared_model.checkpoint import load_model
    from shared_model.data.loaders import load_events
    from shared_model.evaluation import held_out_ranks, last_profiles, ndcg_at
    from shared_model.features import build_sequences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a `fedprofile train` run folder (its model.pt)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", required=True)
    args = parser.parse_args()
    device = torch.device("cpu")
    model, _, _ = load_model(Path(args.run) / "model.pt")
    log = load_events(args.data, args.format)
    data = build_sequences(log.events, log.users, model.config.hash_spec, max_len=model.config.max_len,
                           titles=log.item_titles)
    model.set_catalogue(data.catalogue.descriptors)
    model.eval()
    adjacency = ItemAdjacency.from_training(data.train, data.catalogue.num_items)
    profiles = {"valid": last_profiles(model, data.valid, device=device),  # (U, k), once for every weight
                "test": last_profiles(model, data.test, device=device)}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; model {args.run}")
    for weight in (*WEIGHTS, *BEYOND):
        boost = adjacency.booster(weight) if weight else None
        figures = {part: float(ndcg_at(held_out_ranks(model, getattr(data, part), device=device, boost=boost,
                                                      profiles=profiles[part]), 10).mean())
                   for part in ("valid", "test")}
        where = "grid" if weight in WEIGHTS else "beyond"
        print(f"weight {weight:>7g} ({where}): valid NDCG@10 {figures['valid']:.4f}, test {figures['test']:.4f}",
              flush=True)
    print(f"repeat: python bench/adjacency_grid.py {args.run} --data {args.data} --format {args.format}")


if __name__ == "__main__":
    main()

"""How often a shared set's held-out test item repeats the customer's history: the last item, or any earlier one.

The protocol keeps a seen target rankable (history masked except the target), so on a set where most test items
repeat, NDCG@10 measures "the last item again" more than recommending. Prints the shares per set, from the same
leave-one-out split `fedprofile train` uses. Repeat:
    python bench/repeats.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
SETS = {"amazon-beauty": "amazon", "taobao-userbehavior": "taobao", "jdata2016": "jdata", "movielens-100k": "movielens",
        "movielens-latest-small": "movielens"}


def main() -> None:
    from shared_model.data.loaders import load_events
    from shared_model.features import build_sequences
    from shared_model.model import ProfileConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = parser.parse_args()
    config = ProfileConfig()  # fedprofile train's window (max_len 50)
    for name in args.sets:
        if not (SHARED / name).is_dir():
            print(f"{name}: not found at {SHARED / name}, skipped")
            continue
        log = load_events(str(SHARED / name), SETS[name])
        test = build_sequences(log.events, log.users, config.hash_spec, max_len=config.max_len).test
        items = test.events["items"]  # (U, L), right-padded
        last = items[torch.arange(len(items)), (test.lengths - 1).clamp(min=0)]  # (U,)
        seen = [int(target) in set(history.tolist()) for target, history in zip(test.target_items, test.history)]
        print(f"{name}: {len(items)} test customers; the test item is the last item again for "
              f"{(last == test.target_items).float().mean().item():.1%}, an item of the history for "
              f"{sum(seen) / max(len(seen), 1):.1%}")
    print("repeat: python bench/repeats.py")


if __name__ == "__main__":
    main()

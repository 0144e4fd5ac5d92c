"""A no-learning reference on Amazon Beauty: rank items by how often they sit next to the user's last item.

Counts, over the training part of every sequence (all but each user's last two events), how often two items
are adjacent (either order), then scores every item by its count with the user's newest input item (ties by
popularity), with the same protocol as fedprofile's evaluation (full ranking, history masked except the
target). It shows how much of the validation/test gap the data itself holds. Repeat:
    python bench/beauty_cooccurrence.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix

BEAUTY = Path(__file__).resolve().parents[2] / "shared/data/amazon-beauty/Beauty.txt"


def evaluate(sequences, adjacency, popularity, split: str) -> tuple[float, float]:
    ndcg, hits = [], []
    for seq in sequences:
        if len(seq) < 3:
            continue
        history, target = (seq[:-2], seq[-2]) if split == "valid" else (seq[:-1], seq[-1])
        scores = np.asarray(adjacency[history[-1]].todense()).ravel() + 1e-6 * popularity
        scores[0] = -np.inf
        scores[[i for i in history if i != target]] = -np.inf
        rank = int((scores > scores[target]).sum())
        ndcg.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
        hits.append(rank < 10)
    return float(np.mean(ndcg)), float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", default=str(BEAUTY), help="Beauty.txt: user then items, in order")
    args = parser.parse_args()
    sequences = [[int(x) for x in line.split()[1:]] for line in open(args.sequences) if line.strip()]
    n = max(max(s) for s in sequences) + 1
    rows, cols, popularity = [], [], np.zeros(n)
    for seq in sequences:
        train = seq[:-2]
        rows += train[:-1]
        cols += train[1:]
        np.add.at(popularity, train, 1)
    adjacency = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    adjacency = adjacency + adjacency.T
    for split in ("valid", "test"):
        ndcg, hr = evaluate(sequences, adjacency, popularity, split)
        print(f"{split}: NDCG@10 {ndcg:.4f}  HR@10 {hr:.4f}")
    print("repeat: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()

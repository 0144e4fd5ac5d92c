"""The merchant's own item-to-item statistics: how often two items sat next to each other in its customers' histories."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_matrix, csr_matrix

from shared_model.features import Catalogue, SequenceSet

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # blend weights tried on the validation customers
MAX_WEIGHT = 1e3


class ItemAdjacency:
    """Symmetric counts over catalogue indices: (a, b) is how many times items a and b were consecutive (either
    order) in one customer's history at this merchant; row and column 0 (padding) stay empty. Served as an
    additive score, `weight * log(1 + count(last item, item))`, beside the model's. Built on site from the
    merchant's own events and never sent, so it needs no DP (docs/privacy.md)."""

    def __init__(self, counts: csr_matrix):
        if counts.shape[0] != counts.shape[1]:
            raise ValueError(f"adjacency counts must be square, got {counts.shape}")
        self.counts = counts.tocsr()
        self._log = self.counts.log1p().astype(np.float32).tocsr()

    @property
    def num_items(self) -> int:
        return self.counts.shape[0] - 1

    @classmethod
    def from_histories(cls, histories: Iterable[np.ndarray], num_items: int) -> "ItemAdjacency":
        """Counts from each customer's items in time order (catalogue indices; 0 = unknown item, skipped)."""
        rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for history in histories:
            items = np.asarray(history, dtype=np.int64)
            items = items[items > 0]
            before, after = items[:-1], items[1:]
            moved = before != after  # a view then a cart of the same item is not a pair
            rows.append(before[moved])
            cols.append(after[moved])
        r, c = np.concatenate(rows), np.concatenate(cols)
        n = num_items + 1
        counts = coo_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, n)).tocsr()
        return cls((counts + counts.T).tocsr())

    @classmethod
    def from_training(cls, sequences: SequenceSet, num_items: int) -> "ItemAdjacency":
        """Counts from training rows: each row's inputs, then its last target (the newest training event)."""
        return cls.from_histories(training_histories(sequences), num_items)

    @classmethod
    def from_events(cls, events: pd.DataFrame, catalogue: Catalogue) -> "ItemAdjacency":
        """Counts from every event in the merchant's store (each customer's events sorted by time)."""
        frame = pd.DataFrame({"user": events["user_id"].to_numpy(dtype=object),
                              "time": events["timestamp"].to_numpy(),
                              "item": catalogue.index_of(events["item_id"].to_numpy(dtype=object))})
        frame = frame.sort_values(["user", "time"], kind="stable")
        return cls.from_histories((group.to_numpy() for _, group in frame.groupby("user", sort=False)["item"]),
                                  catalogue.num_items)

    def scores(self, last_items: np.ndarray) -> np.ndarray:
        """log(1 + count) of every item next to each of `last_items`: (b, N+1) float32, dense."""
        return self._log[np.asarray(last_items, dtype=np.int64)].toarray()

    def log_row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, log(1 + count)) of the items seen next to `item`."""
        row = self._log[int(item)]
        return row.indices.astype(np.int64), row.data

    def neighbours(self, item: int) -> dict[int, int]:
        """The items seen next to `item` and how often."""
        row = self.counts[int(item)]
        return dict(zip(row.indices.tolist(), row.data.astype(int).tolist()))

    def booster(self, weight: float):
        """For held_out_ranks: last input items (b,) -> the additive scores (b, N+1), or None at weight 0."""
        if weight == 0:
            return None
        return lambda last_items: weight * torch.from_numpy(self.scores(last_items.cpu().numpy()))


def training_histories(sequences: SequenceSet) -> list[np.ndarray]:
    """Each training row's items in time order: its inputs, then its last target (the newest training event)."""
    items, lengths = sequences.events["items"].numpy(), sequences.lengths.numpy()
    targets = sequences.target_items.numpy()
    return [np.append(items[u, :n], targets[u, n - 1]) for u, n in enumerate(lengths) if n > 0]


def saved_weight(blob: dict) -> float:
    """The blend weight saved with a model fitted on site (the on-site fitter's, or `fedprofile train`'s, chosen on
    validation), checked; 0 for a model without one and for every received global model (a file of
    `shared_state`), whatever its metadata says, as `ensemble.served_model` treats ensembles."""
    if "shared_state" in blob:
        return 0.0
    return check_weight(json.loads(blob.get("metadata_json", "{}")).get("adjacency-weight", 0.0))


def check_weight(weight) -> float:
    """A blend weight read back from an on-site model's metadata: finite, from 0 to MAX_WEIGHT."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"adjacency weight {weight!r} is not a number") from None
    if not (np.isfinite(value) and 0.0 <= value <= MAX_WEIGHT):
        raise ValueError(f"adjacency weight {value} must be finite and within [0, {MAX_WEIGHT:g}]")
    return value

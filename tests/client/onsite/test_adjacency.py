"""The merchant's item adjacency: counts of consecutive items per customer, read back weights only as a blend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from client.onsite.adjacency import ItemAdjacency, check_weight


def test_counts_consecutive_different_items_in_both_directions():
    adjacency = ItemAdjacency.from_histories([[1, 2, 3, 2], [2, 3], [0, 4, 4, 1]], num_items=4)
    counts = adjacency.counts.toarray()
    assert counts.shape == (5, 5) and (counts == counts.T).all()
    assert counts[2, 3] == 3 and counts[1, 2] == 1 and counts[1, 4] == 1
    assert counts[4, 4] == 0 and counts[0].sum() == 0  # a repeat is no pair; unknown items (0) are skipped
    assert adjacency.neighbours(2) == {1: 1, 3: 3}
    assert adjacency.scores(np.array([2, 0]))[0].tolist() == pytest.approx(np.log1p([0, 1, 0, 3, 0]).tolist())


def test_from_events_sorts_each_customers_events_by_time():
    class Catalogue:
        num_items = 3

        @staticmethod
        def index_of(ids):
            return np.array([{"a": 1, "b": 2, "c": 3}.get(i, 0) for i in ids])

    events = pd.DataFrame({"user_id": ["u", "v", "u", "u"], "timestamp": [30, 5, 10, 20],
                           "item_id": ["c", "a", "a", "b"]})
    adjacency = ItemAdjacency.from_events(events, Catalogue())
    assert adjacency.counts.toarray().tolist() == ItemAdjacency.from_histories([[1, 2, 3]], 3).counts.toarray().tolist()


def test_the_booster_scales_log_counts_and_is_off_at_weight_zero():
    adjacency = ItemAdjacency.from_histories([[1, 2]], num_items=2)
    assert adjacency.booster(0.0) is None
    assert adjacency.booster(2.0)(torch.tensor([1]))[0].tolist() == pytest.approx([0.0, 0.0, 2 * np.log(2)])


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 1e9, "x", None])
def test_a_blend_weight_read_back_must_be_a_finite_number_in_range(bad):
    with pytest.raises(ValueError, match="adjacency weight"):
        check_weight(bad)
    assert check_weight("2.5") == 2.5

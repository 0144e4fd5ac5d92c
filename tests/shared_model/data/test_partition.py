"""Splitting users across simulated merchants."""

from __future__ import annotations

import numpy as np
import pytest

from shared_model.data.partition import partition_users
from shared_model.data.synthetic import SyntheticConfig, generate, merge_merchants


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_user_in_exactly_one_merchant(small_log, scheme):
    parts = partition_users(small_log.events, 4, scheme=scheme, alpha=0.3, seed=3)
    together = np.concatenate(parts)
    assert len(parts) == 4 and all(len(p) > 0 for p in parts)
    assert len(together) == len(set(together.tolist())) == small_log.events["user_id"].nunique()


def test_dirichlet_skews_categories_more_than_iid():
    # 600 customers: with the 120 of `small_log` an IID split of customers who wander between categories is
    # itself skewed by chance (total variation 0.25 against 0.11 here)
    config = SyntheticConfig(merchants=2, users_per_merchant=300, items_per_merchant=400, seed=1)
    events = merge_merchants(generate(config)).events

    def skew(parts):  # mean total-variation distance of each merchant's category mix from the overall mix
        overall = events["category_id"].value_counts(normalize=True)
        out = []
        for users in parts:
            mix = events[events["user_id"].isin(users)]["category_id"].value_counts(normalize=True)
            out.append(0.5 * overall.subtract(mix, fill_value=0).abs().sum())
        return np.mean(out)

    for seed in range(3):
        iid = skew(partition_users(events, 4, scheme="iid", seed=seed))
        dirichlet = skew(partition_users(events, 4, scheme="dirichlet", alpha=0.05, seed=seed))
        assert dirichlet > 1.5 * iid


def test_too_many_merchants_is_refused(small_log):
    with pytest.raises(ValueError, match="cannot fill"):
        partition_users(small_log.events, 10_000)

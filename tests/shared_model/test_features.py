"""Sequences: one per user, leave-one-out split, right padding, time features, stable hashing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from shared_model.data.schema import Behavior
from shared_model.features import build_sequences, gap_bucket, price_bucket, stable_bucket, title_tokens
from shared_model.model import ProfileConfig

SPEC = ProfileConfig().hash_spec


def _events(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "behavior", "timestamp"])
    frame["price"] = np.nan
    frame["brand"] = ""
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def test_leave_one_out_split_and_targets():
    t0 = 1_511_568_000  # a Saturday, 00:00 UTC
    rows = [("u", f"i{k}", "c", int(Behavior.VIEW), t0 + k * 3600) for k in range(6)]
    rows[4] = ("u", "i4", "c", int(Behavior.PURCHASE), t0 + 4 * 3600)
    rows += [("v", "i0", "c", int(Behavior.VIEW), t0), ("v", "i1", "c", int(Behavior.VIEW), t0 + 10)]
    data = build_sequences(_events(rows), pd.DataFrame(columns=["user_id", "gender", "age", "region"]), SPEC, max_len=3)
    idx = {item: int(data.catalogue.index_of([item])[0]) for item in [f"i{k}" for k in range(6)]}
    # user u (6 events): train on i0..i3, validate on i4, test on i5; v (2 events) trains only
    assert list(data.valid.user_ids) == ["u"] and list(data.test.user_ids) == ["u"]
    assert int(data.valid.target_items[0]) == idx["i4"] and int(data.test.target_items[0]) == idx["i5"]
    assert data.test.events["items"][0].tolist() == [idx["i2"], idx["i3"], idx["i4"]]  # last 3 before the target
    assert list(data.test.history[0]) == [idx[f"i{k}"] for k in range(5)]
    train_u = list(data.train.user_ids).index("u")
    assert data.train.events["items"][train_u].tolist() == [idx["i0"], idx["i1"], idx["i2"]]
    assert data.train.target_items[train_u].tolist() == [idx["i1"], idx["i2"], idx["i3"]]
    # purchase within the horizon: the purchase (i4) is outside the training window, so no label is 1
    assert (data.train.target_purchase[train_u][data.train.target_items[train_u] > 0] == 0).all()
    train_v = list(data.train.user_ids).index("v")
    assert data.train.lengths[train_v] == 1 and data.train.target_items[train_v, 0] == idx["i1"]
    assert data.train.positions_per_user() == (3 + 1) / 2  # u scores 3 next items, v one
    assert data.train.select(np.array([], dtype=np.int64)).positions_per_user() == 0.0
    hours = data.test.events["hours"][0].tolist()
    assert hours == [1 + 2, 1 + 3, 1 + 4]  # 1-based hour of day
    assert data.test.events["weekdays"][0].tolist() == [6, 6, 6]  # Saturday = 6 (Monday = 1)


def test_time_gap_and_price_buckets():
    gaps = gap_bucket(np.array([0, 30, 600, 7200, 86_400 * 3, 86_400 * 400]), np.array([1, 0, 0, 0, 0, 0], bool), 16)
    assert gaps.tolist() == [1, 2, 3, 4, 6, 13]
    prices = price_bucket(np.array([np.nan, 0.0, 9.99, 1000.0]), 32)
    assert prices[0] == 0 and 0 < prices[1] < prices[2] < prices[3] <= 31


def test_hashes_are_stable_and_avoid_padding():
    ids = np.array(["sku-1", "sku-2", "sku-1"], dtype=object)
    first = stable_bucket(ids, key="fedprofile-itm-a", buckets=1024)
    assert first[0] == first[2] and (first >= 1).all() and (first < 1024).all()
    # pinned values: a change would mean merchants on different versions hash the same item differently
    assert first.tolist() == [404, 586, 404]
    words = title_tokens(np.array(["Red Nail Polish 0.5 oz", ""], dtype=object), SPEC)
    assert (words[0] > 0).sum() == 3 and (words[1] == 0).all()  # red, nail, polish (1-letter words, "oz" dropped)


def test_sequences_are_tensors_ready_for_a_dataset(small_log):
    data = build_sequences(small_log.events, small_log.users, SPEC, max_len=20)
    tensors = data.train.tensors()
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == len(data.train) for t in tensors)
    assert data.train.events["items"].shape == (len(data.train), 20)
    assert (data.train.genders > 0).all()  # synthetic users all have a gender


def test_a_refit_trains_on_the_validation_event_but_never_on_the_test_event(small_log):
    from shared_model.features import build_sequences
    from shared_model.model import ProfileConfig

    spec = ProfileConfig(item_buckets=1024).hash_spec
    held = build_sequences(small_log.events, small_log.users, spec, max_len=5000)
    refit = build_sequences(small_log.events, small_log.users, spec, max_len=5000, train_on_validation=True)
    position = {u: i for i, u in enumerate(refit.train.user_ids)}
    for u, valid_item, test_item in zip(held.test.user_ids, held.valid.target_items, held.test.target_items):
        targets = refit.train.target_items[position[u]]
        last = targets[targets > 0][-1]
        assert int(last) == int(valid_item)  # the validation event is now the last training target
        assert int(refit.train.lengths[position[u]]) == int(held.train.lengths[held.train.user_ids.tolist().index(u)]) + 1
    torch.testing.assert_close(refit.test.target_items, held.test.target_items)

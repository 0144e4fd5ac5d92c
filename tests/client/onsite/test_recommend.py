"""Recommendations: batched scoring equals direct scoring; filters, exclusions and reasons."""

from __future__ import annotations

import threading

import numpy as np
import torch

from client.onsite.recommend import ItemIndex
from shared_model.features import build_catalogue
from shared_model.model import ProfileConfig, ProfileTransformer


def _index(small_merchants):
    events = small_merchants[0].events
    config = ProfileConfig(d_model=16, profile_dim=16, n_heads=1, n_layers=1, item_buckets=512)
    catalogue = build_catalogue(events, config.hash_spec, items=small_merchants[0].items)
    torch.manual_seed(0)
    return ItemIndex(ProfileTransformer(config, catalogue.descriptors), catalogue), catalogue


def test_batched_scoring_gives_the_direct_answer_under_concurrency(small_merchants):
    direct, _ = _index(small_merchants)
    batched, _ = _index(small_merchants)
    batched.batched()
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(64, 16)).astype(np.float32)
    excluded = [rng.choice(np.arange(1, 50), size=5, replace=False) for _ in queries]
    expected = [direct.recommend(q, k=10, exclude=e) for q, e in zip(queries, excluded)]
    got = [None] * len(queries)

    def ask(i):
        got[i] = batched.recommend(queries[i], k=10, exclude=excluded[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, have, ex in zip(expected, got, excluded):
        assert [i for i, _ in have] == [i for i, _ in want]
        assert np.allclose([s for _, s in have], [s for _, s in want], atol=1e-4)
        assert not set(ex) & {i for i, _ in have} and 0 not in {i for i, _ in have}


def test_filters_and_reasons(small_merchants):
    index, catalogue = _index(small_merchants)
    vector = np.ones(16, dtype=np.float32)
    picked = index.recommend(vector, k=5, category="c1", max_price=200.0, in_stock_only=True)
    for i, _ in picked:
        assert catalogue.categories[i] == "c1" and catalogue.prices[i] <= 200.0 and catalogue.in_stock[i]
    assert catalogue.in_stock is not None and not catalogue.in_stock.all()  # the catalogue file marks stock
    item = picked[0][0]
    reasons = index.explain(item, recent=np.array([item, picked[1][0]]), interests=[("c1", 0.5)])
    assert reasons[0].startswith("interest #1: category c1")


def test_a_boost_adds_to_the_scores_and_an_adjacency_reason_needs_enough_histories(small_merchants):
    from client.onsite.recommend import MIN_REASON_COUNT

    index, catalogue = _index(small_merchants)
    vector = np.zeros(16, dtype=np.float32)  # every item scores 0 alone: the boost decides
    boost = (np.array([7, 3]), np.array([2.0, 5.0]))
    assert [i for i, _ in index.recommend(vector, k=2, boost=boost)] == [3, 7]
    assert [i for i, _ in index.rerank(vector, np.array([5, 7, 3]), boost=boost)] == [3, 7, 5]
    recent = np.array([9])
    many = index.explain(3, recent=recent, interests=[], next_to={3: MIN_REASON_COUNT})
    assert many[0] == f"next to {catalogue.item_ids[9]} {MIN_REASON_COUNT} times in customers' histories here"
    few = index.explain(3, recent=recent, interests=[], next_to={3: MIN_REASON_COUNT - 1})
    assert not any(r.startswith("next to") for r in few)

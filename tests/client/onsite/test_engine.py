"""The on-site engine: profiles, recommendations, segments, audiences, risk, ingestion and model swaps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from client.onsite.engine import UnknownUser, open_engine
from client.onsite.recommend import MIN_REASON_COUNT


@pytest.fixture
def engine(onsite, tmp_path):
    engine, summary = open_engine(str(onsite.data), "synthetic", store=tmp_path / "store.sqlite",
                                  quarantine=tmp_path / "quarantine.csv")
    assert summary.rows_accepted == len(onsite.log.events) and summary.is_balanced()
    engine.load_model(onsite.models / "v0001")
    yield engine
    engine.close()


def test_every_user_gets_a_profile_with_the_serving_version(engine, onsite):
    users = onsite.log.events["user_id"].unique()
    assert set(engine.current.users) == set(users)
    record, version = engine.profile(users[0])
    assert version == "v0001@test-run" == record["model_version"]
    assert len(record["vector"]) == onsite.config.profile_dim
    assert abs(sum(w["weight"] for w in record["interests"])) <= 1.0 + 1e-6
    assert record["value_segment"] in {"high_value", "potential", "regular", "at_risk", "new"}
    with pytest.raises(UnknownUser):
        engine.profile("nobody")


def test_bots_are_the_riskiest_users(engine, onsite):
    users = list(engine.current.users)
    bot = np.array([onsite.truth[u]["bot"] is not None for u in users])
    score = np.array([engine.current.users[u].risk_score for u in users])
    assert bot.sum() >= 3
    assert roc_auc_score(bot, score) > 0.95
    top, _ = engine.risk(top=int(bot.sum()))
    assert all(entry["reasons"] for entry in top)


def test_recommendations_leave_out_purchases_and_respect_filters(engine, onsite):
    events = onsite.log.events
    buyer = events[events["behavior"] == 4]["user_id"].value_counts().index[0]
    bought = set(events[(events["user_id"] == buyer) & (events["behavior"] == 4)]["item_id"])
    items, _ = engine.recommend(buyer, k=50)
    assert len(items) == 50 and not bought & {i.item_id for i in items}
    assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)
    again, _ = engine.recommend(buyer, k=2000, include_purchased=True)
    assert bought <= {i.item_id for i in again}
    cheap, _ = engine.recommend(buyer, k=20, category="c0", max_price=100.0)
    assert cheap and all(i.category == "c0" and i.price <= 100.0 for i in cheap)
    assert any(i.reasons for i in items)


def test_rerank_orders_the_candidates_and_names_unknown_ones(engine, onsite):
    user = onsite.log.events["user_id"].iloc[0]
    candidates = list(onsite.log.events["item_id"].unique()[:30])
    items, unknown, _ = engine.rerank(user, candidates + ["no-such-item"])
    assert sorted(i.item_id for i in items) == sorted(candidates) and unknown == ["no-such-item"]
    assert [i.score for i in items] == sorted((i.score for i in items), reverse=True)


def test_segments_cover_everyone_and_audience_prefers_the_category(engine, onsite):
    rows, _ = engine.segments()
    assert sum(r["size"] for r in rows) == len(engine.current.users)
    assert all(r["name"] and r["top_interests"] for r in rows)
    user = next(iter(engine.current.users))
    segment, _ = engine.segment(user_id=user)
    assert segment["segment"] == engine.current.users[user].segment
    chosen, _ = engine.audience("c0", 20)
    scores = [s for _, s in chosen]
    assert len(chosen) == 20 and scores == sorted(scores, reverse=True)
    everyone, _ = engine.audience("c0", len(engine.current.users))
    share = lambda ids: np.mean([dict(engine.current.users[u].interests).get("c0", 0.0) for u in ids])  # noqa: E731
    assert share([u for u, _ in chosen]) > share([u for u, _ in everyone])
    with pytest.raises(KeyError):
        engine.audience("no-such-category", 5)


def test_ingested_events_update_the_profile_and_bad_ones_are_quarantined(engine, onsite):
    user = onsite.log.events["user_id"].iloc[0]
    before, _ = engine.profile(user)
    last = int(onsite.log.events["timestamp"].max())
    item = onsite.log.events[onsite.log.events["category_id"] == "c1"]["item_id"].iloc[0]
    good = [{"user_id": user, "item_id": item, "category_id": "c1", "behavior": "purchase", "timestamp": last + 60 * i,
             "price": 10.0} for i in range(1, 31)]
    bad = [{"user_id": user, "item_id": item, "category_id": "c1", "behavior": "teleport", "timestamp": last},
           {"user_id": "", "item_id": item, "category_id": "c1", "behavior": "view", "timestamp": last}]
    result = engine.ingest(good + bad)
    assert (result["received"], result["accepted"], result["quarantined"]) == (32, 30, 2)
    assert {r["field"] for r in result["rejections"]} == {"behavior", "user_id"}
    after, _ = engine.profile(user)
    assert after["rfm"]["purchases"] == before["rfm"]["purchases"] + 30
    assert after["interests"][0]["category"] == "c1"
    assert after["vector"] != before["vector"]
    assert len(engine.store.quarantined()) == 2


def test_a_new_customer_appears_after_ingestion(engine, onsite):
    last = int(onsite.log.events["timestamp"].max())
    item = onsite.log.events["item_id"].iloc[0]
    engine.ingest([{"user_id": "newcomer", "item_id": item, "category_id": "c0", "behavior": "view",
                    "timestamp": last + i} for i in range(3)])
    record, _ = engine.profile("newcomer")
    assert record["rfm"]["events"] == 3 and record["value_segment"] == "new"


def test_model_swap_replaces_profiles_and_keeps_one_version(engine, onsite):
    user = next(iter(engine.current.users))
    old, _ = engine.profile(user)
    onsite.publish(2)
    try:
        assert engine.load_model(onsite.models) == "v0002@test-run"
        new, version = engine.profile(user)
        assert version == "v0002@test-run" and new["vector"] != old["vector"]
        assert engine.store.get_profile(user, "v0001@test-run") is None
    finally:
        onsite.publish(1)


def test_planted_local_rows_beside_a_model_are_refused_unread(engine, onsite, tmp_path):
    import pickle
    import shutil

    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    folder = tmp_path / "models" / "v0001"
    shutil.copytree(onsite.models / "v0001", folder)
    torch.save({"item_ids": ["x"], "state": Payload()}, folder / "local.pt")
    with pytest.raises(pickle.UnpicklingError):
        engine.load_model(folder)
    assert not marker.exists() and engine.current.version == "v0001@test-run"  # still serving what it had


def test_a_blend_weight_puts_the_items_next_to_the_newest_one_first_in_recommend_and_rerank(engine, onsite):
    version = engine.load_model(onsite.models / "v0001", adjacency_weight=1000.0)  # the adjacency decides
    serving = engine.current
    assert version == "v0001@test-run" and serving.blend == 1000.0
    user, state = next((u, s) for u, s in serving.users.items() if len(s.recent) and serving.next_to(s))
    neighbours = serving.next_to(state)
    top = engine.recommend(user, k=5, include_purchased=True)[0]
    first = serving.catalogue.index_of([top[0].item_id])[0]
    assert neighbours[first] == max(neighbours.values())
    newest = serving.catalogue.item_ids[state.recent[0]]
    # the count is a reason only from MIN_REASON_COUNT on: a few customers' histories are never told
    assert (top[0].reasons[:1] == (f"next to {newest} {neighbours[first]} times in customers' histories here",)) == (
        neighbours[first] >= MIN_REASON_COUNT)
    assert not any(r.startswith("next to ") for item in top for r in item.reasons
                   if neighbours.get(serving.catalogue.index_of([item.item_id])[0], 0) < MIN_REASON_COUNT)
    others = [i for i in serving.catalogue.item_ids[1:20] if serving.catalogue.index_of([i])[0] not in neighbours]
    ranked, _, _ = engine.rerank(user, others[:3] + [top[0].item_id])
    assert ranked[0].item_id == top[0].item_id
    with pytest.raises(ValueError, match="adjacency weight"):
        engine.load_model(onsite.models / "v0001", adjacency_weight=float("nan"))

"""A profile's shapes: the stored record and the gRPC message carry the same fields as the UserProfile."""

from __future__ import annotations

import json

import pytest

from client.onsite.profile import UserProfile
from client.onsite.profile_shapes import profile_message, profile_record


@pytest.fixture
def profile():
    return UserProfile(
        user_id="u7", vector=[0.1234567, -1.0], interests=[("c1", 0.6), ("c2", 0.4)], next_interests=[("c3", 0.5)],
        brands=[("b1", 1.0)], price_percentile=None, price_tier="mid", peak_hour=20.5,
        active_hours=[(20, 0.7), (9, 0.3)], active_days=[("Sat", 1.0)], purchase_propensity=0.25,
        recency_days=1.5, tenure_days=30.0, events=42, purchases=2, monetary=99.9, value_segment="potential",
        risk_score=0.8, risk_reasons=["15 events within one minute"], model_version="v0003@run")


def test_the_record_is_json_and_keeps_every_field(profile):
    record = json.loads(json.dumps(profile_record(profile, segment=2)))
    assert record["user_id"] == "u7" and record["model_version"] == "v0003@run" and record["segment"] == 2
    assert record["interests"] == [{"category": "c1", "weight": 0.6}, {"category": "c2", "weight": 0.4}]
    assert record["active_hours"][0] == {"hour": 20, "share": 0.7}
    assert record["price_level"] == {"percentile": None, "tier": "mid"}
    assert record["rfm"] == {"recency_days": 1.5, "tenure_days": 30.0, "events": 42, "purchases": 2,
                             "monetary": 99.9}
    assert record["vector"] == [0.123457, -1.0]


def test_the_message_carries_the_record(profile):
    record = {**profile_record(profile, segment=2), "updated_at": 123.0}
    message = profile_message(record, include_vector=True)
    assert message.user_id == "u7" and message.segment == 2 and message.updated_at == 123.0
    assert [(w.name, round(w.weight, 6)) for w in message.interests] == [("c1", 0.6), ("c2", 0.4)]
    assert [w.name for w in message.active_hours] == ["20", "9"]
    assert not message.HasField("price_percentile") and message.price_tier == "mid"
    assert message.events == 42 and list(message.risk_reasons) == ["15 events within one minute"]
    assert list(message.vector) == pytest.approx([0.123457, -1.0])
    assert list(profile_message(record, include_vector=False).vector) == []

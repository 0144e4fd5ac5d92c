"""The SQLite store: events in order, profiles per model version, quarantine, the answer log."""

from __future__ import annotations

import pandas as pd

from client.onsite.store import SQLiteStore


def test_round_trip_versions_quarantine_and_answers(tmp_path):
    store = SQLiteStore(tmp_path / "s.sqlite")
    events = pd.DataFrame({"user_id": ["b", "a", "a"], "item_id": ["1", "2", "3"], "category_id": ["c"] * 3,
                           "behavior": [1, 4, 1], "timestamp": [5, 9, 7], "price": [1.5, None, 2.0], "brand": ["", "x", ""]})
    store.add_events(events)
    back = store.events()
    assert list(back["user_id"]) == ["a", "a", "b"] and list(back["timestamp"]) == [7, 9, 5]
    assert store.events(["b"])["item_id"].tolist() == ["1"] and store.count_events() == 3
    store.put_profiles("v1", [{"user_id": "a", "x": 1}])
    store.put_profiles("v2", [{"user_id": "a", "x": 2}])
    assert store.get_profile("a", "v1")["x"] == 1 and store.get_profile("a", "v2")["x"] == 2
    store.drop_other_versions("v2")
    assert store.get_profile("a", "v1") is None and store.get_profile("a", "v2")["x"] == 2
    store.quarantine(pd.DataFrame([{"row": 3, "field": "behavior", "reason": "unknown behaviour: fly", "raw": "..."}]),
                     source="stream")
    assert store.quarantined()["reason"].tolist() == ["unknown behaviour: fly"]
    for _ in range(5):
        store.record_answer("Recommend", "a", "v2")
    assert store.answers()["model_version"].tolist() == ["v2"] * 5
    store.close()
    reopened = SQLiteStore(tmp_path / "s.sqlite")
    assert reopened.count_events() == 3 and reopened.get_profile("a", "v2")["x"] == 2
    reopened.close()

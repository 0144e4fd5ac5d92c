"""The SQLite store: events in order, profiles per model version, quarantine, the answer log."""

from __future__ import annotations

import time

import pandas as pd

from client.onsite.store import Retention, SQLiteStore


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


def test_retention_keeps_the_answer_log_and_quarantine_bounded(tmp_path):
    """Before: the answers and quarantine tables grew without bound."""
    store = SQLiteStore(tmp_path / "s.sqlite", retention=Retention(days=30, max_answers=50, max_quarantined=3,
                                                                   prune_every=40))
    for i in range(120):
        store.record_answer("GetProfile", f"u{i}", "v1")
    rejected = pd.DataFrame([{"row": i, "field": "behavior", "reason": "unknown", "raw": str(i)} for i in range(10)])
    store.quarantine(rejected, source="stream")
    store.flush()
    store.prune()
    assert store.answers()["user_id"].tolist() == [f"u{i}" for i in range(70, 120)]  # the newest 50
    assert store.quarantined()["raw"].tolist() == ["7", "8", "9"]
    with store._connect() as db:  # an answer older than the retention goes at the next pruning
        db.execute("UPDATE answers SET at = at - 31 * 86400 WHERE user_id = 'u119'")
    store.prune()
    assert "u119" not in store.answers()["user_id"].tolist()
    store.close()


def test_the_answer_writer_survives_a_database_error(tmp_path, caplog):
    """Before: the writer thread died silently on an error and the answer log stopped for good."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    with store._connect() as db:
        db.execute("DROP TABLE answers")  # every insert now fails
    store.record_answer("Recommend", "a", "v1")
    deadline = time.time() + 5
    while store.write_errors == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert store.write_errors >= 1 and store._writer.is_alive()
    assert "could not log 1 answers" in caplog.text
    with store._connect() as db:
        db.executescript(SQLiteStore.SCHEMA)
    store.record_answer("Recommend", "b", "v1")
    deadline = time.time() + 10
    while "b" not in store.answers()["user_id"].tolist() and time.time() < deadline:
        time.sleep(0.1)
    assert store.answers()["user_id"].tolist() == ["b"]
    store.close()

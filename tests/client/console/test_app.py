"""The merchant console's app in process: read-only by default, unknown customers, the federation page."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from client.console.app import ConsoleSettings, create_app
from client.console.federation import federation_status
from client.onsite.engine import open_engine
from client.policy import PrivacyPolicy
from client.state import MerchantState, log_sent, sent_log
from shared_model.console.web import form_key

TOKEN = "k" * 32
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def engine(onsite, tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-app")
    engine, _ = open_engine(str(onsite.data), "synthetic", store=folder / "store.sqlite",
                            quarantine=folder / "quarantine.csv")
    engine.load_model(onsite.models)
    yield engine
    engine.close()


def test_a_read_only_console_changes_nothing(engine):
    client = TestClient(create_app(engine, ConsoleSettings(token=TOKEN)))
    suspect = engine.risk(top=1)[0][0]["user_id"]
    page = client.get("/risk?min_score=0&show=all", headers=AUTH)
    assert page.status_code == 200 and "mark-reviewed" not in page.text and "read-only" in page.text
    refused = client.post(f"/risk/{suspect}/review", data={"form_key": "x"}, headers=AUTH)
    assert refused.status_code == 403 and "read-only" in refused.text
    assert suspect not in engine.store.reviews()


def test_unknown_customers_and_segments_are_404_pages(engine):
    client = TestClient(create_app(engine, ConsoleSettings(token=TOKEN, writable=True)))
    missing = client.get("/customers/nobody-here", headers=AUTH)
    assert missing.status_code == 404 and "nobody-here" in missing.text
    assert client.get("/segments/99", headers=AUTH).status_code == 404
    review = client.post("/risk/nobody-here/review", headers=AUTH, data={"form_key": form_key(TOKEN)})
    assert review.status_code == 404  # a review of no one is not kept
    assert "nobody-here" not in engine.store.reviews()


def test_the_federation_page_reads_the_ledger_the_policy_and_the_sent_log(engine, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    PrivacyPolicy(max_epsilon=6.0).save(state)
    MerchantState(folder=state).record("run-1", 1, ledger=None, local={}, reply=None)
    log_sent(state, {"at": 1.0, "run_id": 7, "round": "1", "message": "train", "array_values": 1234,
                     "metrics": 7, "customers": 300, "refused": False})
    (state / "sent.jsonl").open("a").write('{"cut by a crash"\n')  # a torn last line is skipped, not an error
    assert [e["array_values"] for e in sent_log(state)] == [1234]
    status = federation_status(models=None, state_dir=state, serving="v0001")
    assert status["policy"]["max_epsilon"] == 6.0 and status["in_federation"]
    client = TestClient(create_app(engine, ConsoleSettings(
        token=TOKEN, federation=lambda: federation_status(models=None, state_dir=state, serving="v0001"))))
    text = client.get("/federation", headers=AUTH).text
    assert '<span id="max-epsilon">6.0</span>' in text
    assert "<td>1234</td>" in text and "<td>300</td>" in text
    assert json.loads((state / "privacy-policy.json").read_text())["max_epsilon"] == 6.0


def test_a_merchant_waiting_for_its_first_model_gets_a_page_that_says_so(onsite, tmp_path):
    waiting, _ = open_engine(str(onsite.data), "synthetic", store=tmp_path / "store.sqlite",
                             quarantine=tmp_path / "quarantine.csv")
    try:
        client = TestClient(create_app(waiting, ConsoleSettings(token=TOKEN)))
        for path in ("/customers", "/segments", "/audiences", "/risk"):
            page = client.get(path, headers=AUTH)
            assert page.status_code == 503 and "No model yet" in page.text, path
        assert client.get("/federation", headers=AUTH).status_code == 200
    finally:
        waiting.close()

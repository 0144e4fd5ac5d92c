"""The coordinator's console on a run folder: the token, rounds and quality, refusals, refused keys."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.console.app import create_app, refused_connections
from server.store import Checkpoint, RunStore
from shared_model.processes import free_port
from tests.conftest import click_through, wait_for_console

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 32
PEM_BODY = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEexample"


def _run_folder(tmp_path):
    history = [
        {"round": 1, "merchants-trained": ["shop-0", "shop-1"], "aggregated": True, "train-loss": 5.1,
         "hr@10": 0.10, "ndcg@10": 0.05, "refused": {}, "rejected": {}, "seconds": 12.0},
        {"round": 2, "merchants-trained": ["shop-0"], "aggregated": True, "train-loss": 4.9, "hr@10": 0.12,
         "ndcg@10": 0.06, "refused": {"shop-1": "epsilon 8.1 would pass this merchant's ceiling 8.0"},
         "rejected": {}, "seconds": 11.0},
    ]
    state = {"run_id": "abc123", "run_config": {"num-rounds": 3, "target-epsilon": 8.0}, "history": history,
             "epsilon": {"shop-0": 5.2, "shop-1": 2.6}, "delta": {"shop-0": 1e-5, "shop-1": 1e-5},
             "final": {"ndcg@10": 0.06}, "merchants": {"labels": {"11": "shop-0", "12": "shop-1"}}}
    RunStore(tmp_path / "run").save(Checkpoint(2, {"w": np.zeros(2)}, {}, state))
    log = tmp_path / "superlink.log"
    line = ("ERROR : Attempted to register SuperNode with public key: b'-----BEGIN PUBLIC KEY-----\\n"
            + PEM_BODY + "\\n-----END PUBLIC KEY-----\\n' : No SuperNode found with the given public key.\n")
    log.write_text("INFO : started\n" + line * 3)
    return tmp_path / "run", log


def test_the_coordinator_console_shows_rounds_merchants_and_refusals_behind_its_token(tmp_path):
    run, log = _run_folder(tmp_path)
    nodes = lambda: [{"node-id": "11", "status": "online", "online-at": "2026-12-02 10:00"},  # noqa: E731
                     {"node-id": "12", "status": "offline", "online-at": ""}]
    client = TestClient(create_app(run, token=TOKEN, nodes=nodes, superlink_log=log))
    assert client.get("/rounds").status_code == 401
    assert client.get("/rounds", headers={"authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    page = client.get("/rounds", headers={"authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200
    assert "script-src" not in page.headers["content-security-policy"]  # no script allowed at all
    text = page.text
    assert '<td>shop-0</td><td class="status-online">online</td>' in text
    assert '<td>shop-1</td><td class="status-offline">offline</td>' in text
    assert 'data-merchant="shop-0" data-value="5.2"' in text
    assert 'class="round-row" data-round="2"' in text and 'class="round-row" data-round="1"' in text
    assert "ceiling 8.0" in text  # the refusal's reason
    fingerprint = hashlib.sha256(PEM_BODY.encode()).hexdigest()[:16]
    assert f'<tr class="refused-connection"><td>{fingerprint}</td><td>3</td>' in text
    chart = client.get("/rounds/quality.svg", headers={"authorization": f"Bearer {TOKEN}"})
    assert chart.headers["content-type"].startswith("image/svg+xml") and b"<svg" in chart.content


def test_values_are_escaped_and_no_run_yet_is_a_page_not_an_error(tmp_path):
    client = TestClient(create_app(tmp_path / "none", token=TOKEN))
    page = client.get("/rounds", headers={"authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200 and 'id="no-rounds"' in page.text
    run, log = _run_folder(tmp_path)
    state = RunStore(run).latest_state()
    state["history"][1]["refused"] = {"<script>x</script>": "<b>no</b>"}
    RunStore(run).save(Checkpoint(2, {"w": np.zeros(2)}, {}, {k: v for k, v in state.items() if k != "round"}))
    text = TestClient(create_app(run, token=TOKEN)).get("/rounds", headers={"authorization": f"Bearer {TOKEN}"}).text
    assert "<script>x</script>" not in text and "&lt;script&gt;x&lt;/script&gt;" in text


def test_refused_keys_are_counted_from_the_superlink_log(tmp_path):
    _, log = _run_folder(tmp_path)
    assert refused_connections(log) == [{"key": hashlib.sha256(PEM_BODY.encode()).hexdigest()[:16], "attempts": 3}]
    assert refused_connections(tmp_path / "missing.log") == []


@pytest.mark.processes
def test_server_run_serves_its_console_in_a_browser_behind_the_token(tmp_path, browser):
    """`fedprofile server run --console-port` (a real SuperLink on 127.0.0.1, no merchant yet) shows a run folder's
    rounds in headless chromium once signed in, and the sign-in page without the token."""
    state = tmp_path / "server"
    run, _ = _run_folder(state)  # a run folder as the ServerApp leaves it
    port, console = free_port(), free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "fedprofile", "server", "run", "--state-dir", str(state),
                             "--insecure", "--host", "127.0.0.1", "--port", str(port), "--console-port", str(console)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{console}"
        wait_for_console(url, proc, tmp_path / "server.log")
        browser.delete_all_cookies()
        browser.get(f"{url}/rounds")
        assert browser.find_element("id", "token")  # the sign-in form, not the rounds
        browser.find_element("id", "token").send_keys((state / "console-token").read_text().strip())
        click_through(browser, browser.find_element("id", "sign-in"), "/rounds")
        assert browser.find_element("tag name", "h1").text == "Rounds"
        assert len(browser.find_elements("css selector", "tr.round-row")) == 2
        chart = browser.find_element("id", "quality-chart")
        assert browser.execute_script("return arguments[0].naturalWidth", chart) > 100
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone: the failure above says why
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

"""A real deployment on 127.0.0.1: SuperLink with TLS and merchant authentication, merchant daemons as
separate processes, and faults (a merchant killed mid-run, the server killed and restarted)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from flwr.cli.build import build_fab_from_disk

from fedprofile.federation import LocalFederation
from server.superlink import CONNECTION, SuperLinkSettings, flwr, register_merchant
from shared_model.privacy import PrivacyLedger
from shared_model.processes import config_string

ROOT = Path(__file__).resolve().parents[2]
# a narrow model and short rounds: the test is about processes, keys and state, not quality
TINY = {"d-model": 32, "profile-dim": 32, "n-heads": 1, "n-layers": 1, "max-len": 20, "item-buckets": 2048,
        "category-buckets": 256, "brand-buckets": 256, "token-buckets": 256,  # 1.4 MB a model message, not 9.0
        "negatives": 64, "batch-size": 32}


def test_the_local_federation_starts_merchants_with_its_fit_budget(tmp_path):
    """`federation local --onsite-epochs/--alone-epochs` reach every merchant's `merchant run`; without a fit,
    merchants serve the global versions as received."""

    def flags(fed, name):
        cmd = fed.merchant_command(name)
        return {flag: cmd[cmd.index(flag) + 1] for flag in ("--onsite-epochs", "--alone-epochs")}, cmd

    fed = LocalFederation(tmp_path / "fed", merchants=2, onsite_epochs=3, alone_epochs=4)
    budget, cmd = flags(fed, "shop-1")
    assert budget == {"--onsite-epochs": "3", "--alone-epochs": "4"} and "--no-onsite-blend" not in cmd
    assert cmd[cmd.index("--name") + 1] == "shop-1"
    assert flags(fed, "shop-1")[1][cmd.index("--grpc-port") + 1] == cmd[cmd.index("--grpc-port") + 1]  # kept on a restart
    budget, cmd = flags(LocalFederation(tmp_path / "off", merchants=2, onsite_fit=False), "shop-0")
    assert budget == {"--onsite-epochs": "0", "--alone-epochs": "0"} and "--no-onsite-blend" in cmd


@pytest.mark.deployment
@pytest.mark.processes
def test_local_federation_with_tls_refuses_the_unregistered_merchant(tmp_path):
    out = tmp_path / "fed"
    cmd = [sys.executable, "-m", "fedprofile", "federation", "local", "--merchants", "2", "--rounds", "1",
           "--unregistered", "1", "--users", "60", "--out", str(out), "--console",
           "--onsite-epochs", "2", "--alone-epochs", "2"]  # the fit's wiring, not its quality
    for key, value in TINY.items():
        cmd += ["--set", f"{key}={value}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tls"] and summary["rounds_completed"] == 1
    assert summary["refused"] == ["shop-2"]
    served = {m["name"]: m for m in summary["merchants"]}
    for name in ("shop-0", "shop-1"):  # the round's global model, or its on-site fit once that beat it
        assert served[name]["global_version"] == summary["expected_model_version"] == f"v0001@{summary['run_id']}"
        merchant_log = (out / "logs" / f"{name}.log").read_text()
        assert f"on-site fit of v0001@{summary['run_id']}: " in merchant_log
        if f"on-site fit of v0001@{summary['run_id']}: the global model stays" not in merchant_log:
            assert served[name]["model_version"] == f"v0001@{summary['run_id']}+local1"
        assert 7.0 < served[name]["epsilon"] <= 8.0 * 1.001
        # every stage of the round was answered by the merchant's warm round worker, not a cold ClientApp; a sum of
        # both merchants (every one needed) shares no secrets and has no unmask
        worker_log = (out / "merchants" / name / "worker.log").read_text()
        for stage in ("query.secagg_keys", "train.distributed", "evaluate"):
            assert f"answered {stage} in " in worker_log, stage
        assert "secagg_shares" not in worker_log and "secagg_unmask" not in worker_log
    assert served["shop-2"]["epsilon"] is None and not served["shop-2"]["model_version"].startswith("v")
    # the refusal is visible on both sides
    assert "No SuperNode found with the given public key" in (out / "server" / "superlink.log").read_text()
    assert "not registered" in (out / "logs" / "shop-2.log").read_text()
    _check_consoles(out, summary)


def _check_consoles(out: Path, summary: dict) -> None:
    """The consoles' pages as the run ended (federation local --console saves them): the coordinator lists both
    merchants online with their epsilon and the refused key; each merchant shows its epsilon against its policy
    and what left it in the round, as counts."""
    coordinator = (out / "console" / "coordinator.html").read_text()
    for name in ("shop-0", "shop-1"):
        assert re.search(rf"<td>{name}</td><td class=\"status-online\">online</td>", coordinator), name
        epsilon = re.search(rf'data-merchant="{name}" data-value="([0-9.e-]+)"', coordinator)
        assert epsilon and float(epsilon.group(1)) == pytest.approx(
            next(m["epsilon"] for m in summary["merchants"] if m["name"] == name), rel=1e-6)
    key = serialization.load_ssh_public_key((out / "keys" / "shop-2.pub").read_bytes())
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    fingerprint = hashlib.sha256("".join(pem.strip().splitlines()[1:-1]).encode()).hexdigest()[:16]
    assert f'<tr class="refused-connection"><td>{fingerprint}</td>' in coordinator
    assert 'class="round-row" data-round="1"' in coordinator
    for name in ("shop-0", "shop-1"):
        page = (out / "console" / f"{name}.html").read_text()
        epsilon = re.search(r'id="epsilon" data-value="([0-9.e-]+)"', page)
        assert epsilon and float(epsilon.group(1)) == pytest.approx(
            next(m["epsilon"] for m in summary["merchants"] if m["name"] == name), rel=1e-3)
        assert '<span id="max-epsilon">8.0</span>' in page
        sent = re.findall(r'<tr class="sent-row">(.*?)</tr>', page, flags=re.S)
        messages = [re.findall(r"<td>(.*?)</td>", row)[3] for row in sent]
        assert any(m.startswith("train") for m in messages) and "evaluate" in messages, messages
        assert "v0001" in page


def _wait(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _foreign_app(folder: Path, marker: Path) -> Path:
    """This release's app with one line added to its ClientApp module: it would leave `marker` if it ran."""
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))) as fab:
        fab.extractall(folder)
    (folder / ".info" / "CONTENT").unlink()
    client_app = folder / "client" / "client_app.py"
    client_app.write_text(client_app.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    return folder


def _ledger(fed, name):
    return json.loads((fed.out / "merchants" / name / "privacy-ledger.json").read_text())


@pytest.mark.deployment
@pytest.mark.processes
@pytest.mark.timeout(900)
def test_a_killed_merchant_and_a_restarted_server_lose_nothing(tmp_path):
    fed = LocalFederation(tmp_path / "fed", merchants=3, users=60, onsite_fit=False)  # the TLS test fits on site
    # local: a killed merchant fails one reply, not the round; evaluate messages after every round (not with the next
    # round's training), so each round's model reaches the merchants before the server is killed below
    extra = {**TINY, "privacy": "local", "round-timeout": 90, "evaluate-with-training": "false"}
    try:
        fed.prepare()
        fed.start_server()
        fed.register()
        for name in fed.names:
            fed.start_merchant(name)
        fed.wait_for_services(fed.names)
        _wait(lambda: fed.connected_nodes() == 3, 120, "three SuperNodes")
        # an outsider holding the CA certificate, at the merchants' address: the control API is not there
        outsider = SuperLinkSettings(state_dir=tmp_path / "outsider", certs=fed.out / "certs", port=fed.port,
                                     internal_port=fed.port)
        home = outsider.write_operator_config(f"127.0.0.1:{fed.port}")
        for args in (["ls", CONNECTION], ["supernode", "register", str(fed.out / "keys" / "shop-0.pub"), CONNECTION]):
            denied = flwr(args, home, timeout=60)
            assert denied.returncode != 0 or "UNIMPLEMENTED" in denied.stdout + denied.stderr, denied.stdout
        assert fed.front.refused >= 2
        assert flwr(["ls", CONNECTION], fed.flwr_home, timeout=60).returncode == 0  # the operator, on loopback
        run = fed.submit(rounds=3, epsilon=8.0, timeout=600, extra=extra)

        _wait(lambda: fed.checkpoint_state().get("round", 0) >= 1, 300, "round 1")
        fed.kill_merchant("shop-2")  # crashes while round 2 is sent out
        state = _wait(lambda: (s := fed.checkpoint_state()).get("round", 0) >= 2 and s, 300, "round 2")
        assert sorted(state["history"][1]["merchants-trained"]) == ["shop-0", "shop-1"]  # quorum held without it
        epsilon_after_one = state["epsilon"]["shop-2"]

        fed.kill_server()  # SuperLink and ServerApp die together, after round 2's checkpoint
        run.wait(timeout=60)
        # cut off from the server, the merchants' services keep answering with the newest model they have
        serving = f"v0002@{state['run_id']}"
        _wait(lambda: all(fed.served_versions()[n] == serving for n in ("shop-0", "shop-1")), 60,
              "the live merchants to serve round 2's model while the server is down")
        fed.start_merchant("shop-2")  # the crashed merchant comes back while the server is down
        fed.start_server()  # same database and run folder
        _wait(lambda: fed.connected_nodes() == 3, 180, "three SuperNodes after the restart")
        # registering again on the same database (a federation started again on its folder) is no error
        assert register_merchant(fed.flwr_home, fed.out / "keys" / "shop-0.pub", "shop-0") == "already registered"
        resumed = fed.submit(rounds=3, epsilon=8.0, timeout=600, extra={**extra, "resume": "true"})
        assert resumed.wait(timeout=600) == 0

        final = fed.checkpoint_state()
        assert final["round"] == 3 and [row["round"] for row in final["history"]] == [1, 2, 3]
        assert "shop-2" in final["history"][2]["merchants-trained"]
        run_id = final["run_id"]
        for name in ("shop-0", "shop-1"):  # every round paid for once, even the one replayed after the restart
            assert _ledger(fed, name)["rounds"] == [[run_id, r] for r in (1, 2, 3)]
            assert final["epsilon"][name] <= 8.0 * 1.001
        rounds_2 = [r for _, r in _ledger(fed, "shop-2")["rounds"]]
        assert rounds_2 == [1, 3]
        # the restarted daemon started a new round worker, and that worker trained round 3
        worker_log = (fed.out / "merchants" / "shop-2" / "worker.log").read_text()
        assert worker_log.count("round worker taking tasks") == 2
        assert "answered train in " in worker_log.rsplit("round worker taking tasks", 1)[1]
        # cumulative, one round short, by the merchants' own ledgers (the coordinator's table lags for a reply that
        # came after the round closed: once shop-0's round-3 update, paid for, arrived too late)
        spent = {n: PrivacyLedger.from_state_dict(_ledger(fed, n)["ledger"]).epsilon() for n in ("shop-0", "shop-2")}
        assert epsilon_after_one < spent["shop-2"] < spent["shop-0"]
        versions = _wait(lambda: (v := fed.served_versions()) and all(x == f"v0003@{run_id}" for x in v.values()) and v,
                         90, "every merchant to serve the final model")
        assert set(versions) == {"shop-0", "shop-1", "shop-2"}

        # the coordinator submits an app whose ClientApp is not the merchants' code: no merchant runs it
        marker = tmp_path / "foreign-code-ran"
        foreign = _foreign_app(tmp_path / "foreign", marker)
        done = flwr(["run", str(foreign), CONNECTION, "--run-config",
                     config_string({"num-rounds": 1, "run-dir": str(tmp_path / "foreign-run"), **extra})],
                    fed.flwr_home, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        worker_log = lambda n: (fed.out / "merchants" / n / "worker.log").read_text(errors="replace")  # noqa: E731
        _wait(lambda: all("refused the run's app: the run's client/client_app.py differs" in worker_log(n)
                          for n in fed.names), 180, "every merchant to refuse the foreign app")
        assert not marker.exists()
    finally:
        fed.stop()

"""The merchant daemon's pieces: the SuperNode command it runs, and how it tells that the SuperLink refused it."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.daemon import open_rotated, refused_by_superlink, supernode_command


def test_the_supernode_runs_with_tls_and_its_key_unless_told_insecure(tmp_path):
    node = {"data-path": "/d/events.csv", "format": "events", "state-dir": "/s", "merchant-name": "shop a",
            "max-epsilon": 2.0}
    cmd = supernode_command(superlink="coord:9092", node_config=node, root_certificates=Path("ca.crt"),
                            auth_key=Path("shop.key"), clientapp_port=9100)
    assert cmd[1:3] == ["-m", "client.supernode"]  # Flower's SuperNode, polling sooner
    assert cmd[cmd.index("--superlink") + 1] == "coord:9092"
    assert cmd[cmd.index("--root-certificates") + 1] == "ca.crt" and "--insecure" not in cmd
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == "shop.key"
    assert cmd[cmd.index("--node-config") + 1] == ('data-path="/d/events.csv" format="events" state-dir="/s" '
                                                   'merchant-name="shop a" max-epsilon=2.0')
    insecure = supernode_command(superlink="127.0.0.1:9092", node_config={"max-epsilon": None}, root_certificates=None,
                                 auth_key=None, clientapp_port=9100)
    assert "--insecure" in insecure and "--auth-supernode-private-key" not in insecure
    assert insecure[insecure.index("--node-config") + 1] == ""  # unset settings are left out


def test_a_refusal_is_read_from_the_end_of_the_supernode_log(tmp_path):
    log = tmp_path / "supernode.log"
    assert not refused_by_superlink(log)
    log.write_text("connecting\n" * 5000)
    assert not refused_by_superlink(log)
    log.write_text("Failed to activate SuperNode\n" + "retrying\n" * 2000)  # long ago, then fine
    assert not refused_by_superlink(log)
    with log.open("a") as handle:
        handle.write("ERROR: [code: 2004] public key not recognised\n")
    assert refused_by_superlink(log)


def test_the_supernode_log_is_rotated_at_a_size(tmp_path):
    log = tmp_path / "supernode.log"
    log.write_bytes(b"x" * 2_000)
    with open_rotated(log, max_bytes=1_000) as handle:
        handle.write(b"fresh")
    assert log.read_bytes() == b"fresh" and (tmp_path / "supernode.log.1").stat().st_size == 2_000
    with open_rotated(log, max_bytes=1_000) as handle:  # under the size: appended to
        handle.write(b" more")
    assert log.read_bytes() == b"fresh more"


def test_the_supernode_polls_sooner_but_otherwise_is_flowers():
    import time

    import flwr.supernode.start_client_internal as pull_loop

    from client.supernode import ShortSleeps

    assert pull_loop.time is time  # what client/supernode.py replaces: a Flower upgrade that moves it fails here
    clock = ShortSleeps(0.3, 0.01)
    started = time.perf_counter()
    clock.sleep(3)  # the idle pull
    assert 0.3 <= time.perf_counter() - started < 1.0
    started = time.perf_counter()
    for _ in range(10):
        clock.sleep(0.5)  # a reply's object not yet in the SuperNode's store
    assert time.perf_counter() - started < 0.5
    assert clock.time is time.time and clock.monotonic is time.monotonic


def test_the_supernode_sends_heartbeats_often_enough_for_a_crashed_merchant_to_be_noticed_in_20_s(monkeypatch):
    import time

    import flwr.supercore.heartbeat as heartbeat_sender
    import flwr.supernode.fleet_http_connection as fleet_connection
    import flwr.supernode.start_client_internal as pull_loop
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL, HEARTBEAT_PATIENCE

    from client import supernode

    monkeypatch.setattr(pull_loop, "time", time)  # restored after the test, like the heartbeat below
    for module in (fleet_connection, heartbeat_sender):
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    supernode.shorten_waits()
    # announced to the SuperLink (the least it accepts), which counts the merchant gone after two intervals
    assert fleet_connection.HEARTBEAT_DEFAULT_INTERVAL == HEARTBEAT_MIN_INTERVAL
    assert HEARTBEAT_PATIENCE * fleet_connection.HEARTBEAT_DEFAULT_INTERVAL <= 20
    # and kept: the heartbeat thread's longest wait between two heartbeats is well inside the announced interval
    waits = []
    sender = heartbeat_sender.HeartbeatSender(lambda: True)
    stop = sender._stop_event  # noqa: SLF001 - the loop itself below, without its thread or its waits
    stop.wait = lambda seconds: waits.append(seconds) or (len(waits) >= 50 and stop.set())
    sender._run()  # noqa: SLF001
    assert max(waits) < 0.5 * HEARTBEAT_MIN_INTERVAL
    assert isinstance(pull_loop.time, supernode.ShortSleeps)


@pytest.mark.processes
def test_a_crashed_round_worker_is_started_again_while_the_service_answers(onsite, tmp_path):
    import os
    import signal
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from client.daemon import MerchantDaemon
    from client.onsite.personalise import OnsiteConfig
    from shared_model.processes import free_port

    # no SuperLink answers at this address: the SuperNode retries while the worker and the service run
    state = tmp_path / "state"
    daemon = MerchantDaemon(data=str(onsite.data), fmt="synthetic", superlink="127.0.0.1:9", state_dir=state,
                            store=tmp_path / "store.sqlite", model=str(onsite.models), grpc_port=0,
                            clientapp_port=free_port(), onsite=OnsiteConfig(epochs=0, alone_epochs=0), max_backoff=1.0)
    daemon.start()
    try:
        def worker_up(after: int | None = None):
            deadline = time.time() + 120
            while time.time() < deadline:
                process = daemon._processes.get("worker")
                log = state / "worker.log"
                if process is not None and process.pid != after and process.poll() is None and log.exists() \
                        and log.read_text().count("round worker taking tasks") >= (1 if after is None else 2):
                    return process
                time.sleep(0.2)
            pytest.fail("the round worker did not come up")

        first = worker_up()
        # the secret the SuperNode asks of whoever takes its tasks: the owner's only, and the worker holds it
        assert oct((state / "worker").stat().st_mode & 0o777) == "0o700"
        assert oct((state / "worker" / "secret").stat().st_mode & 0o777) == "0o600"
        args = daemon._processes["worker"].args
        assert Path(args[args.index("--secret-file") + 1]) == state / "worker" / "secret"
        supernode = daemon._processes["supernode"].args
        assert supernode[supernode.index("--superexec-auth-secret-file") + 1] == str(state / "worker" / "secret")
        os.kill(first.pid, signal.SIGKILL)  # the training part crashes
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{daemon.port}"))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        second = worker_up(after=first.pid)
        assert second.pid != first.pid and daemon.restarts >= 1
    finally:
        daemon.stop()



def test_a_process_that_ran_stably_is_restarted_at_once_and_one_that_keeps_failing_ever_later():
    from client.daemon import STABLE_AFTER, restart_delay

    delays, delay = [], None
    for _ in range(8):  # exits within a second of each start
        delay = restart_delay(delay, 0.5, max_backoff=60.0)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(delay, STABLE_AFTER + 1, max_backoff=60.0) == 1.0  # it ran for minutes: a fresh failure
    assert restart_delay(None, 0.1, max_backoff=0.5) == 0.5

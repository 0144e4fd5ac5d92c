"""The warm round worker: what the ClientApp forwards is answered by the same round code, behind a secret."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from client.client_app import app as client_app
from client.forwarder import WORKER_KEY, WORKER_SOCKET, WorkerError
from client.rounds import STATE_PRIVACY
from client.worker import serve
from server.coordinator import run_federation
from simulations.inprocess import InProcessGrid
from tests.conftest import tiny_run


def _worker(tmp_path, secret: bytes = b"s" * 32, max_messages: int | None = None):
    key = tmp_path / "secret"
    key.write_bytes(secret)
    socket = str(tmp_path / "round.sock")
    thread = threading.Thread(target=serve, args=(socket, key), kwargs={"max_messages": max_messages}, daemon=True)
    thread.start()
    return socket, key, thread


def _nodes(socket, key, n=2):
    return [{"partition-id": i, "num-partitions": n, WORKER_SOCKET: socket, WORKER_KEY: str(key)} for i in range(n)]


def test_a_federation_through_the_worker_matches_one_in_process(tmp_path):
    run = tiny_run(tmp_path, num_rounds=2, local_epochs=1)
    socket, key, thread = _worker(tmp_path, max_messages=8)  # 2 rounds x 2 merchants x (train + evaluate)
    grid = InProcessGrid(client_app, 2, node_configs=_nodes(socket, key))
    forwarded = run_federation(grid, run)
    thread.join(timeout=60)
    assert not thread.is_alive()  # it answered exactly the 8 messages the federation sent
    direct = run_federation(InProcessGrid(client_app, 2), run.replace(run_dir=str(tmp_path / "direct")))
    assert forwarded.rounds_completed == direct.rounds_completed == 2
    assert forwarded.epsilon == pytest.approx(direct.epsilon)  # the same ledger, spent the same way
    assert [sorted(row["merchants-trained"]) for row in forwarded.history] == \
        [sorted(row["merchants-trained"]) for row in direct.history]
    # the worker's context state came back to the SuperNode's context: the ledger persists between messages
    assert all(STATE_PRIVACY in context.state for context in grid.contexts.values())


def test_the_client_app_imports_no_torch_when_it_forwards():
    import subprocess

    code = "import sys, client.client_app, client.forwarder; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_a_connection_without_the_secret_gets_no_reply(tmp_path):
    socket, key, thread = _worker(tmp_path, secret=b"right" * 8)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"wrong" * 8)
    run = tiny_run(tmp_path, num_rounds=1, local_epochs=1)
    with pytest.raises(WorkerError, match="closed the connection"):
        run_federation(InProcessGrid(client_app, 2, node_configs=_nodes(socket, wrong)), run)
    assert (tmp_path / "round.sock").stat().st_mode & 0o077 == 0  # only its owner may even connect


def test_no_worker_is_a_clear_error(tmp_path):
    from flwr.app import Context, Message, RecordDict

    from client.forwarder import forward

    context = Context(run_id=1, node_id=1, node_config={WORKER_SOCKET: str(tmp_path / "none.sock"),
                                                        WORKER_KEY: str(tmp_path / "key")},
                      state=RecordDict(), run_config={})
    msg = Message(content=RecordDict(), message_type="train", dst_node_id=1)
    with pytest.raises(WorkerError, match="no round worker answers"):
        forward(msg, context, wait=0.3)


def test_a_client_that_connects_and_sends_nothing_holds_up_no_one(tmp_path, monkeypatch):
    from multiprocessing.connection import Client

    import client.worker as worker

    monkeypatch.setattr(worker, "FRAME_WAIT", 0.5)
    socket, key, thread = _worker(tmp_path, secret=b"k" * 32, max_messages=8)
    deadline = time.time() + 30
    while not os.path.exists(socket) and time.time() < deadline:  # the worker thread is still binding
        time.sleep(0.05)
    stalled = Client(socket, family="AF_UNIX")  # connects, then never sends its secret
    try:
        run = tiny_run(tmp_path, num_rounds=2, local_epochs=1)
        result = run_federation(InProcessGrid(client_app, 2, node_configs=_nodes(socket, key)), run)
        assert result.rounds_completed == 2
    finally:
        stalled.close()
    thread.join(timeout=60)
    assert not thread.is_alive()


def test_a_message_whose_arrays_do_not_unpack_is_refused_before_anything_runs():
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

    from client.rounds import handle
    from shared_model.packing import PACKED

    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2, "merchant-name": "m"},
                      state=RecordDict(), run_config={})
    msg = Message(content=RecordDict({"arrays": ArrayRecord({PACKED: Array(np.zeros(8, np.uint8))})}),
                  message_type="evaluate", dst_node_id=1)  # packed, but no layout came with it
    reply = handle(msg, context)
    assert "do not unpack" in str(reply.content.config_records["merchant"]["refused"])
    assert not reply.content.metric_records and not reply.content.array_records

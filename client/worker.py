"""The merchant's round worker: a warm process that answers its ClientApp's messages with the round code."""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import contextmanager
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import torch
from flwr.common.serde import context_from_proto, message_from_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=no-name-in-module
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module

from client.forwarder import check_secret, receive_frames, reply_frames, send_frames
from client.rounds import handle

log = logging.getLogger("fedprofile.worker")
MAX_SECRET = 1024  # bytes: the first frame of a connection is the secret, nothing longer is read
FRAME_WAIT = 30.0  # seconds a connected client may take to send its next frame


def serve(address: str, key_file: Path, *, max_messages: int | None = None) -> None:
    """Answer one connection at a time (a SuperNode sends one message at a time) until killed, or until
    `max_messages` were answered. The socket is the owner's only; every connection must show the daemon's secret."""
    if os.path.exists(address):  # left by a worker that crashed: nothing listens there any more
        os.unlink(address)
    with _owner_only():
        listener = Listener(address, family="AF_UNIX")
    log.info("round worker listening on %s (torch threads: %d)", address, torch.get_num_threads())
    answered = 0
    try:
        while max_messages is None or answered < max_messages:
            with listener.accept() as conn:
                try:
                    answered += _answer(conn, key_file)
                except (EOFError, OSError) as exc:  # the ClientApp went away, or sent a frame past the limits
                    log.warning("dropped a connection: %s", exc)
    finally:
        listener.close()


def _answer(conn: Connection, key_file: Path) -> int:
    _wait_for_frame(conn)
    if not check_secret(conn.recv_bytes(MAX_SECRET), key_file):
        log.warning("refused a connection without the daemon's secret")
        return 0
    _wait_for_frame(conn)
    message_bytes, context_bytes = receive_frames(conn, 2)
    msg = message_from_proto(ProtoMessage.FromString(message_bytes))
    context = context_from_proto(ProtoContext.FromString(context_bytes))
    started = time.perf_counter()
    try:
        reply = handle(msg, context)
    except Exception as exc:  # the round code failed: the ClientApp reports it, this worker stays up
        log.exception("%s message failed", msg.metadata.message_type)
        send_frames(conn, b"error", f"{type(exc).__name__}: {exc}".encode())
        return 1
    seconds = time.perf_counter() - started
    send_frames(conn, *reply_frames(reply, context))
    # created_at is the coordinator's clock: on one machine, the message's way here (SuperLink, SuperNode, process)
    log.info("answered %s in %.2fs (%.2fs after the coordinator created it)", msg.metadata.message_type, seconds,
             time.time() - msg.metadata.created_at - seconds)
    return 1


def _wait_for_frame(conn: Connection) -> None:
    # one connection at a time: a client that connects and sends nothing must not hold up every later message
    if not conn.poll(FRAME_WAIT):
        raise EOFError(f"nothing arrived within {FRAME_WAIT:.0f}s")


@contextmanager
def _owner_only():
    previous = os.umask(0o177)  # the socket file is created rw for its owner only
    try:
        yield
    finally:
        os.umask(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--key", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch threads: the share of cores training may use")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    torch.set_num_threads(max(1, args.threads))
    serve(args.socket, args.key)


if __name__ == "__main__":
    main()

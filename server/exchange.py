"""A round's messages out and their replies back: arrays packed, the SuperLink pulled every fraction of a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.superlink.grid.http_grid import HttpGrid

from shared_model.packing import PackingError, pack, unpack

log = logging.getLogger("fedprofile.server")

FIRST_POLL, MAX_POLL = 0.05, 0.5  # seconds between pulls: from 50 ms, doubling up to half a second


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float | None) -> list[Message]:
    """Grid.send_and_receive, but a deployment's grid (Flower 1.42's HttpGrid sleeps 3 s between pulls, most of a
    short round's stage on 127.0.0.1) is pulled from 50 ms on, backing off to 0.5 s. Other grids (the simulation
    engine's in-memory grid, the in-process test grid) answer as they do."""
    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    messages, memo = list(messages), {}
    for msg in messages:  # Flower moves each array as a request of its own: a model goes as one flat array
        pack(msg.content, memo)
    waiting = set(grid.push_messages(messages))
    end = time.monotonic() + (timeout if timeout is not None else float("inf"))
    replies: list[Message] = []
    pause = FIRST_POLL
    while waiting:
        arrived = list(grid.pull_messages(waiting))
        replies.extend(arrived)
        waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
        if not waiting or time.monotonic() >= end:
            break
        # a reply came: the others are likely close behind, so the next pull comes soon, not after the backed-off
        # pause (which cost a round up to 0.5 s when merchants answered a fraction of a second apart)
        if arrived:
            pause = FIRST_POLL
        time.sleep(min(pause, max(0.0, end - time.monotonic())))
        pause = min(pause * 2, MAX_POLL)
    return [reply for reply in replies if _unpacked(reply)]


def _unpacked(reply: Message) -> bool:
    """Unpack a reply's arrays in place; a reply whose arrays do not unpack is left out, as if it never came."""
    if reply.has_error() or not reply.has_content():
        return True
    try:
        unpack(reply.content)
    except PackingError as exc:
        log.warning("left out the reply of node %s: %s", reply.metadata.src_node_id, exc)
        return False
    return True

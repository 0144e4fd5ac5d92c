"""A round's messages out and their replies back, pulling from the SuperLink every fraction of a second."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.superlink.grid.http_grid import HttpGrid

FIRST_POLL, MAX_POLL = 0.05, 0.5  # seconds between pulls: from 50 ms, doubling up to half a second


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float | None) -> list[Message]:
    """Grid.send_and_receive, but a deployment's grid (Flower 1.42's HttpGrid sleeps 3 s between pulls, most of a
    short round's stage on 127.0.0.1) is pulled from 50 ms on, backing off to 0.5 s. Other grids (the simulation
    engine's in-memory grid, the in-process test grid) answer as they do."""
    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
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
        time.sleep(min(pause, max(0.0, end - time.monotonic())))
        pause = FIRST_POLL if arrived else min(pause * 2, MAX_POLL)
    return replies

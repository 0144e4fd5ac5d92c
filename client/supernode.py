"""Flower's SuperNode, with shorter sleeps (idle pull 0.5 s, local waits 0.05 s) and heartbeats every 10 s, not 30."""

from __future__ import annotations

import time

import flwr.supercore.heartbeat as heartbeat_sender
import flwr.supernode.fleet_http_connection as fleet_connection
import flwr.supernode.start_client_internal as pull_loop
from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
from flwr.supernode.cli.flower_supernode import flower_supernode

IDLE_POLL = 0.5  # seconds between pulls from the SuperLink when none brought a message (Flower 1.42: 3)
LOCAL_POLL = 0.05  # seconds between looks at its own store for a reply and its objects (Flower 1.42: 0.5)
# seconds between heartbeats (Flower 1.42: 30; the SuperLink's minimum: 10). The SuperLink counts a merchant gone
# after two silent intervals: a round waiting for a merchant that crashed stops waiting after 20 s, not 60.
HEARTBEAT = HEARTBEAT_MIN_INTERVAL


class ShortSleeps:
    """The `time` module as Flower's pull loop sees it: everything is time's own, but a sleep of a second or more
    (the idle pull, a request to the SuperLink) lasts at most `idle` s and a shorter one (waiting for the
    ClientApp's reply and its objects to reach the SuperNode's own store, a local lookup) at most `local` s. A
    round of five stages on 127.0.0.1 waited up to 3 s at each stage for the next pull, and up to 0.5 s for each
    object of each reply before it went out."""

    def __init__(self, idle: float, local: float):
        self.idle, self.local = idle, local

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.idle if seconds >= 1 else self.local))


def shorten_waits() -> None:
    """Apply the shorter sleeps and heartbeats to Flower's SuperNode modules (in the SuperNode's own process)."""
    if getattr(pull_loop, "time", None) is not time:  # a Flower release that no longer sleeps this way: say so
        raise RuntimeError("flwr.supernode.start_client_internal no longer uses the time module; check IDLE_POLL "
                           "against this Flower release")
    # the interval the SuperNode announces and the one its heartbeat thread keeps are read in two modules: both
    # must change, or the SuperLink expects a heartbeat every 10 s from a thread that sends one every 20
    for module in (fleet_connection, heartbeat_sender):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise RuntimeError(f"{module.__name__} no longer reads HEARTBEAT_DEFAULT_INTERVAL; check HEARTBEAT "
                               "against this Flower release")
    pull_loop.time = ShortSleeps(IDLE_POLL, LOCAL_POLL)
    fleet_connection.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_sender.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT


def main() -> None:
    shorten_waits()
    flower_supernode()


if __name__ == "__main__":
    main()

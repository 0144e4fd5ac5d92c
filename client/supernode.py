"""Flower's SuperNode, asking the SuperLink for messages every half second when idle instead of every 3 s."""

from __future__ import annotations

import time

import flwr.supernode.start_client_internal as pull_loop
from flwr.supernode.cli.flower_supernode import flower_supernode

IDLE_POLL = 0.5  # seconds between pulls when none brought a message (Flower 1.42: 3, hard-coded)


class ShortSleeps:
    """The `time` module as Flower's pull loop sees it: everything is time's own, but no sleep passes `cap` s. A
    round of five stages on 127.0.0.1 waited up to 3 s at each stage for the next pull."""

    def __init__(self, cap: float):
        self.cap = cap

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def main() -> None:
    if getattr(pull_loop, "time", None) is not time:  # a Flower release that no longer sleeps this way: say so
        raise RuntimeError("flwr.supernode.start_client_internal no longer uses the time module; check IDLE_POLL "
                           "against this Flower release")
    pull_loop.time = ShortSleeps(IDLE_POLL)
    flower_supernode()


if __name__ == "__main__":
    main()

"""What every `fedprofile` command shares: the --format option, error exits, --set parsing, waiting for Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Callable

import typer

FORMAT_HELP = "Data format: events (generic CSV/Parquet), taobao, amazon, movielens, jdata, synthetic."
Fmt = Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP, envvar="FEDPROFILE_FORMAT")]


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """`--set key=value` options as a dict; a malformed one ends the command with a clear error."""
    values: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set needs key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def wait_for_signal(*, while_: Callable[[], bool] = lambda: True) -> bool:
    """Block until SIGINT/SIGTERM (returns True) or until `while_()` turns false (returns False)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5) and while_():
        pass
    return stop.is_set()

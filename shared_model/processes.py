"""Starting Flower's own executables from this environment (used by the coordinator and the merchant daemon)."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from pathlib import Path

_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, for a server started later: drawn below the kernel's ephemeral range, since a
    port from bind(0) can be taken meanwhile as the local end of any outgoing connection (a CI run lost a SuperLink
    so); none handed out twice by this process."""
    low, _ = _ephemeral_range()
    candidates = [port for port in range(max(1024, low - 20000), low) if port not in _handed_out]
    for port in random.sample(candidates, min(len(candidates), 200)):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range (a kernel that hands out nearly all ports): the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; elsewhere only a guess


def flower_binary(name: str) -> str:
    """A Flower executable installed beside this Python (the venv), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def env_with_our_bin(extra: dict | None = None) -> dict:
    """Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name: find ours first."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]), **(extra or {})}


def config_string(values: dict) -> str:
    """`key=value ...` as Flower's --run-config and --node-config read it (TOML values: numbers and booleans
    bare, anything else quoted)."""
    return " ".join(f"{key}={_toml(value)}" for key, value in values.items() if value is not None)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if text in ("true", "false"):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return json.dumps(text)

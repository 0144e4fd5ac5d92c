"""Starting Flower's own executables from this environment (used by the coordinator and the merchant daemon)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


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

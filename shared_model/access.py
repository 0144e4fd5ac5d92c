"""Who may call a service: token files readable by their owner alone, and what counts as loopback."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:  # "", "0.0.0.0", "[::]" and names other than localhost are not loopback
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_or_make_token(path: str | Path) -> str:
    """The token in `path`, or a new random one written there readable by its owner alone."""
    path = Path(path)
    if path.is_file():
        token = path.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{path}: the service token must be at least 16 characters")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token

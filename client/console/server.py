"""Start and stop the console's web server beside the on-site service: a token always, TLS beyond loopback."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from client.console.app import ConsoleSettings, create_app
from client.onsite.access import is_loopback, read_or_make_token
from client.onsite.engine import OnsiteEngine

log = logging.getLogger("fedprofile.console")
TOKEN_FILE = "console-token"


@dataclass(frozen=True)
class ConsoleOptions:
    """How a merchant's console listens: `port` (0: a free one), TLS files, and whether staff may mark reviews."""

    port: int = 8080
    host: str = "127.0.0.1"
    writable: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False

    def start(self, engine: OnsiteEngine, *, token_file: str | Path,
              federation: Callable[[], dict] | None = None) -> "ConsoleServer":
        return ConsoleServer(engine, token_file=token_file, host=self.host, port=self.port, tls_cert=self.tls_cert,
                             tls_key=self.tls_key, insecure=self.insecure, writable=self.writable,
                             federation=federation).start()


class ConsoleServer:
    """The console on `host:port` (0: a free port) in a thread of this process, reading through `engine`."""

    def __init__(self, engine: OnsiteEngine, *, token_file: str | Path, host: str = "127.0.0.1", port: int = 8080,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None, insecure: bool = False,
                 writable: bool = False, federation: Callable[[], dict] | None = None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        if not is_loopback(host) and tls_cert is None and not insecure:
            raise ValueError(f"the console would listen on {host}, beyond this machine, without TLS: give "
                             "--tls-cert and --tls-key, or --insecure for a trusted network")
        self.token = read_or_make_token(token_file)
        self.tls = tls_cert is not None
        settings = ConsoleSettings(token=self.token, writable=writable, secure_cookie=self.tls, federation=federation)
        self._socket = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host.strip("[]"), port))
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(create_app(engine, settings), log_level="warning", access_log=False,
                                ssl_certfile=str(tls_cert) if tls_cert else None,
                                ssl_keyfile=str(tls_key) if tls_key else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="console", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ConsoleServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the console did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        log.info("console on %s (sign in: %s/login?token=<the token in the console-token file>)", self.url, self.url)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

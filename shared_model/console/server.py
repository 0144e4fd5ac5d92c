"""A console's web server in a thread of the process it belongs to: TLS beyond loopback, a port of its own."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

from shared_model.access import is_loopback

log = logging.getLogger("fedprofile.console")


class ConsoleServer:
    """Serve `app` on `host:port` (0: a free port) until `stop()`; refuses to listen beyond loopback without TLS
    unless `insecure` says so on purpose."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 8080, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, insecure: bool = False):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        if not is_loopback(host) and tls_cert is None and not insecure:
            raise ValueError(f"the console would listen on {host}, beyond this machine, without TLS: give "
                             "--tls-cert and --tls-key, or --insecure for a trusted network")
        self.tls = tls_cert is not None
        self._socket = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host.strip("[]"), port))
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False,
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
        log.info("console on %s", self.url)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

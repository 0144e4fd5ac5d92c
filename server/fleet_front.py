"""The merchants' door to the SuperLink: forwards the Fleet API alone, so its control API stays on loopback."""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509

log = logging.getLogger("fedprofile.server")

# Flower 1.42's SuperLink serves its Fleet, Control and Runtime APIs over HTTP on one port (/v1/fleet/...,
# /v1/control/..., /v1/runtime/...). Merchants need the Fleet API only: one path segment under /v1/fleet/.
FLEET_PATH = re.compile(r"^/v1/fleet/[a-z][a-z0-9-]*$")
MAX_BODY = 512 * 1024 * 1024  # model weights travel in these requests
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


class FleetFront(ThreadingHTTPServer):
    """Listens where merchants connect; forwards POSTs to /v1/fleet/<method> to the SuperLink on loopback with
    every end-to-end header (the SuperNode's signature travels in them) and answers 404 to anything else."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], upstream: tuple[str, int], *, client_tls: ssl.SSLContext | None,
                 upstream_tls: ssl.SSLContext | None, upstream_name: str | None):
        super().__init__(address, _Forward)
        self.upstream, self.upstream_tls, self.upstream_name = upstream, upstream_tls, upstream_name
        self.refused = 0
        if client_tls is not None:
            # the handshake happens on the first read, in the request's own thread: a client that connects and
            # stalls must not hold up the accept loop every merchant goes through
            self.socket = client_tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address) -> None:
        """A dropped connection or a failed handshake is the client's affair: one debug line, no traceback."""
        log.debug("fleet front: connection from %s ended with an error", client_address, exc_info=True)

    def connect_upstream(self) -> http.client.HTTPConnection:
        host, port = self.upstream
        if self.upstream_tls is None:
            return http.client.HTTPConnection(host, port, timeout=600)
        return _NamedHTTPS(host, port, name=self.upstream_name, context=self.upstream_tls)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _NamedHTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 checked against a name the SuperLink's certificate holds (the coordinator's host)."""

    def __init__(self, host: str, port: int, *, name: str, context: ssl.SSLContext):
        super().__init__(host, port, timeout=600, context=context)
        self._name = name

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._name)


class _Forward(BaseHTTPRequestHandler):
    timeout = 120  # seconds a socket read or write may stall before the connection is dropped
    protocol_version = "HTTP/1.1"
    server: FleetFront
    _upstream: http.client.HTTPConnection | None = None  # this client connection's own, opened at its first request

    def log_message(self, format, *args):  # noqa: A002 - the signature BaseHTTPRequestHandler calls
        log.debug("fleet front: " + format, *args)

    def _refuse(self, status: int, why: str) -> None:
        self.server.refused += 1
        log.warning("refused %s %s at the merchants' address: %s", self.command, self.path[:120], why)
        body = why.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server's name
        if not FLEET_PATH.match(self.path):
            return self._refuse(404, "only the Fleet API is served at this address")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._refuse(413, "request too large")
        body = self.rfile.read(length)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            reply, data = self._forward(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._close_upstream()
            return self._refuse(502, f"the SuperLink did not answer ({type(exc).__name__})")
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, body: bytes, headers: dict):
        """(response, body) from the SuperLink over this client connection's own upstream connection, kept open
        between its requests: Flower moves every array of a model as a request of its own, and a TLS handshake
        for each made them cost 45 ms apiece. A kept connection the SuperLink closed while idle is opened again
        once (it closed before reading the request, so nothing is sent twice)."""
        reused = self._upstream is not None
        try:
            return self._send_upstream(body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            self._close_upstream()
            return self._send_upstream(body, headers)

    def _send_upstream(self, body: bytes, headers: dict):
        if self._upstream is None:
            self._upstream = self.server.connect_upstream()
        self._upstream.request("POST", self.path, body=body, headers=headers)
        reply = self._upstream.getresponse()
        data = reply.read()
        if reply.will_close:
            self._close_upstream()
        return reply, data

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def finish(self):
        try:
            super().finish()
        finally:
            self._close_upstream()

    def do_GET(self):  # noqa: N802
        self._refuse(404, "only the Fleet API is served at this address")

    do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815


def _certificate_name(certificate: Path) -> str:
    """A name the SuperLink's certificate holds, to check it by when connecting to it on 127.0.0.1."""
    names = x509.load_pem_x509_certificate(certificate.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    return dns[0] if dns else str(names.get_values_for_type(x509.IPAddress)[0])


def start_fleet_front(*, host: str, port: int, upstream: str, certs: Path | None = None, ca_cert: str = "ca.crt",
                      server_cert: str = "server.pem", server_key: str = "server.key") -> FleetFront:
    """Listen on host:port (with the SuperLink's own certificate when `certs` is given) and forward the Fleet API
    to the SuperLink at `upstream` (127.0.0.1:PORT). Stop it with `.stop()`; `.refused` counts calls turned away."""
    up_host, up_port = upstream.rsplit(":", 1)
    client_tls = upstream_tls = name = None
    if certs is not None:
        certs = Path(certs)
        client_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        client_tls.load_cert_chain(certs / server_cert, certs / server_key)
        upstream_tls = ssl.create_default_context(cafile=str(certs / ca_cert))
        name = _certificate_name(certs / server_cert)
    front = FleetFront((host, port), (up_host, int(up_port)), client_tls=client_tls, upstream_tls=upstream_tls,
                       upstream_name=name)
    threading.Thread(target=front.serve_forever, name="fleet-front", daemon=True).start()
    log.info("merchants' address %s:%d forwards the Fleet API only to %s", host, port, upstream)
    return front

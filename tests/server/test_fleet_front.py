"""The merchants' address forwards the Fleet API alone: an outsider holding the CA certificate cannot reach the
SuperLink's control API there (before: it listed runs and registered a SuperNode key of its own)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.fleet_front import start_fleet_front
from server.keys import make_server_certificates
from shared_model.processes import free_port


class _Upstream(BaseHTTPRequestHandler):
    """Stands in for the SuperLink: answers any POST with the body reversed and notes path and headers."""

    protocol_version = "HTTP/1.1"
    calls: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Upstream.calls.append((self.path, dict(self.headers), self.client_address))
        self.send_response(200)
        self.send_header("Content-Type", "application/protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[::-1])


@pytest.fixture(params=["tls", "insecure"])
def front(request, tmp_path):
    tls = request.param == "tls"
    certs = make_server_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"]) if tls else None
    _Upstream.calls = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    if certs:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs["certificate"], certs["key"])
        upstream.socket = context.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    door = start_fleet_front(host="127.0.0.1", port=port, upstream=f"127.0.0.1:{upstream.server_address[1]}",
                             certs=certs["ca"].parent if certs else None)

    def connect():
        if certs:
            return http.client.HTTPSConnection("localhost", port, timeout=10,
                                               context=ssl.create_default_context(cafile=str(certs["ca"])))
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    yield connect, door
    door.stop()
    upstream.shutdown()
    upstream.server_close()


def _post(connect, path: str, body: bytes = b"abc", headers=None):
    connection = connect()
    connection.request("POST", path, body=body, headers=headers or {})
    reply = connection.getresponse()
    return reply.status, reply.read()


def test_fleet_calls_pass_with_their_headers(front):
    connect, _ = front
    status, body = _post(connect, "/v1/fleet/pull-messages", headers={"flwr-signature": "sig"})
    assert (status, body) == (200, b"cba")
    path, headers, _ = _Upstream.calls[-1]
    assert path == "/v1/fleet/pull-messages" and headers["flwr-signature"] == "sig"


def test_one_merchant_connection_keeps_one_upstream_connection(front):
    connect, _ = front
    connection = connect()
    for i in range(5):  # as a SuperNode pulls a model's arrays: one request each, on one kept connection
        connection.request("POST", "/v1/fleet/pull-object", body=b"%d" % i)
        reply = connection.getresponse()
        assert (reply.status, reply.read()) == (200, b"%d" % i)
    assert len(_Upstream.calls) == 5
    assert len({client for _, _, client in _Upstream.calls}) == 1  # one upstream connection, no handshake each


@pytest.mark.parametrize("path", ["/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/pull-task-input",
                                  "/v1/fleet/../control/list-runs", "/v1/fleet/pull-messages?x=/v1/control",
                                  "/v1/fleetx/pull-messages", "/"])
def test_every_other_path_is_refused_at_the_merchants_address(front, path):
    connect, door = front
    status, _ = _post(connect, path)
    assert status == 404 and not _Upstream.calls and door.refused == 1


def test_a_client_that_connects_and_stalls_holds_up_no_one(front, capfd):
    connect, door = front
    stalled = socket.create_connection(door.server_address[:2], timeout=10)  # never sends a byte nor a handshake
    dropped = socket.create_connection(door.server_address[:2], timeout=10)
    dropped.sendall(b"\x16\x03\x01garbage")  # a broken handshake or request line, then gone
    dropped.close()
    try:
        assert _post(connect, "/v1/fleet/pull-messages", b"xyz") == (200, b"zyx")
    finally:
        stalled.close()
    assert "Traceback" not in capfd.readouterr().err

"""Ports for servers the project starts itself."""

from __future__ import annotations

import socket

from shared_model.processes import _ephemeral_range, free_port


def test_free_ports_lie_below_the_ephemeral_range_are_bindable_and_never_repeat():
    # below the range: an outgoing connection (a browser, a client) cannot take the port before our server binds it
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and all(1024 <= port < low for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_some_other_process_listens_on_is_not_handed_out(monkeypatch):
    import shared_model.processes as processes

    monkeypatch.setattr(processes, "_ephemeral_range", lambda: (1100, 60999))  # candidates: 1024-1099
    monkeypatch.setattr(processes, "_handed_out", set())
    taken = []
    for port in range(1024, 1090):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            taken.append(s)
        except OSError:
            s.close()
    try:
        in_use = {s.getsockname()[1] for s in taken}
        handed = {free_port() for _ in range(5)}
        assert len(handed) == 5 and not handed & in_use
    finally:
        for s in taken:
            s.close()

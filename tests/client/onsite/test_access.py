"""Who may call the on-site service: a token on every call, TLS beyond loopback, bounded ingestion, short errors.

The service runs in this process on 127.0.0.1 (port 0), over the `onsite` shop and model."""

from __future__ import annotations

import re

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.onsite.access import service_access
from client.onsite.engine import open_engine
from client.onsite.proto import merchant_pb2 as pb
from client.onsite.proto import merchant_pb2_grpc as pb_grpc
from client.onsite.service import MAX_INGEST_EVENTS, serve
from server.keys import make_server_certificates


@pytest.fixture(scope="module")
def engine(onsite, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("access")
    engine, _ = open_engine(str(onsite.data), "synthetic", store=tmp_path / "store.sqlite",
                            quarantine=tmp_path / "quarantine.csv")
    engine.load_model(onsite.models / "v0001")
    yield engine
    engine.close()


def _user(onsite) -> str:
    return str(onsite.log.events["user_id"].iloc[0])


def test_a_token_is_asked_of_every_call_but_health(engine, onsite, tmp_path):
    access = service_access("127.0.0.1", token_file=tmp_path / "service.token")
    token = (tmp_path / "service.token").read_text().strip()
    assert len(token) >= 32 and oct((tmp_path / "service.token").stat().st_mode)[-3:] == "600"
    server, port = serve(engine, host="127.0.0.1", port=0, access=access)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.MerchantProfilesStub(channel)
        for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", token),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetProfile(pb.ProfileRequest(user_id=_user(onsite)), metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            stub.IngestEvents(iter([pb.Event(user_id="u", item_id="i")]))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.GetProfile(pb.ProfileRequest(user_id=_user(onsite)),
                                metadata=(("authorization", f"Bearer {token}"),))
        assert reply.profile.user_id == _user(onsite)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=1).wait()


def test_beyond_loopback_needs_tls_and_a_token_unless_insecure(tmp_path):
    certs = make_server_certificates(tmp_path / "certs", ["127.0.0.1"])
    for host in ("0.0.0.0", "192.0.2.10", "[::]"):
        with pytest.raises(ValueError, match=f"listen on {re.escape(host)}.*without TLS and a token"):
            service_access(host)
        with pytest.raises(ValueError, match="without a token"):
            service_access(host, tls_cert=certs["certificate"], tls_key=certs["key"])
        assert service_access(host, insecure=True).credentials is None
    access = service_access("0.0.0.0", tls_cert=certs["certificate"], tls_key=certs["key"],
                            token_file=tmp_path / "t")
    assert access.credentials is not None and access.token
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        service_access("127.0.0.1", tls_cert=certs["certificate"])


def test_tls_and_token_together(engine, onsite, tmp_path):
    certs = make_server_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"])
    access = service_access("127.0.0.1", tls_cert=certs["certificate"], tls_key=certs["key"],
                            token_file=tmp_path / "service.token")
    server, port = serve(engine, host="127.0.0.1", port=0, access=access)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes())
        stub = pb_grpc.MerchantProfilesStub(grpc.secure_channel(f"localhost:{port}", credentials))
        reply = stub.Recommend(pb.RecommendRequest(user_id=_user(onsite), k=3),
                               metadata=(("authorization", f"Bearer {access.token}"),))
        assert len(reply.items) == 3
        plain = pb_grpc.MerchantProfilesStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as refused:
            plain.Recommend(pb.RecommendRequest(user_id=_user(onsite), k=3), timeout=3,
                            metadata=(("authorization", f"Bearer {access.token}"),))
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        server.stop(grace=1).wait()


def test_ingestion_is_bounded_and_errors_are_short(engine, onsite):
    """Before: 33,000 events in one call held the write lock for 99 s, and a long user id came back in an error
    larger than gRPC's metadata limit."""
    server, port = serve(engine, host="127.0.0.1", port=0)
    try:
        stub = pb_grpc.MerchantProfilesStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        before = engine.store.count_events()
        event = pb.Event(user_id=_user(onsite), item_id="x", category_id="c1", behavior="view", timestamp="1511600000")
        with pytest.raises(grpc.RpcError) as refused:
            stub.IngestEvents(iter([event] * (MAX_INGEST_EVENTS + 1)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {MAX_INGEST_EVENTS} events" in refused.value.details()
        long = "u" * 100_000
        with pytest.raises(grpc.RpcError) as refused:
            stub.IngestEvents(iter([event, pb.Event(user_id=long, item_id="x", category_id="c1", behavior="view",
                                                    timestamp="1511600000")]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(refused.value.details()) < 200
        assert engine.store.count_events() == before  # nothing of a refused call is kept
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetProfile(pb.ProfileRequest(user_id=long))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(refused.value.details()) < 200
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetProfile(pb.ProfileRequest(user_id="v" * 200))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and len(refused.value.details()) < 200
    finally:
        server.stop(grace=1).wait()

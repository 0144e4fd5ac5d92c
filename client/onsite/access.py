"""Who may call the on-site service: a bearer token kept in the merchant's folder, and TLS beyond loopback."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from shared_model.access import is_loopback, read_or_make_token

# Health checks carry no customer data: load balancers and the daemon's supervisors may call them bare.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


@dataclass(frozen=True)
class ServiceAccess:
    """The token every call must carry (`authorization: Bearer <token>`; None: none asked) and the TLS
    credentials (None: plain text, loopback or `--insecure` only)."""

    token: str | None = None
    credentials: grpc.ServerCredentials | None = None

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenInterceptor(self.token)] if self.token else []


def service_access(host: str, *, token_file: str | Path | None = None, tls_cert: str | Path | None = None,
                   tls_key: str | Path | None = None, insecure: bool = False) -> ServiceAccess:
    """Refuse to listen beyond loopback without TLS and a token, unless `insecure` says so on purpose."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    token = read_or_make_token(token_file) if token_file else None
    credentials = None
    if tls_cert is not None:
        credentials = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
    missing = [what for what, absent in (("TLS", credentials is None), ("a token", token is None)) if absent]
    if not is_loopback(host) and not insecure and missing:
        raise ValueError(f"the on-site service would listen on {host}, beyond this machine, without "
                         f"{' and '.join(missing)}: give --tls-cert, --tls-key and --token-file, "
                         "or --insecure for a trusted network")
    return ServiceAccess(token, credentials)


class TokenInterceptor(grpc.ServerInterceptor):
    """Every call but a health check must carry the token; others get UNAUTHENTICATED and reach no handler."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer <token>)")

        self._refuse_unary = grpc.unary_unary_rpc_method_handler(refuse)
        self._refuse_stream = grpc.stream_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in OPEN_METHODS:
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(handler_call_details)
        return self._refuse_stream if handler_call_details.method.endswith("/IngestEvents") else self._refuse_unary

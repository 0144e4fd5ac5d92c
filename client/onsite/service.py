"""The on-site gRPC service: translates MerchantProfiles calls into OnsiteEngine calls, with health and reflection."""

from __future__ import annotations

import logging
import math
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from client.onsite.access import ServiceAccess
from client.onsite.engine import OnsiteEngine, UnknownUser
from client.onsite.profile_shapes import profile_message
from client.onsite.proto import SERVICE_NAME
from client.onsite.proto import merchant_pb2 as pb
from client.onsite.proto import merchant_pb2_grpc as pb_grpc

log = logging.getLogger("fedprofile.service")
MAX_K = 1000
MAX_AUDIENCE = 100_000
MAX_RERANK = 10_000
MAX_INGEST_EVENTS = 10_000  # events per IngestEvents call: a call holds the write lock while it refreshes profiles
MAX_FIELD = 256  # characters of an id or name in a request; longer ones are refused without being echoed


def _items(scored) -> list[pb.Item]:
    return [pb.Item(item_id=s.item_id, score=s.score, category=s.category, price=s.price, reasons=list(s.reasons))
            for s in scored]


def _finite(value: float, name: str, context) -> None:
    if not math.isfinite(value):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a finite number, got {value}")


class MerchantProfilesServicer(pb_grpc.MerchantProfilesServicer):
    def __init__(self, engine: OnsiteEngine):
        self.engine = engine

    def _guard(self, context, call):
        """Map engine errors to status codes with the engine's message."""
        try:
            return call()
        except UnknownUser as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, exc.args[0])
        except KeyError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]) if exc.args else "not found")
        except RuntimeError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    @staticmethod
    def _need_user(request, context) -> str:
        if not request.user_id.strip():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")
        if len(request.user_id) > MAX_FIELD:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"user_id is longer than {MAX_FIELD} characters")
        return request.user_id.strip()

    def GetProfile(self, request, context):
        user = self._need_user(request, context)
        record, version = self._guard(context, lambda: self.engine.profile(user))
        return pb.ProfileReply(profile=profile_message(record, include_vector=request.include_vector),
                               model_version=version)

    def Recommend(self, request, context):
        user = self._need_user(request, context)
        k = request.k or 10
        if not 1 <= k <= MAX_K:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be between 1 and {MAX_K}, got {k}")
        lo = request.min_price if request.HasField("min_price") else None
        hi = request.max_price if request.HasField("max_price") else None
        for value, name in ((lo, "min_price"), (hi, "max_price")):
            if value is not None:
                _finite(value, name, context)
        if lo is not None and hi is not None and lo > hi:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"min_price {lo} is above max_price {hi}")
        items, version = self._guard(context, lambda: self.engine.recommend(
            user, k=k, category=request.category or None, min_price=lo, max_price=hi,
            in_stock_only=request.in_stock_only, include_purchased=request.include_purchased))
        return pb.ItemsReply(items=_items(items), model_version=version)

    def Rerank(self, request, context):
        user = self._need_user(request, context)
        if not request.item_ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_ids is empty: give the candidates to re-rank")
        if len(request.item_ids) > MAX_RERANK:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_RERANK} item_ids, got {len(request.item_ids)}")
        items, unknown, version = self._guard(context, lambda: self.engine.rerank(user, list(request.item_ids)))
        return pb.ItemsReply(items=_items(items), model_version=version, unknown_items=unknown)

    def IngestEvents(self, request_iterator, context):
        records = []
        for e in request_iterator:  # read as it arrives, bounded: the rest of an over-long stream is never held
            if len(records) == MAX_INGEST_EVENTS:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_INGEST_EVENTS} events per call; "
                              "nothing was kept, send them in several calls")
            fields = {"user_id": e.user_id, "item_id": e.item_id, "category_id": e.category_id, "behavior": e.behavior,
                      "timestamp": e.timestamp, "price": e.price, "brand": e.brand}
            long = next((k for k, v in fields.items() if isinstance(v, str) and len(v) > MAX_FIELD), None)
            if long is not None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"event {len(records)}: {long} is longer than "
                              f"{MAX_FIELD} characters; nothing was kept")
            records.append(fields)
        if not records:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream held no events")
        result = self._guard(context, lambda: self.engine.ingest(records, source=f"IngestEvents {context.peer()}"))
        return pb.IngestReply(
            received=result["received"], accepted=result["accepted"], quarantined=result["quarantined"],
            rejections=[pb.Rejection(**r) for r in result["rejections"]], users_updated=result["users_updated"],
            model_version=result["model_version"])

    def GetSegment(self, request, context):
        which = request.WhichOneof("which")
        if which is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give user_id or segment")
        segment, version = self._guard(context, lambda: self.engine.segment(
            user_id=request.user_id if which == "user_id" else None,
            segment=request.segment if which == "segment" else None))
        fields = {k: segment.get(k, 0) for k in ("segment", "name", "size", "share", "top_interests", "mean_monetary",
                                                 "mean_purchases", "mean_recency_days", "mean_propensity", "value_mix",
                                                 "distinctive_interests")}
        return pb.SegmentReply(segment=pb.Segment(**fields), model_version=version)

    def Audience(self, request, context):
        if not request.category:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "category is required")
        n = request.n or 100
        if not 1 <= n <= MAX_AUDIENCE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"n must be between 1 and {MAX_AUDIENCE}, got {n}")
        users, version = self._guard(context, lambda: self.engine.audience(request.category, n))
        return pb.AudienceReply(users=[pb.ScoredUser(user_id=u, score=s) for u, s in users], model_version=version)

    def RiskReport(self, request, context):
        top = request.top or 10
        if top < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"top must be positive, got {top}")
        _finite(request.min_score, "min_score", context)
        entries, version = self._guard(context, lambda: self.engine.risk(
            user_id=request.user_id.strip() or None, top=top, min_score=request.min_score))
        return pb.RiskReply(entries=[pb.RiskEntry(**e) for e in entries], model_version=version)


def serve(engine: OnsiteEngine, *, host: str = "127.0.0.1", port: int = 50051, workers: int = 16,
          access: ServiceAccess = ServiceAccess()) -> tuple[grpc.Server, int]:
    """Start the service (returns the server and the bound port: `port=0` picks a free one); `access` (see
    `service_access`) sets the token and TLS, which anything beyond loopback needs."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onsite"),
                         interceptors=access.interceptors())
    pb_grpc.add_MerchantProfilesServicer_to_server(MerchantProfilesServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, access.credentials) if access.credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not listen on {address}")
    server.start()
    status = health_pb2.HealthCheckResponse.SERVING if engine.current else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)

    def serving(_version):
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    engine.on_swap.append(serving)
    server.health = health_servicer  # so the caller can flip it (e.g. NOT_SERVING while draining)
    log.info("merchant service on %s (model %s)", f"{host}:{bound}", engine.current.version if engine.current else None)
    return server, bound

"""A profile's three shapes, mapped in one place: UserProfile -> stored record (JSON) -> gRPC Profile message."""

from __future__ import annotations

from client.onsite.profile import UserProfile
from client.onsite.proto import merchant_pb2 as pb


def profile_record(profile: UserProfile, *, segment: int) -> dict:
    """The JSON record the store keeps, `fedprofile profile` prints and the service answers from."""
    return {
        "user_id": profile.user_id,
        "model_version": profile.model_version,
        "interests": [{"category": c, "weight": w} for c, w in profile.interests],
        "next_interests": [{"category": c, "weight": w} for c, w in profile.next_interests],
        "brands": [{"brand": b, "weight": w} for b, w in profile.brands],
        "price_level": {"percentile": profile.price_percentile, "tier": profile.price_tier},
        "active_hours": [{"hour": h, "share": s} for h, s in profile.active_hours],
        "active_days": [{"day": d, "share": s} for d, s in profile.active_days],
        "peak_hour": profile.peak_hour,
        "purchase_propensity": profile.purchase_propensity,
        "rfm": {"recency_days": profile.recency_days, "tenure_days": profile.tenure_days, "events": profile.events,
                "purchases": profile.purchases, "monetary": profile.monetary},
        "value_segment": profile.value_segment,
        "risk": {"score": profile.risk_score, "reasons": list(profile.risk_reasons)},
        "vector": [round(v, 6) for v in profile.vector],
        "segment": segment,
    }


def _weighted(pairs, key: str) -> list[pb.Weighted]:
    return [pb.Weighted(name=str(p[key]), weight=float(p.get("weight", p.get("share", 0.0)))) for p in pairs]


def profile_message(record: dict, *, include_vector: bool) -> pb.Profile:
    """The gRPC Profile of a stored record (the vector only when asked for)."""
    price = record["price_level"]["percentile"]
    return pb.Profile(
        user_id=record["user_id"],
        vector=record["vector"] if include_vector else [],
        interests=_weighted(record["interests"], "category"),
        next_interests=_weighted(record["next_interests"], "category"),
        brands=_weighted(record["brands"], "brand"),
        price_percentile=price if price is not None else None,
        price_tier=record["price_level"]["tier"],
        peak_hour=record["peak_hour"],
        active_hours=_weighted(record["active_hours"], "hour"),
        active_days=_weighted(record["active_days"], "day"),
        purchase_propensity=record["purchase_propensity"],
        recency_days=record["rfm"]["recency_days"],
        tenure_days=record["rfm"]["tenure_days"],
        events=record["rfm"]["events"],
        purchases=record["rfm"]["purchases"],
        monetary=record["rfm"]["monetary"],
        value_segment=record["value_segment"],
        risk_score=record["risk"]["score"],
        risk_reasons=record["risk"]["reasons"],
        segment=record.get("segment", -1),
        updated_at=record.get("updated_at", 0.0),
    )

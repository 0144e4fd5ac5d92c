"""Readable user profiles: the model's profile vector plus interests, price level, habits, value and propensity."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from client.onsite.risk import behaviour_signals, replace_rows, risk_scores
from shared_model.data.schema import Behavior
from shared_model.evaluation import last_profiles
from shared_model.features import Catalogue, SequenceSet, category_bucket, latest_windows

# How much one event says about an interest: a purchase far more than a view.
BEHAVIOR_WEIGHT = {Behavior.VIEW: 1.0, Behavior.CART: 3.0, Behavior.FAV: 2.0, Behavior.PURCHASE: 5.0,
                   Behavior.REVIEW: 2.0}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DAY = 86_400


@dataclass(frozen=True)
class ProfileSettings:
    """How readable fields are derived; every threshold is documented in docs/profiles.md."""

    top_interests: int = 5
    half_life_days: float | None = None  # recency decay of interest weights; None: a quarter of the window
    price_tiers: tuple[float, float] = (0.4, 0.6)  # percentile cut-offs: low < 0.4 <= mid <= 0.6 < high
    new_within: float = 0.2  # "new": first seen in the newest 20% of the merchant's observation window
    at_risk_after: float = 0.5  # "at risk": nothing for half the window or more
    high_value_quantile: float = 0.8  # "high value": spend in the merchant's top 20% of active buyers
    potential_quantile: float = 0.7  # "potential": cart/fav rate in the top 30% but few purchases


@dataclass
class ModelOutputs:
    """What the network says about each user (rows in the order of the input windows)."""

    vectors: np.ndarray  # (U, k) profile vectors after the newest event
    propensity: np.ndarray  # (U,) P(purchase within the next few events)
    next_categories: np.ndarray  # (U, C) distribution over the merchant's categories for the next event
    categories: np.ndarray  # (C,) the merchant's category ids, columns of next_categories


@torch.no_grad()
def model_outputs(model, windows: SequenceSet, catalogue: Catalogue, *, device: torch.device) -> ModelOutputs:
    vectors = last_profiles(model, windows, device=device)  # (U, k)
    was_training = model.training
    model.eval()
    categories = np.unique(catalogue.categories[1:].astype(str))
    buckets = torch.from_numpy(category_bucket(categories, model.config.hash_spec)).to(device)
    vec = vectors.to(device)
    propensity = torch.sigmoid(model.purchase_head(vec).squeeze(-1))  # (U,)
    next_categories = torch.softmax(vec @ model.category_vectors(buckets).T, dim=-1)  # (U, C)
    model.train(was_training)
    return ModelOutputs(vectors.numpy(), propensity.float().cpu().numpy(), next_categories.float().cpu().numpy(),
                        categories)


def _top(frame: pd.DataFrame, key: str, n: int) -> dict:
    """Per user: the `n` heaviest values of `key` with their share of the user's weight."""
    grouped = frame.groupby(["user_id", key], sort=False)["w"].sum().reset_index()
    grouped["share"] = grouped["w"] / grouped.groupby("user_id")["w"].transform("sum")
    grouped = grouped.sort_values(["user_id", "share", key], ascending=[True, False, True])
    top = grouped.groupby("user_id", sort=False).head(n)
    return {u: [(str(k), round(float(s), 4)) for k, s in zip(g[key], g["share"])]
            for u, g in top.groupby("user_id", sort=False)}


def price_percentiles(catalogue: Catalogue) -> np.ndarray:
    """(N+1,) each item's price position among the priced items of its category: 0 the cheapest, 1 the
    dearest, 0.5 for a category's only priced item (NaN where no price)."""
    frame = pd.DataFrame({"category": catalogue.categories.astype(str), "price": catalogue.prices})
    grouped = frame.groupby("category")["price"]
    rank, count = grouped.rank(method="average"), grouped.transform("count")
    return np.where(count > 1, (rank - 1) / (count - 1).clip(lower=1), 0.5).astype(np.float64) + np.where(
        frame["price"].isna(), np.nan, 0.0)


def describe_users(events: pd.DataFrame, catalogue: Catalogue, *, now: int | None = None,
                   window_start: int | None = None, settings: ProfileSettings = ProfileSettings()) -> pd.DataFrame:
    """Readable behaviour fields per user (index user_id) from cleaned, time-sorted events.

    `now` and `window_start` bound the merchant's observation window (default: its first and last event);
    recency, tenure and the value segment are relative to it."""
    if len(events) == 0:
        return pd.DataFrame(columns=["interests"]).rename_axis("user_id")
    ts = events["timestamp"].to_numpy(dtype=np.int64)
    now = int(ts.max()) if now is None else int(now)
    start = int(ts.min()) if window_start is None else int(window_start)
    window = max(now - start, DAY)
    half_life = settings.half_life_days * DAY if settings.half_life_days else window / 4
    behavior = events["behavior"].to_numpy()
    weight = np.vectorize(lambda b: BEHAVIOR_WEIGHT.get(Behavior(int(b)), 1.0))(behavior) if len(behavior) else behavior
    decay = 0.5 ** (np.maximum(now - ts, 0) / half_life)
    frame = pd.DataFrame({
        "user_id": events["user_id"].to_numpy(dtype=object),
        "category": events["category_id"].astype(str).to_numpy(),
        "brand": events["brand"].fillna("").astype(str).to_numpy(),
        "w": weight * decay,
        "hour": (ts // 3600) % 24,
        "weekday": (ts // DAY + 3) % 7,
        "ts": ts,
        "behavior": behavior,
        "price": events["price"].to_numpy(dtype=np.float64),
    })
    pct = price_percentiles(catalogue)[catalogue.index_of(events["item_id"].to_numpy(dtype=object))]
    frame["price_pct"] = np.where(catalogue.index_of(events["item_id"].to_numpy(dtype=object)) > 0, pct, np.nan)
    users = frame.groupby("user_id", sort=False)
    out = pd.DataFrame(index=pd.Index(users.size().index, name="user_id"))
    out["events"] = users.size()
    interests = _top(frame, "category", settings.top_interests)
    out["interests"] = [interests.get(u, []) for u in out.index]
    branded = frame[frame["brand"] != ""]
    brands = _top(branded, "brand", settings.top_interests) if len(branded) else {}
    out["brands"] = [brands.get(u, []) for u in out.index]
    # price level: where the user's items sit in their categories' price ranges, weighted like interests
    priced = frame.dropna(subset=["price_pct"])
    level = (priced["price_pct"] * priced["w"]).groupby(priced["user_id"]).sum() / priced.groupby("user_id")["w"].sum()
    out["price_percentile"] = level.reindex(out.index)
    # the long-run level (every event alike), for segments: value is a lasting trait, not this week's taste
    out["lifetime_price_percentile"] = priced.groupby("user_id")["price_pct"].mean().reindex(out.index)
    lo, hi = settings.price_tiers
    out["price_tier"] = np.where(out["price_percentile"].isna(), "unknown",
                                 np.where(out["price_percentile"] < lo, "low",
                                          np.where(out["price_percentile"] > hi, "high", "mid")))
    # habits: hour and weekday shares; the peak hour is the circular mean of event hours
    angle = frame["hour"].to_numpy() * 2 * np.pi / 24
    circ = pd.DataFrame({"user_id": frame["user_id"], "s": np.sin(angle), "c": np.cos(angle)}).groupby("user_id").mean()
    out["peak_hour"] = ((np.arctan2(circ["s"], circ["c"]) * 24 / (2 * np.pi)) % 24).reindex(out.index).round(1)
    counts = frame.assign(w=1.0)
    hours = _top(counts, "hour", 3)
    days = _top(counts, "weekday", 3)
    out["active_hours"] = [[(int(h), s) for h, s in hours.get(u, [])] for u in out.index]
    out["active_days"] = [[(WEEKDAYS[int(d)], s) for d, s in days.get(u, [])] for u in out.index]
    # recency / frequency / monetary
    out["first_seen"] = users["ts"].min()
    out["last_seen"] = users["ts"].max()
    out["recency_days"] = ((now - out["last_seen"]) / DAY).round(2)
    out["tenure_days"] = ((now - out["first_seen"]) / DAY).round(2)
    is_buy = frame["behavior"] == int(Behavior.PURCHASE)
    engaged = frame["behavior"].isin([int(Behavior.CART), int(Behavior.FAV)])
    out["purchases"] = is_buy.groupby(frame["user_id"]).sum().reindex(out.index).fillna(0).astype(int)
    out["monetary"] = frame["price"].where(is_buy, 0.0).fillna(0.0).groupby(frame["user_id"]).sum().reindex(out.index).round(2)
    out["engagements"] = engaged.groupby(frame["user_id"]).sum().reindex(out.index).fillna(0).astype(int)
    out["active_days_count"] = frame.assign(day=frame["ts"] // DAY).groupby("user_id")["day"].nunique().reindex(out.index)
    out["value_segment"] = value_segments(out, window_days=window / DAY, settings=settings)
    return out


def value_segments(users: pd.DataFrame, *, window_days: float, settings: ProfileSettings = ProfileSettings()) -> np.ndarray:
    """RFM rules, first match wins: new (first seen recently), at risk (silent for long), high value (top
    spenders), potential (engaged but buying little), regular (everyone else). Quantiles are the merchant's own."""
    n = len(users)
    if n == 0:
        return np.array([], dtype=object)
    events = users["events"].to_numpy(dtype=np.float64)
    buy_rate = users["purchases"].to_numpy() / events
    engage_rate = users["engagements"].to_numpy() / events
    monetary = users["monetary"].to_numpy(dtype=np.float64)
    buyers = monetary[monetary > 0]
    spend_cut = np.quantile(buyers, settings.high_value_quantile) if len(buyers) else np.inf
    engage_cut = np.quantile(engage_rate, settings.potential_quantile)
    median_buy = np.median(buy_rate)
    new = users["tenure_days"].to_numpy() <= settings.new_within * window_days
    at_risk = users["recency_days"].to_numpy() >= settings.at_risk_after * window_days
    high = (monetary >= spend_cut) & (monetary > 0)
    potential = (engage_rate >= engage_cut) & (buy_rate <= median_buy)
    return np.select([new, at_risk, high, potential], ["new", "at_risk", "high_value", "potential"], "regular").astype(object)


@dataclass
class UserProfile:
    """One customer's profile: the vector the model computes and the readable parts derived beside it."""

    user_id: str
    vector: list[float]
    interests: list[tuple[str, float]]
    next_interests: list[tuple[str, float]]
    brands: list[tuple[str, float]]
    price_percentile: float | None
    price_tier: str
    peak_hour: float
    active_hours: list[tuple[int, float]]
    active_days: list[tuple[str, float]]
    purchase_propensity: float
    recency_days: float
    tenure_days: float
    events: int
    purchases: int
    monetary: float
    value_segment: str
    risk_score: float = 0.0
    risk_reasons: list[str] = field(default_factory=list)
    model_version: str = ""


def assemble(described: pd.DataFrame, outputs: ModelOutputs, user_ids: np.ndarray, *, top: int = 5,
             risk: pd.DataFrame | None = None, model_version: str = "") -> list[UserProfile]:
    """Join readable fields and model outputs (rows in `user_ids` order) into profiles."""
    profiles = []
    order = np.argsort(-outputs.next_categories, axis=1)[:, :top] if len(user_ids) else np.zeros((0, top), int)
    for row, user in enumerate(user_ids):
        d = described.loc[user]
        price = d["price_percentile"]
        profiles.append(UserProfile(
            user_id=str(user),
            vector=outputs.vectors[row].astype(float).tolist(),
            interests=list(d["interests"]),
            next_interests=[(str(outputs.categories[c]), round(float(outputs.next_categories[row, c]), 4))
                            for c in order[row]],
            brands=list(d["brands"]),
            price_percentile=None if pd.isna(price) else round(float(price), 4),
            price_tier=str(d["price_tier"]),
            peak_hour=float(d["peak_hour"]),
            active_hours=list(d["active_hours"]),
            active_days=list(d["active_days"]),
            purchase_propensity=round(float(outputs.propensity[row]), 4),
            recency_days=float(d["recency_days"]),
            tenure_days=float(d["tenure_days"]),
            events=int(d["events"]),
            purchases=int(d["purchases"]),
            monetary=float(d["monetary"]),
            value_segment=str(d["value_segment"]),
            risk_score=0.0 if risk is None else round(float(risk.loc[user, "score"]), 4),
            risk_reasons=[] if risk is None else list(risk.loc[user, "reasons"]),
            model_version=model_version,
        ))
    return profiles


@dataclass
class ProfileBatch:
    """Profiles of many users at once, with the frames segments, audiences and risk work from."""

    user_ids: np.ndarray
    described: pd.DataFrame  # readable fields, index user_id (order of user_ids)
    outputs: ModelOutputs
    signals: pd.DataFrame  # behaviour risk signals of these users; index user_id
    risk: pd.DataFrame  # score, reasons; index user_id
    profiles: list[UserProfile]


def profile_users(model, events: pd.DataFrame, users: pd.DataFrame, catalogue: Catalogue, *,
                  device: torch.device | str = "cpu", now: int | None = None, window_start: int | None = None,
                  settings: ProfileSettings = ProfileSettings(), model_version: str = "",
                  population: pd.DataFrame | None = None) -> ProfileBatch:
    """Profiles for every user in `events` (cleaned, sorted by user then time). Risk signals are scored
    against `population` (signals of the merchant's customers) when given, else against these users."""
    device = torch.device(device)
    windows = latest_windows(events, users, catalogue, model.config.hash_spec, max_len=model.config.max_len)
    outputs = model_outputs(model, windows, catalogue, device=device)
    described = describe_users(events, catalogue, now=now, window_start=window_start, settings=settings)
    described = described.reindex(windows.user_ids)
    vectors = pd.DataFrame(outputs.vectors, index=pd.Index(windows.user_ids, name="user_id"))
    signals = behaviour_signals(events, vectors)
    if population is not None and len(population):
        risk = risk_scores(replace_rows(population, signals)).reindex(signals.index)
    else:
        risk = risk_scores(signals)
    profiles = assemble(described, outputs, windows.user_ids, top=settings.top_interests, risk=risk,
                        model_version=model_version)
    return ProfileBatch(windows.user_ids, described, outputs, signals, risk, profiles)

"""Risk control: click-farming and fake-review signals from behaviour, scored against the merchant's own users."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared_model.data.schema import Behavior

# signal -> (how to say it, the smallest value that is unusual in itself, weight of its evidence).
# Night activity and an odd profile only support other signals: many genuine customers shop at night.
SIGNALS = {
    "burst": ("{v:.0f} events within one minute", 10, 1.0),
    "fast_gaps": ("{v:.0%} of consecutive events under 10 seconds apart", 0.3, 1.0),
    "item_concentration": ("{v:.1f} events per distinct item", 4, 1.0),
    "repeat_purchases": ("bought the same item {v:.0f} times", 3, 1.0),
    "fast_reviews": ("{v:.0f} reviews within 10 minutes of buying", 2, 1.0),
    "night_share": ("{v:.0%} of events between 00:00 and 05:00", 0.6, 0.25),
    "profile_outlier": ("profile vector {v:.1f} standard deviations from the merchant's customers", 4, 0.5),
}


@dataclass(frozen=True)
class RiskSettings:
    z_mention: float = 3.0  # a signal is given as a reason above this robust z-score (and its floor above)
    z_scale: float = 4.0  # robust z-units per unit of score evidence


def behaviour_signals(events: pd.DataFrame, vectors: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-user risk signals (index user_id) from cleaned, time-sorted events; `vectors` (index user_id,
    one column per dimension) adds how far each profile vector sits from the others."""
    users = events["user_id"].to_numpy(dtype=object)
    ts = events["timestamp"].to_numpy(dtype=np.int64)
    behavior = events["behavior"].to_numpy()
    same_user = np.r_[False, users[1:] == users[:-1]]
    gaps = np.where(same_user, np.diff(ts, prepend=ts[:1]), np.nan)
    frame = pd.DataFrame({"user_id": users, "ts": ts, "item": events["item_id"].to_numpy(dtype=object),
                          "behavior": behavior, "fast": gaps <= 10, "has_gap": same_user,
                          "night": (ts // 3600) % 24 < 5})
    grouped = frame.groupby("user_id", sort=False)
    out = pd.DataFrame(index=pd.Index(grouped.size().index, name="user_id"))
    out["burst"] = _max_in_window(users, ts, 60).groupby(users).max().reindex(out.index)
    out["fast_gaps"] = (frame["fast"] & frame["has_gap"]).groupby(users).sum() / frame["has_gap"].groupby(users).sum().clip(lower=1)
    out["item_concentration"] = grouped.size() / grouped["item"].nunique()
    buys = frame[frame["behavior"] == int(Behavior.PURCHASE)]
    out["repeat_purchases"] = (buys.groupby(["user_id", "item"]).size().groupby("user_id").max()
                               .reindex(out.index).fillna(0))
    out["fast_reviews"] = _fast_reviews(frame).reindex(out.index).fillna(0)
    out["night_share"] = grouped["night"].mean()
    if vectors is not None and len(vectors):
        v = vectors.reindex(out.index).to_numpy(dtype=np.float64)
        centre, spread = np.nanmedian(v, axis=0), np.nanstd(v, axis=0) + 1e-6
        out["profile_outlier"] = np.sqrt(np.nanmean(((v - centre) / spread) ** 2, axis=1))
    return out.astype(np.float64)


def replace_rows(population: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    """`population` with the users in `fresh` replaced by (or extended with) their fresh rows."""
    return pd.concat([population[~population.index.isin(fresh.index)], fresh])


def _max_in_window(users: np.ndarray, ts: np.ndarray, seconds: int) -> pd.Series:
    """For each event, how many of the same user's events fall in the `seconds` up to and including it."""
    # key = (user rank, time) so one searchsorted covers every user at once
    codes = pd.factorize(users)[0].astype(np.int64)
    key = codes * (1 << 40) + (ts - ts.min() if len(ts) else ts)
    left = np.searchsorted(key, key - seconds, side="left")
    return pd.Series(np.arange(len(key)) - left + 1)


def _fast_reviews(frame: pd.DataFrame) -> pd.Series:
    buys = frame.loc[frame["behavior"] == int(Behavior.PURCHASE), ["user_id", "item", "ts"]]
    reviews = frame.loc[frame["behavior"] == int(Behavior.REVIEW), ["user_id", "item", "ts"]]
    if buys.empty or reviews.empty:
        return pd.Series(dtype=np.float64)
    pairs = reviews.merge(buys, on=["user_id", "item"], suffixes=("_review", "_buy"))
    delay = pairs["ts_review"] - pairs["ts_buy"]
    fast = pairs[(delay >= 0) & (delay <= 600)].drop_duplicates(["user_id", "item", "ts_review"])
    return fast.groupby("user_id").size().astype(np.float64)


def risk_scores(signals: pd.DataFrame, settings: RiskSettings = RiskSettings()) -> pd.DataFrame:
    """Score in [0, 1) and readable reasons per user. Each signal is a robust z-score against the merchant's
    own customers (median, MAD); a signal gives evidence only where it is also unusual in itself (its floor),
    in proportion to how far above 2 z it is, times its weight; evidence adds up, so several moderate signals
    or one extreme one score high, and a score never comes without a reason above 2 z."""
    z = pd.DataFrame(index=signals.index)
    evidence = pd.Series(0.0, index=signals.index)
    for name in signals.columns:
        _, floor, weight = SIGNALS[name]
        x = signals[name].to_numpy(dtype=np.float64)
        median = np.nanmedian(x) if len(x) else 0.0
        mad = np.nanmedian(np.abs(x - median)) * 1.4826 if len(x) else 0.0
        scale = max(mad, np.nanstd(x) * 0.1, 1e-6)
        z[name] = np.nan_to_num((x - median) / scale)
        unusual = np.nan_to_num(x) >= floor
        evidence += weight * unusual * (z[name].clip(lower=2.0) - 2.0) / settings.z_scale
    score = 1.0 - np.exp(-evidence)
    reasons = []
    for user in signals.index:
        row, zr = signals.loc[user], z.loc[user]
        said = [(zr[n], SIGNALS[n][0].format(v=row[n])) for n in signals.columns
                if zr[n] > settings.z_mention and row[n] >= SIGNALS[n][1]]
        reasons.append([text for _, text in sorted(said, reverse=True)])
    return pd.DataFrame({"score": score.to_numpy(), "reasons": reasons}, index=signals.index)

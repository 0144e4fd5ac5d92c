"""Synthetic merchants: realistic e-commerce logs with planted ground truth (the built-in default data set)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared_model.data.eventlog import EventLog, finalize
from shared_model.data.schema import Behavior
from shared_model.data.validation import FileSummary, Quarantine

SEGMENTS = ("high_value", "potential", "regular", "at_risk", "new")
SEGMENT_SHARE = (0.10, 0.20, 0.35, 0.20, 0.15)
# activity, purchase, cart/fav multipliers, price tier (0 low .. 2 high), active window (fraction of the period)
SEGMENT_TRAITS = {
    "high_value": dict(activity=1.4, buy=2.6, engage=1.2, price=2, window=(0.0, 1.0)),
    "potential": dict(activity=1.3, buy=0.5, engage=1.8, price=1, window=(0.0, 1.0)),
    "regular": dict(activity=1.0, buy=0.9, engage=0.9, price=1, window=(0.0, 1.0)),
    "at_risk": dict(activity=0.8, buy=0.9, engage=0.8, price=1, window=(0.0, 0.35)),
    "new": dict(activity=0.45, buy=0.6, engage=0.9, price=0, window=(0.8, 1.0)),
}
REGIONS = ("north", "south", "east", "west", "central", "northeast", "southwest", "northwest")


@dataclass(frozen=True)
class SyntheticConfig:
    merchants: int = 4
    users_per_merchant: int = 500
    categories: int = 40
    items_per_merchant: int = 3000
    brands_per_category: int = 8
    bot_share: float = 0.03
    days: int = 9
    start_timestamp: int = 1_511_568_000  # 2017-11-25 00:00 UTC, like the Taobao sample
    median_events: float = 71.0  # gives a median of about 75 events per user (Taobao sample: 75)
    events_sigma: float = 0.85  # log-normal spread; Taobao p10/p90 = 19/223
    visit_views: float = 2.5  # a visit is 2 + Poisson(2.5) views (Taobao: 15 visits of 6 events, 30-minute gaps)
    category_stay: float = 0.4  # chance the next view in a visit stays in the category: Taobao runs are 1.6 events
    core_interests: int = 3  # each customer's planted interests: this many core categories ...
    core_share: float = 0.8  # ... taking this share of their browsing, the rest spread like the shop's customers
    core_concentration: float = 4.0  # Dirichlet concentration of the weights among the core categories
    view_to_cart: float = 0.052
    view_to_fav: float = 0.026
    view_to_buy: float = 0.015
    buy_to_review: float = 0.1
    seed: int = 0


@dataclass
class SyntheticMerchant:
    name: str
    events: pd.DataFrame  # schema columns
    users: pd.DataFrame  # user_id, gender, age, region
    truth: dict  # per-user planted interests, segment, bot kind, price tier, peak hour
    items: pd.DataFrame | None = None  # the whole catalogue: item_id, category_id, brand, price, in_stock


def generate(config: SyntheticConfig = SyntheticConfig()) -> list[SyntheticMerchant]:
    """Generate `config.merchants` non-IID merchants sharing one category taxonomy and brand set."""
    rng = np.random.default_rng(config.seed)
    C = config.categories
    gender_skew = rng.normal(0, 1.0, C)  # >0: favoured by women
    age_skew = rng.normal(0, 1.0, C)  # >0: favoured by older customers
    base_price = np.exp(rng.uniform(np.log(5), np.log(300), C))
    brand_tier = rng.uniform(0.5, 2.0, (C, config.brands_per_category))
    merchants = []
    for m in range(config.merchants):
        focus = 0.8 * rng.dirichlet(np.full(C, 0.3)) + 0.2 / C  # each shop has its own category focus
        merchants.append(_merchant(m, focus, gender_skew, age_skew, base_price, brand_tier, config, rng))
    return merchants


def _merchant(m, focus, gender_skew, age_skew, base_price, brand_tier, cfg: SyntheticConfig, rng) -> SyntheticMerchant:
    C, n_items = cfg.categories, cfg.items_per_merchant
    name = f"merchant-{m}"
    # catalogue: categories follow the shop's focus, brands nest in categories, prices by category x brand
    item_cat = rng.choice(C, size=n_items, p=focus)
    item_brand = rng.integers(0, cfg.brands_per_category, n_items)
    item_price = np.round(
        base_price[item_cat] * brand_tier[item_cat, item_brand] * np.exp(rng.normal(0, 0.3, n_items)), 2
    )
    item_ids = np.array([f"m{m}-i{j}" for j in range(n_items)], dtype=object)
    by_cat = [np.flatnonzero(item_cat == c) for c in range(C)]
    # power-law popularity inside each category (Zipf over a random order)
    pop = [(1.0 / np.arange(1, len(ix) + 1) ** 1.1)[rng.permutation(len(ix))] for ix in by_cat]
    pop = [p / p.sum() if len(p) else p for p in pop]

    U = cfg.users_per_merchant
    gender = rng.choice(np.array(["F", "M"]), U)
    age = np.clip(rng.normal(36, 12, U), 16, 75).round()
    region = rng.choice(np.array(REGIONS), U)
    segment = rng.choice(np.array(SEGMENTS), U, p=SEGMENT_SHARE)
    bots = rng.random(U) < cfg.bot_share
    bot_kind = np.where(rng.random(U) < 2 / 3, "click_farm", "fake_reviewer")
    peak_hour = np.where(rng.random(U) < 0.7, rng.normal(13, 2.5, U), rng.normal(3, 2.5, U)) % 24  # UTC

    stocked = np.array([len(ix) > 0 for ix in by_cat], dtype=np.float64)
    rows, truth = [], {}
    for u in range(U):
        user_id = f"m{m}-u{u}"
        g = 1.0 if gender[u] == "F" else -1.0
        z = (age[u] - 36) / 12
        prior = np.exp(0.9 * g * gender_skew + 0.7 * z * age_skew) * focus * stocked
        prior = prior / prior.sum()
        core = rng.choice(len(prior), size=cfg.core_interests, replace=False, p=prior)
        theta = (1.0 - cfg.core_share) * prior
        theta[core] += cfg.core_share * rng.dirichlet(np.full(cfg.core_interests, cfg.core_concentration))
        traits = SEGMENT_TRAITS[segment[u]]
        entry = {
            "merchant": name,
            "segment": str(segment[u]),
            "bot": str(bot_kind[u]) if bots[u] else None,
            "interests": {f"c{c}": round(float(theta[c]), 4) for c in np.argsort(-theta)[:5]},
            "price_tier": traits["price"],
            "peak_hour": round(float(peak_hour[u]), 2),
            "gender": str(gender[u]),
            "age": float(age[u]),
        }
        truth[user_id] = entry
        if bots[u]:
            rows.append(_bot_events(user_id, bot_kind[u], item_ids, item_cat, item_price, cfg, rng))
        else:
            rows.append(_user_events(user_id, theta, traits, peak_hour[u], by_cat, pop, item_ids, item_cat,
                                     item_price, cfg, rng))
    events = pd.concat(rows, ignore_index=True)
    events["brand"] = events["brand"].astype(str)
    users = pd.DataFrame({"user_id": [f"m{m}-u{u}" for u in range(U)], "gender": gender, "age": age, "region": region})
    stock = np.random.default_rng(cfg.seed + 7919 * (m + 1)).random(n_items) < 0.95  # own stream: events unchanged
    items = pd.DataFrame({"item_id": item_ids, "category_id": np.char.add("c", item_cat.astype(str)),
                          "brand": np.char.add(np.char.add("b", item_cat.astype(str)), "-x"), "price": item_price,
                          "in_stock": stock})
    return SyntheticMerchant(name, events, users, {"users": truth, "focus": {f"c{c}": round(float(focus[c]), 4)
                                                                            for c in np.argsort(-focus)[:5]}}, items)


def _user_events(user_id, theta, traits, peak, by_cat, pop, item_ids, item_cat, item_price, cfg, rng):
    n_target = max(4, int(rng.lognormal(np.log(cfg.median_events * traits["activity"]), cfg.events_sigma)))
    lo, hi = traits["window"]
    period = cfg.days * 86_400
    visits = 2 + rng.poisson(cfg.visit_views, size=n_target)  # more than enough; cut at n_target views
    visits = visits[: int(np.searchsorted(np.cumsum(visits), n_target)) + 1]
    visits[-1] -= visits.sum() - n_target
    visits = visits[visits > 0]
    n = int(visits.sum())
    first = np.zeros(n, dtype=bool)
    first[np.r_[0, np.cumsum(visits)[:-1]]] = True
    # within a visit the customer wanders between categories: each view stays in the last one's category
    # with probability category_stay, else draws a category from the interest mixture again
    run = np.cumsum(first | (rng.random(n) >= cfg.category_stay)) - 1
    category = rng.choice(len(theta), size=int(run[-1]) + 1, p=theta)[run]
    item = np.empty(n, dtype=np.int64)
    for c in np.unique(category):
        at = np.flatnonzero(category == c)
        ix = by_cat[c]
        # price preference: high-tier users favour expensive items in the category
        weights = pop[c] * (item_price[ix] / item_price[ix].mean()) ** (traits["price"] - 1)
        item[at] = rng.choice(ix, size=len(at), p=weights / weights.sum())
    day = rng.uniform(lo, hi, len(visits)) * period // 86_400
    hour = rng.normal(peak, 2.5, len(visits)) % 24
    start = cfg.start_timestamp + day * 86_400 + hour * 3600
    gaps = rng.exponential(50, n)
    gaps[first] = 0.0
    visit = np.cumsum(first) - 1
    t = (start[visit] + np.cumsum(gaps) - np.cumsum(gaps)[first][visit]).astype(np.int64)
    beh = [np.full(n, Behavior.VIEW)]
    it, ts = [item], [t]
    for kind, p in (
        (Behavior.CART, cfg.view_to_cart * traits["engage"]),
        (Behavior.FAV, cfg.view_to_fav * traits["engage"]),
        (Behavior.PURCHASE, cfg.view_to_buy * traits["buy"]),
    ):
        hit = rng.random(n) < p
        it.append(item[hit])
        ts.append(t[hit] + rng.integers(5, 600, hit.sum()))
        beh.append(np.full(hit.sum(), kind))
        if kind == Behavior.PURCHASE:
            rev = rng.random(hit.sum()) < cfg.buy_to_review
            when = t[hit][rev] + rng.integers(86_400, 3 * 86_400, rev.sum())
            logged = when < cfg.start_timestamp + period  # a review after the export is not in the log
            it.append(item[hit][rev][logged])
            ts.append(when[logged])
            beh.append(np.full(int(logged.sum()), Behavior.REVIEW))
    return _frame(user_id, np.concatenate(it), np.concatenate(beh), np.concatenate(ts), item_ids, item_cat, item_price,
                  cfg)


def _bot_events(user_id, kind, item_ids, item_cat, item_price, cfg, rng):
    targets = rng.choice(len(item_ids), size=rng.integers(2, 5), replace=False)
    it, beh, ts = [], [], []
    for _ in range(rng.integers(1, 4)):
        t0 = cfg.start_timestamp + rng.integers(0, cfg.days) * 86_400 + rng.integers(1, 5) * 3600  # small hours
        size = int(rng.integers(30, 120))
        items = rng.choice(targets, size=size)
        times = t0 + np.cumsum(rng.integers(1, 8, size))  # seconds apart: a burst
        if kind == "click_farm":
            b = rng.choice([Behavior.VIEW, Behavior.CART, Behavior.FAV, Behavior.PURCHASE], size=size, p=[0.6, 0.15, 0.1, 0.15])
        else:
            b = np.where(np.arange(size) % 2 == 0, Behavior.PURCHASE, Behavior.REVIEW)
        it.append(items)
        beh.append(b)
        ts.append(times)
    return _frame(user_id, np.concatenate(it), np.concatenate(beh), np.concatenate(ts), item_ids, item_cat, item_price,
                  cfg)


def _frame(user_id, item, beh, ts, item_ids, item_cat, item_price, cfg) -> pd.DataFrame:
    order = np.argsort(ts, kind="stable")
    item, beh, ts = item[order], beh[order], ts[order]
    return pd.DataFrame(
        {
            "user_id": user_id,
            "item_id": item_ids[item],
            "category_id": np.char.add("c", item_cat[item].astype(str)),
            "behavior": np.asarray(beh, dtype=np.int8),
            "timestamp": np.asarray(ts, dtype=np.int64),
            "price": item_price[item],
            "brand": np.char.add(np.char.add("b", item_cat[item].astype(str)), "-x"),
        }
    )


BEHAVIOR_NAMES = {int(b): b.name.lower() for b in Behavior}


def write(merchants: list[SyntheticMerchant], out: str | Path, config: SyntheticConfig | None = None) -> Path:
    """One folder per merchant: events.csv (schema columns, named behaviours), users.csv, truth.json, and
    items.csv (the catalogue with stock)."""
    out = Path(out)
    for merchant in merchants:
        folder = out / merchant.name
        folder.mkdir(parents=True, exist_ok=True)
        merchant.events.assign(behavior=merchant.events["behavior"].map(BEHAVIOR_NAMES)).to_csv(
            folder / "events.csv", index=False
        )
        merchant.users.to_csv(folder / "users.csv", index=False)
        if merchant.items is not None:
            merchant.items.to_csv(folder / "items.csv", index=False)
        (folder / "truth.json").write_text(json.dumps(merchant.truth))
    if config is not None:
        (out / "config.json").write_text(json.dumps(asdict(config)))
    return out


def merge_merchants(merchants: list[SyntheticMerchant], *, quarantine_path=None) -> EventLog:
    """All merchants' events in one log (for a centralized baseline); the truth keeps each user's merchant."""
    chunks, summaries = [], []
    for index, merchant in enumerate(merchants):
        events = merchant.events
        chunks.append(events.assign(_file=index, _row=np.arange(1, len(events) + 1),
                                    _raw=pd.util.hash_pandas_object(events, index=False).to_numpy()))
        summaries.append(FileSummary(f"builtin:{merchant.name}", rows_read=len(events)))
    users = pd.concat([m.users for m in merchants], ignore_index=True)
    log = finalize(chunks, summaries, users, [], Quarantine(quarantine_path), source="builtin")
    log.truth = _merge_truth([m.truth for m in merchants])
    if all(m.items is not None for m in merchants):
        log.items = pd.concat([m.items for m in merchants], ignore_index=True)
    return log


def _merge_truth(truths) -> dict | None:
    truths = [t for t in truths if t]
    if not truths:
        return None
    return {"users": {u: v for t in truths for u, v in t["users"].items()}}

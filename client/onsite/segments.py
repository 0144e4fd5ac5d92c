"""Customer segments (lifecycle stages, then latent value classes) with readable summaries, and audiences."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import logsumexp
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

PSEUDO_EVENTS = 20.0  # rates of light users are pulled toward the merchant's mean as if by 20 average events


def value_features(described: pd.DataFrame) -> pd.DataFrame:
    """Scale-free value columns per user (rows as `described`): how often a customer buys and engages
    (log rates, shrunk toward the merchant's mean so a handful of events does not look extreme), the price
    level, and recency and tenure as shares of the merchant's window."""
    events = described["events"].to_numpy(dtype=np.float64)
    purchases = described["purchases"].to_numpy(dtype=np.float64)
    engagements = described["engagements"].to_numpy(dtype=np.float64)
    buy_mean = purchases.sum() / max(events.sum(), 1.0)
    engage_mean = engagements.sum() / max(events.sum(), 1.0)
    window = max(float(described["tenure_days"].max()), 1e-9)
    return pd.DataFrame({
        "buy_rate": np.log((purchases + PSEUDO_EVENTS * buy_mean + 1e-6) / (events + PSEUDO_EVENTS)),
        "engage_rate": np.log((engagements + PSEUDO_EVENTS * engage_mean + 1e-6) / (events + PSEUDO_EVENTS)),
        "price_percentile": described["price_percentile"].fillna(0.5).to_numpy(dtype=np.float64),
        "recency": described["recency_days"].to_numpy(dtype=np.float64) / window,
        "tenure": described["tenure_days"].to_numpy(dtype=np.float64) / window,
    }, index=described.index)


@dataclass
class ValueClasses:
    """A latent-class model of customers' value (fitted by EM): each class has its own purchase and cart/fav
    rates per event (Poisson counts given the customer's events), log number of events (Gaussian) and lifetime
    price percentile (Gaussian whose variance shrinks with the customer's events, as an average of item prices does),
    and optionally the profile vectors' principal components (Gaussian, their log-likelihood scaled by a weight)."""

    weight: np.ndarray  # (k,) class shares
    buy_rate: np.ndarray  # (k,) purchases per event
    engage_rate: np.ndarray  # (k,) carts and favourites per event
    events_mean: np.ndarray  # (k,) mean log events
    events_var: np.ndarray  # (k,) one spread shared by every class (fewer parameters: steadier on a few hundred customers)
    price_mean: np.ndarray  # (k,) mean price percentile (events-weighted)
    price_var: np.ndarray  # (k,) variance of one event's price percentile (shared): a customer's is this / events
    vector_mean: np.ndarray  # (k, P)
    vector_var: np.ndarray  # (k, P)
    vector_weight: float

    @staticmethod
    def columns(described: pd.DataFrame) -> tuple[np.ndarray, ...]:
        events = np.maximum(described["events"].to_numpy(dtype=np.float64), 1.0)
        return (events, described["purchases"].to_numpy(dtype=np.float64),
                described["engagements"].to_numpy(dtype=np.float64),
                described.get("lifetime_price_percentile", described["price_percentile"]).fillna(0.5)
                .to_numpy(dtype=np.float64))

    def log_likelihood(self, described: pd.DataFrame, components: np.ndarray) -> np.ndarray:
        """(U, k) log P(customer, class)."""
        n, buys, engaged, price = self.columns(described)
        log_n = np.log(n)[:, None]
        price_var = self.price_var[None, :] / n[:, None]  # (U, k)
        ll = (np.log(self.weight)[None, :]
              + buys[:, None] * np.log(self.buy_rate)[None, :] - n[:, None] * self.buy_rate[None, :]
              + engaged[:, None] * np.log(self.engage_rate)[None, :] - n[:, None] * self.engage_rate[None, :]
              - 0.5 * ((log_n - self.events_mean) ** 2 / self.events_var + np.log(self.events_var))
              - 0.5 * ((price[:, None] - self.price_mean) ** 2 / price_var + np.log(price_var)))
        if components.shape[1] and self.vector_weight > 0:
            diff = components[:, None, :] - self.vector_mean[None]  # (U, k, P)
            ll = ll - 0.5 * self.vector_weight * (diff ** 2 / self.vector_var[None] + np.log(self.vector_var[None])).sum(-1)
        return ll

    @classmethod
    def fit(cls, described: pd.DataFrame, components: np.ndarray, start: np.ndarray, *, k: int, vector_weight: float,
            iterations: int = 500, tolerance: float = 1e-7) -> tuple["ValueClasses", np.ndarray]:
        """EM from the hard assignment `start` (U,) in 0..k-1; returns the model and each customer's class."""
        n, buys, engaged, price = cls.columns(described)
        log_n = np.log(n)
        resp = np.eye(k)[start]  # (U, k)
        model = None
        for _ in range(iterations):
            mass = resp.sum(axis=0) + 1e-9  # (k,)
            exposure = resp.T @ n + 1e-9
            events_mean = resp.T @ log_n / mass
            price_mean = resp.T @ (price * n) / exposure
            vector_mean = resp.T @ components / mass[:, None]
            model = cls(
                weight=mass / mass.sum(),
                buy_rate=resp.T @ buys / exposure + 1e-9,
                engage_rate=resp.T @ engaged / exposure + 1e-9,
                events_mean=events_mean,
                events_var=np.full(k, (resp * (log_n[:, None] - events_mean) ** 2).sum() / mass.sum() + 1e-4),
                price_mean=price_mean,
                price_var=np.full(k, (resp * n[:, None] * (price[:, None] - price_mean) ** 2).sum() / mass.sum() + 1e-6),
                vector_mean=vector_mean,
                vector_var=(resp.T @ components ** 2) / mass[:, None] - vector_mean ** 2 + 1e-4,
                vector_weight=vector_weight,
            )
            ll = model.log_likelihood(described, components)
            new = np.exp(ll - logsumexp(ll, axis=1, keepdims=True))
            converged = np.abs(new - resp).max() < tolerance
            resp = new
            if converged:
                break
        return model, resp.argmax(axis=1)


@dataclass
class LifecycleStages:
    """Stages of a customer's life with the merchant, each an activity window [start, end] (shares of the
    merchant's window): a customer's events are taken as spread evenly over their stage's window, so n events
    between first and last seen are likelier under a narrow window that holds them (density (end - start)^-n)
    and impossible under one that does not. Fitted by hard EM from a k-means start on recency and tenure."""

    window_days: float  # the merchant's window at fitting: recency and tenure are shares of it
    share: np.ndarray  # (S,) stage shares
    start: np.ndarray  # (S,) window start per stage
    end: np.ndarray  # (S,)

    SLACK = 0.02  # a customer may spill this far outside a stage's window
    QUANTILE = 0.05  # window edges: this quantile of the members' first seen, 1 - it of their last seen

    @staticmethod
    def seen(described: pd.DataFrame, window_days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First and last seen as shares of the window (0 its start, 1 now), and the number of events."""
        first = 1.0 - described["tenure_days"].to_numpy(dtype=np.float64) / window_days
        last = 1.0 - described["recency_days"].to_numpy(dtype=np.float64) / window_days
        return first, last, np.maximum(described["events"].to_numpy(dtype=np.float64), 1.0)

    def log_likelihood(self, described: pd.DataFrame) -> np.ndarray:
        first, last, n = self.seen(described, self.window_days)
        width = np.maximum(self.end - self.start, 1e-3)
        outside = (np.maximum(self.start[None, :] - self.SLACK - first[:, None], 0.0)
                   + np.maximum(last[:, None] - self.end[None, :] - self.SLACK, 0.0))  # (U, S)
        # outside a window is all but impossible, yet ranked by how far, so everyone lands somewhere
        return np.log(self.share)[None, :] - n[:, None] * np.log(width)[None, :] - 1e4 * outside

    def assign(self, described: pd.DataFrame) -> np.ndarray:
        return self.log_likelihood(described).argmax(axis=1)

    @property
    def active(self) -> int:
        """The stage of customers active throughout: the widest window."""
        return int(np.argmax(self.end - self.start))

    @classmethod
    def fit(cls, described: pd.DataFrame, *, stages: int = 3, seed: int = 0, iterations: int = 50) -> "LifecycleStages":
        window_days = max(float(described["tenure_days"].max()), 1e-9)
        first, last, _ = cls.seen(described, window_days)
        life = np.column_stack([first, last])
        labels = KMeans(n_clusters=stages, n_init=10, random_state=seed).fit_predict(
            (life - life.mean(axis=0)) / (life.std(axis=0) + 1e-9))
        for _ in range(iterations):
            present = [s for s in range(stages) if (labels == s).any()]
            model = cls(window_days,
                        share=np.array([np.mean(labels == s) for s in present]),
                        start=np.array([np.quantile(first[labels == s], cls.QUANTILE) for s in present]),
                        end=np.array([np.quantile(last[labels == s], 1.0 - cls.QUANTILE) for s in present]))
            new = model.assign(described)
            if len(present) == stages and np.array_equal(new, labels):
                break
            labels = new
        return model


@dataclass
class Segmenter:
    """Fitted segment model. Customers are first split into lifecycle stages (`LifecycleStages`, 3: typically
    new, active and lapsing), then the stage active throughout is split into `k - 2` value classes
    (`ValueClasses`). Segment ids: the other stages first, then the value classes."""

    stages: LifecycleStages
    pca: PCA | None
    classes: ValueClasses

    def components(self, vectors: np.ndarray) -> np.ndarray:
        if self.pca is None:
            return np.zeros((len(vectors), 0))
        return self.pca.transform(vectors) / np.sqrt(self.pca.explained_variance_[None, :])  # (U, P) unit variance

    def assign(self, described: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
        stage = self.stages.assign(described)
        others = [s for s in range(len(self.stages.share)) if s != self.stages.active]
        labels = np.searchsorted(others, stage)  # the other stages: 0, 1
        active = stage == self.stages.active
        if active.any():
            ll = self.classes.log_likelihood(described[active], self.components(vectors[active]))
            labels[active] = len(others) + ll.argmax(axis=1)
        return labels


def fit_segments(described: pd.DataFrame, vectors: np.ndarray, *, k: int = 5, vector_weight: float = 0.1,
                 components: int = 8, seed: int = 0, fit_on: np.ndarray | None = None) -> tuple[Segmenter, np.ndarray]:
    """Fit `k` segments on the users where `fit_on` is true (default all; the engine leaves out suspected bots,
    whose extreme behaviour would otherwise take a segment of its own) and assign every user to one. With k < 3
    there are no lifecycle stages: all k segments are value classes."""
    if k < 1:
        raise ValueError(f"k = {k}: there must be at least one segment")
    if fit_on is not None and fit_on.sum() >= k:
        segmenter, _ = fit_segments(described[fit_on], vectors[fit_on], k=k, vector_weight=vector_weight,
                                    components=components, seed=seed)
        return segmenter, segmenter.assign(described, vectors)
    if len(described) < k:
        raise ValueError(f"{len(described)} users cannot make {k} segments; lower k")
    stages = LifecycleStages.fit(described, stages=3 if k >= 3 else 1, seed=seed)
    active = stages.assign(described) == stages.active
    pca = None
    if vector_weight > 0:
        pca = PCA(n_components=min(components, vectors.shape[1], int(active.sum())), random_state=seed).fit(vectors[active])
    segmenter = Segmenter(stages, pca, classes=None)
    in_stage = described[active]
    # a small shop may have fewer active customers than value classes asked for: then fewer classes
    k_value = min(k - (len(stages.share) - 1), len(in_stage))
    # start EM from k-means over the standardised rates and price level
    start_space = value_features(in_stage)[["buy_rate", "engage_rate", "price_percentile"]].to_numpy()
    start_space = (start_space - start_space.mean(axis=0)) / (start_space.std(axis=0) + 1e-9)
    start = KMeans(n_clusters=k_value, n_init=10, random_state=seed).fit_predict(start_space)
    segmenter.classes, _ = ValueClasses.fit(in_stage, segmenter.components(vectors[active]), start, k=k_value,
                                            vector_weight=vector_weight)
    return segmenter, segmenter.assign(described, vectors)


def summarize_segments(described: pd.DataFrame, labels: np.ndarray, propensity: np.ndarray | None = None,
                       *, top: int = 3) -> list[dict]:
    """One readable row per segment: size, share, top interests, spend, purchases, value mix, and a name."""
    rows = []
    total = len(labels)
    overall = Counter()
    for items in described["interests"]:
        for category, weight in items:
            overall[category] += weight
    overall_sum = sum(overall.values()) or 1.0
    overall_mix = described["value_segment"].value_counts(normalize=True)
    for segment in range(int(labels.max()) + 1 if total else 0):
        members = described[labels == segment]
        interests = Counter()
        for items in members["interests"]:
            for category, weight in items:
                interests[category] += weight
        # what sets the segment apart: share x log(share / the merchant's share), so a category every
        # customer likes does not name every segment
        own_sum = sum(interests.values()) or 1.0
        distinctive = Counter({c: (w / own_sum) * np.log((w / own_sum) / (overall[c] / overall_sum))
                               for c, w in interests.items()})
        mix = members["value_segment"].value_counts(normalize=True)
        row = {
            "segment": segment,
            "size": int(len(members)),
            "share": round(len(members) / max(total, 1), 4),
            "top_interests": [c for c, _ in interests.most_common(top)],
            "distinctive_interests": [c for c, v in distinctive.most_common(top) if v > 0],
            "mean_monetary": round(float(members["monetary"].mean()), 2) if len(members) else 0.0,
            "mean_purchases": round(float(members["purchases"].mean()), 2) if len(members) else 0.0,
            "mean_recency_days": round(float(members["recency_days"].mean()), 2) if len(members) else 0.0,
            "value_mix": {k: round(float(v), 3) for k, v in mix.items()},
        }
        if propensity is not None:
            row["mean_propensity"] = round(float(np.mean(propensity[labels == segment])), 4) if len(members) else 0.0
        # named, like its interests, by the value segment it holds more of than the merchant does (share x log
        # lift), so a segment half high-value and half regular customers is not called regular
        main = max(mix.index, key=lambda v: (mix[v] * np.log(mix[v] / overall_mix[v]), mix[v])) if len(mix) else "empty"
        row["name"] = f"{main.replace('_', ' ')}: " + ", ".join(row["distinctive_interests"] or row["top_interests"])
        rows.append(row)
    return rows


def audience(user_ids: np.ndarray, propensity: np.ndarray, next_categories: np.ndarray, categories: np.ndarray,
             observed: list[list[tuple[str, float]]], category: str, n: int) -> list[tuple[str, float]]:
    """The `n` users most likely to buy in `category` soon: P(purchase soon) x P(category), the category
    probability being the mean of the model's next-category distribution and the user's observed interest share."""
    where = np.flatnonzero(categories.astype(str) == str(category))
    if len(where) == 0:
        raise KeyError(f"category {category!r} is not in this merchant's catalogue")
    model_p = next_categories[:, where[0]]
    seen = np.array([dict(items).get(str(category), 0.0) for items in observed])
    score = propensity * 0.5 * (model_p + seen)
    order = np.argsort(-score, kind="stable")[:n]
    return [(str(user_ids[i]), round(float(score[i]), 6)) for i in order]

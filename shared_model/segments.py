"""Customer segments (k-means over profile vectors and value features) with readable summaries, and audiences."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
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
class Segmenter:
    """Fitted segment space: standardised value features beside the top principal components of the profile
    vectors, scaled so the vectors weigh `vector_weight` of the total; k-means centroids in that space."""

    mean: np.ndarray
    scale: np.ndarray
    pca: PCA | None
    vector_weight: float
    kmeans: KMeans

    def space(self, described: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
        values = (value_features(described).to_numpy() - self.mean) / self.scale  # (U, F)
        parts = [values * (1.0 - self.vector_weight)]
        if self.pca is not None:
            comp = self.pca.transform(vectors) / np.sqrt(self.pca.explained_variance_[None, :])  # (U, P) unit variance
            # equal total variance per block before weighting, so the weight means what it says
            parts.append(comp * self.vector_weight * np.sqrt(values.shape[1] / comp.shape[1]))
        return np.concatenate(parts, axis=1)

    def assign(self, described: pd.DataFrame, vectors: np.ndarray) -> np.ndarray:
        return self.kmeans.predict(self.space(described, vectors))


def fit_segments(described: pd.DataFrame, vectors: np.ndarray, *, k: int = 5, vector_weight: float = 0.3,
                 components: int = 8, seed: int = 0, fit_on: np.ndarray | None = None) -> tuple[Segmenter, np.ndarray]:
    """Fit `k` segments on the users where `fit_on` is true (default all; the engine leaves out suspected bots,
    whose extreme behaviour would otherwise take a segment of its own) and assign every user to one."""
    if fit_on is not None and fit_on.sum() >= k:
        segmenter, _ = fit_segments(described[fit_on], vectors[fit_on], k=k, vector_weight=vector_weight,
                                    components=components, seed=seed)
        return segmenter, segmenter.assign(described, vectors)
    if len(described) < k:
        raise ValueError(f"{len(described)} users cannot make {k} segments; lower k")
    values = value_features(described).to_numpy()
    mean, scale = values.mean(axis=0), values.std(axis=0) + 1e-9
    pca = None
    if vector_weight > 0:
        pca = PCA(n_components=min(components, vectors.shape[1], len(vectors)), random_state=seed).fit(vectors)
    seg = Segmenter(mean, scale, pca, vector_weight, KMeans(n_clusters=k, n_init=10, random_state=seed))
    labels = seg.kmeans.fit_predict(seg.space(described, vectors))
    return seg, labels


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
        main = mix.index[0] if len(mix) else "empty"
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

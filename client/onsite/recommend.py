"""Recommendations and search re-ranking from a profile vector over a merchant's own catalogue, with reasons."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from shared_model.features import Catalogue

MIN_REASON_COUNT = 5  # an adjacency count shown as a reason covers at least this many occurrences


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    category: str
    price: float | None
    reasons: tuple[str, ...] = ()


class BatchedTopK:
    """Scores many users' profile vectors against a catalogue in one matrix product: requests that arrive
    while one batch is being scored form the next batch, so the item matrix is read once per batch instead of
    once per request (no added wait when the service is idle). One scorer thread per process, shared by every
    model version, so a model swap never strands a request."""

    _shared: "BatchedTopK | None" = None
    _lock = threading.Lock()

    def __init__(self, *, max_batch: int = 64):
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="topk-batcher", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> "BatchedTopK":
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def topk(self, matrix: torch.Tensor, vector: np.ndarray, k: int, timeout: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores) of the k rows of `matrix` (N, d) scoring highest against `vector`, best first."""
        done = Future()
        self._queue.put((matrix, np.asarray(vector, dtype=np.float32), k, done))
        return done.result(timeout=timeout)

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict[int, list] = {}
            for request in batch:  # normally one group: every request on the serving model's matrix
                groups.setdefault(id(request[0]), []).append(request)
            for group in groups.values():
                self._score(group)

    @staticmethod
    def _score(group: list) -> None:
        try:
            matrix = group[0][0]
            queries = torch.from_numpy(np.stack([v for _, v, _, _ in group]))  # (B, d)
            scores = queries @ matrix.T  # (B, N)
            widest = min(max(k for _, _, k, _ in group), scores.shape[1])
            top_scores, top_index = torch.topk(scores, widest, dim=1)  # (B, widest), best first
            for row, (_, _, k, done) in enumerate(group):
                done.set_result((top_index[row, :k].numpy(), top_scores[row, :k].numpy()))
        except Exception as exc:  # every waiting request hears about it
            for _, _, _, done in group:
                if not done.done():
                    done.set_exception(exc)


class ItemIndex:
    """The merchant's catalogue as the model scores it: one output vector per item, computed once per model."""

    def __init__(self, model, catalogue: Catalogue, *, device: torch.device | str = "cpu"):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            vectors = model.item_vectors(torch.arange(catalogue.num_items + 1, device=device)).float().cpu().numpy()
        model.train(was_training)
        self.vectors = np.ascontiguousarray(vectors)  # (N+1, k); row 0 is padding
        self.catalogue = catalogue
        self.categories = catalogue.categories.astype(str)
        self.prices = catalogue.prices.astype(np.float64)
        self.in_stock = np.ones(len(vectors), dtype=bool) if catalogue.in_stock is None else catalogue.in_stock.astype(bool)
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self._unit = self.vectors / np.maximum(norms, 1e-9)
        self._matrix = torch.from_numpy(self.vectors)
        self._batched: BatchedTopK | None = None

    def batched(self) -> "ItemIndex":
        """Serve unfiltered recommendations through the process's batching scorer (multi-threaded servers)."""
        self._batched = BatchedTopK.shared()
        return self

    def index_of(self, item_ids) -> np.ndarray:
        return self.catalogue.index_of(item_ids)

    def recommend(self, vector: np.ndarray, *, k: int = 10, exclude: np.ndarray | None = None,
                  category: str | None = None, min_price: float | None = None, max_price: float | None = None,
                  in_stock_only: bool = False, boost: tuple[np.ndarray, np.ndarray] | None = None) -> list[tuple[int, float]]:
        """Top-k (item index, score) by dot product with the profile vector plus `boost` ((item indices,
        scores) added to theirs: the on-site item-adjacency blend), after exclusions and filters."""
        filtered = category or min_price is not None or max_price is not None or in_stock_only or boost is not None
        if self._batched is not None and not filtered:
            excluded = set() if exclude is None else set(np.asarray(exclude, dtype=np.int64).tolist())
            index, top = self._batched.topk(self._matrix, vector, k + len(excluded) + 1)
            keep = [(int(i), float(v)) for i, v in zip(index, top) if i != 0 and int(i) not in excluded]
            return keep[:k]
        scores = self.vectors @ np.asarray(vector, dtype=np.float32)  # (N+1,)
        if boost is not None:
            scores[boost[0]] += boost[1]
        allowed = np.ones(len(scores), dtype=bool)
        allowed[0] = False
        if exclude is not None and len(exclude):
            allowed[np.asarray(exclude, dtype=np.int64)] = False
        if category:
            allowed &= self.categories == category
        if min_price is not None:
            allowed &= self.prices >= min_price
        if max_price is not None:
            allowed &= self.prices <= max_price
        if in_stock_only:
            allowed &= self.in_stock
        candidates = np.flatnonzero(allowed)
        if len(candidates) == 0:
            return []
        picked = candidates[np.argpartition(-scores[candidates], min(k, len(candidates)) - 1)[:k]] if len(candidates) > k else candidates
        picked = picked[np.argsort(-scores[picked], kind="stable")]
        return [(int(i), float(scores[i])) for i in picked]

    def rerank(self, vector: np.ndarray, candidates: np.ndarray,
               boost: tuple[np.ndarray, np.ndarray] | None = None) -> list[tuple[int, float]]:
        """The given item indices ordered by the profile (plus `boost`, as in `recommend`; a stable sort: ties
        keep the search engine's order)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        scores = self.vectors[candidates] @ np.asarray(vector, dtype=np.float32)
        if boost is not None:
            extra = dict(zip(boost[0].tolist(), boost[1].tolist()))
            scores = scores + np.array([extra.get(int(c), 0.0) for c in candidates], dtype=scores.dtype)
        order = np.argsort(-scores, kind="stable")
        return [(int(candidates[i]), float(scores[i])) for i in order]

    def explain(self, item: int, *, recent: np.ndarray, interests: list[tuple[str, float]],
                recent_names: dict[int, str] | None = None, next_to: dict[int, int] | None = None,
                max_reasons: int = 2) -> tuple[str, ...]:
        """Why this item: how often it came next to the user's newest item here (`next_to`: the adjacency
        counts of that item, when the on-site blend is served; only from MIN_REASON_COUNT on, so a reason never
        tells one customer what a few others did), the user's interests it matches, and the recent events it is
        most like (cosine of the model's item vectors)."""
        reasons = []
        if next_to and next_to.get(item, 0) >= MIN_REASON_COUNT and len(recent):
            reasons.append(f"next to {self.catalogue.item_ids[recent[0]]} {next_to[item]} times in customers' "
                           "histories here")
        weights = dict(interests)
        category = self.categories[item]
        if category in weights:
            rank = [c for c, _ in interests].index(category) + 1
            reasons.append(f"interest #{rank}: category {category} ({weights[category]:.0%} of recent activity)")
        recent = np.asarray([r for r in recent if 0 < r != item], dtype=np.int64)
        if len(recent):
            sims = self._unit[recent] @ self._unit[item]
            best = np.argsort(-sims)[: max(max_reasons - len(reasons), 1)]
            for b in best:
                if sims[b] > 0.2:
                    what = (recent_names or {}).get(int(recent[b]), "seen")
                    reasons.append(f"like {self.catalogue.item_ids[recent[b]]} ({what} recently, similarity {sims[b]:.2f})")
        return tuple(reasons[:max(max_reasons, 1)])

    def scored(self, ranked: list[tuple[int, float]], *, recent: np.ndarray, interests: list[tuple[str, float]],
               recent_names: dict[int, str] | None = None, next_to: dict[int, int] | None = None) -> list[Scored]:
        out = []
        for index, score in ranked:
            price = self.prices[index]
            out.append(Scored(str(self.catalogue.item_ids[index]), round(score, 6), str(self.categories[index]),
                              None if np.isnan(price) else float(price),
                              self.explain(index, recent=recent, interests=interests, recent_names=recent_names,
                                           next_to=next_to)))
        return out

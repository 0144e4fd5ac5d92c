"""Full-ranking evaluation: every catalogue item is scored, the user's history is masked except the target."""

from __future__ import annotations

import numpy as np
import torch

from shared_model.features import EVENT_FIELDS, SequenceSet


@torch.no_grad()
def last_profiles(model, sequences: SequenceSet, *, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """The profile vector after each user's last input event: (U, k) on CPU, in the users' order."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(sequences), model.config.profile_dim)
    # Users of similar length share a batch, and each batch is cut to its longest user (right padding).
    order = torch.argsort(sequences.lengths, stable=True)
    for start in range(0, len(sequences), batch_size):
        rows = order[start:start + batch_size]
        T = max(1, int(sequences.lengths[rows].max()))
        inputs = [sequences.events[name][rows, :T].to(device) for name in EVENT_FIELDS]
        profiles = model.encode(*inputs, sequences.genders[rows].to(device), sequences.ages[rows].to(device))
        last = (sequences.lengths[rows].to(device) - 1).clamp(min=0)
        out[rows] = profiles[torch.arange(len(last), device=device), last].float().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def held_out_ranks(model, sequences: SequenceSet, *, device: torch.device, batch_size: int = 1024,
                   boost=None, profiles: torch.Tensor | None = None) -> torch.Tensor:
    """Each user's held-out item's rank over the whole catalogue: (U,) float64 on CPU, in the users' order.

    Items the user interacted with before the target are removed from the ranking (the target itself is kept
    even if it was seen before); rank = number of remaining items scored at least as high as the target.
    Pessimistic where the scores cannot tell: a tie counts against the target, an item scored NaN ranks above
    it, and a NaN target ranks below every item, so a broken model can never look good. `boost`: scores added
    to the model's, a callable from each user's newest input item (b,) to (b, N+1) (an on-site blend);
    `profiles`: the users' `last_profiles`, when already computed."""
    was_training = model.training
    model.eval()
    items = model.item_vectors(torch.arange(model.descriptors.shape[0], device=device)).float()  # (N+1, k)
    model.train(was_training)
    ranks = []
    profiles_all = last_profiles(model, sequences, device=device, batch_size=batch_size) if profiles is None else profiles  # (U, k)
    for start in range(0, len(sequences), batch_size):
        part = slice(start, start + batch_size)
        scores = profiles_all[part].to(device) @ items.T  # (b, N+1)
        if boost is not None:
            lengths = sequences.lengths[part]
            last = sequences.events["items"][part][torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]  # (b,)
            scores = scores + boost(last).to(device=device, dtype=scores.dtype)
        targets = sequences.target_items[part].to(device)
        rows = torch.arange(len(targets), device=device)
        target_scores = scores[rows, targets].clone()
        scores = scores.nan_to_num(nan=float("inf"))  # a NaN item is ahead of the target
        history = sequences.history[part]
        hist_rows = np.repeat(np.arange(len(history)), [len(h) for h in history])
        hist_cols = np.concatenate(history) if len(history) else np.zeros(0, dtype=np.int64)
        scores[torch.from_numpy(hist_rows).to(device), torch.from_numpy(hist_cols).to(device)] = float("-inf")
        scores[:, 0] = float("-inf")  # padding index is not an item
        scores[rows, targets] = float("-inf")
        candidates = torch.isfinite(scores) | (scores == float("inf"))  # every item left in the ranking
        ahead = (scores >= target_scores[:, None]) & candidates  # ties count against the target
        rank = torch.where(torch.isnan(target_scores), candidates.sum(dim=1), ahead.sum(dim=1))
        ranks.append(rank.cpu())
    return torch.cat(ranks).double() if ranks else torch.zeros(0, dtype=torch.float64)


def ndcg_at(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user NDCG@k of one held-out item from its rank: 1 / log2(rank + 2) inside the top k, else 0."""
    return torch.where(ranks < k, 1.0 / torch.log2(ranks + 2), torch.zeros_like(ranks))


def evaluate(
    model, sequences: SequenceSet, *, device: torch.device, ks: tuple[int, ...] = (10, 20), batch_size: int = 1024,
    boost=None,
) -> dict[str, float]:
    """HR@K, NDCG@K and MRR of the held-out item over the whole catalogue (history masked, see
    `held_out_ranks`, and `boost` there): HR@K = P(rank < K), NDCG@K = mean(1/log2(rank + 2) if rank < K),
    MRR = mean(1/(rank + 1)) with no cut-off."""
    n = len(sequences)
    if n == 0:
        return {**{f"hr@{k}": 0.0 for k in ks}, **{f"ndcg@{k}": 0.0 for k in ks}, "mrr": 0.0, "users": 0}
    rank = held_out_ranks(model, sequences, device=device, batch_size=batch_size, boost=boost)
    metrics = {}
    for k in ks:
        metrics[f"hr@{k}"] = float((rank < k).double().mean())
        metrics[f"ndcg@{k}"] = float(ndcg_at(rank, k).mean())
    metrics["mrr"] = float((1.0 / (rank + 1)).mean())
    metrics["users"] = n
    return metrics


def paired_ratio(numerator: np.ndarray, denominator: np.ndarray, *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> dict[str, float | int | None]:
    """mean(numerator) / mean(denominator) of two models' per-user metrics on the same users, with a paired
    bootstrap interval (users resampled, both models together): the test-set sampling noise of the ratio, not
    the training noise of either model. With so few non-zero users that resamples divide by zero, the interval
    is None."""
    from scipy.stats import bootstrap

    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equally long per-user vectors of at least 2 users, got {a.shape} and {b.shape}")
    interval = bootstrap((a, b), lambda x, y, axis: x.mean(axis) / y.mean(axis), paired=True, vectorized=True,
                         n_resamples=resamples, confidence_level=level, method="percentile", batch=100,
                         random_state=np.random.default_rng(seed)).confidence_interval
    finite = np.isfinite(interval.low) and np.isfinite(interval.high)
    return {"ratio": float(a.mean() / b.mean()), "low": float(interval.low) if finite else None,
            "high": float(interval.high) if finite else None, "level": level, "users": len(a)}

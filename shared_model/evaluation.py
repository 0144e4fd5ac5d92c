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
def evaluate(
    model, sequences: SequenceSet, *, device: torch.device, ks: tuple[int, ...] = (10, 20), batch_size: int = 1024
) -> dict[str, float]:
    """HR@K, NDCG@K and MRR of the held-out item over the whole catalogue.

    Protocol: the held-out item is ranked against every other catalogue item; items the user interacted
    with before it are removed from the ranking (the target itself is kept even if it was seen before);
    rank = number of remaining items scored strictly higher. HR@K = P(rank < K),
    NDCG@K = mean(1/log2(rank + 2) if rank < K), MRR = mean(1/(rank + 1)) with no cut-off."""
    n = len(sequences)
    if n == 0:
        return {**{f"hr@{k}": 0.0 for k in ks}, **{f"ndcg@{k}": 0.0 for k in ks}, "mrr": 0.0, "users": 0}
    was_training = model.training
    model.eval()
    items = model.item_vectors(torch.arange(model.descriptors.shape[0], device=device)).float()  # (N+1, k)
    model.train(was_training)
    ranks = []
    profiles_all = last_profiles(model, sequences, device=device, batch_size=batch_size)  # (U, k)
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        scores = profiles_all[part].to(device) @ items.T  # (b, N+1)
        targets = sequences.target_items[part].to(device)
        rows = torch.arange(len(targets), device=device)
        target_scores = scores[rows, targets].clone()
        history = sequences.history[part]
        hist_rows = np.repeat(np.arange(len(history)), [len(h) for h in history])
        hist_cols = np.concatenate(history) if len(history) else np.zeros(0, dtype=np.int64)
        scores[torch.from_numpy(hist_rows).to(device), torch.from_numpy(hist_cols).to(device)] = float("-inf")
        scores[:, 0] = float("-inf")  # padding index is not an item
        scores[rows, targets] = float("-inf")
        ranks.append((scores > target_scores[:, None]).sum(dim=1).cpu())
    rank = torch.cat(ranks).double()
    metrics = {}
    for k in ks:
        hit = rank < k
        metrics[f"hr@{k}"] = float(hit.double().mean())
        metrics[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(rank + 2), torch.zeros_like(rank)).mean())
    metrics["mrr"] = float((1.0 / (rank + 1)).mean())
    metrics["users"] = n
    return metrics

"""The profile model's training loss: next item and next category by sampled softmax, plus purchase propensity."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def sampled_softmax(profiles, positives, negatives, target_ids, negative_ids) -> torch.Tensor:
    """Softmax loss of each position's target against shared negatives (a negative equal to the target
    is masked): profiles, positives (P, k), negatives (N, k), target_ids (P,), negative_ids (N,) -> (P,)."""
    positive = (profiles * positives).sum(-1, keepdim=True)  # (P, 1)
    negative = profiles @ negatives.T  # (P, N)
    negative = negative.masked_fill(negative_ids.view(1, -1) == target_ids.unsqueeze(-1), float("-inf"))
    logits = torch.cat([positive, negative], dim=-1).float()  # (P, 1 + N)
    return torch.logsumexp(logits, dim=-1) - logits[:, 0]


AVERAGES = ("users", "positions")


class ProfileLoss(nn.Module):
    """Per-user loss: sampled-softmax next-item loss + next-category softmax + purchase-propensity terms,
    averaged over the user's positions. `reduction` is what Opacus' ghost clipping toggles ('none' gives (B,)).
    `average="positions"` weighs every scored position alike, as SASRec does (a long history counts more): a
    batch's summed loss over B x `positions_per_user` (the training set's mean), a constant, so that a batch of long
    histories weighs more than one of short ones (batches grouped by length would otherwise make it the per-user
    mean again). It has no per-user loss, so it is for plain training only."""

    def __init__(self, *, category_weight: float, purchase_weight: float, reduction: str = "mean",
                 average: str = "users", positions_per_user: float = 1.0):
        super().__init__()
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
        self.positions_per_user = positions_per_user
        self.category_weight = category_weight
        self.purchase_weight = purchase_weight
        self.reduction = reduction
        self.average = average

    def forward(self, outputs, targets) -> torch.Tensor:
        profiles, positives, target_category_vectors, negatives, category_vectors, purchase_logits = outputs
        target_items, target_categories, target_purchase, negative_ids, category_ids = targets
        # Score real positions only: on short-history data (Beauty: 6 of 50) padding would be most of the work.
        users, steps = (target_items > 0).nonzero(as_tuple=True)  # (P,) each
        here = profiles[users, steps]  # (P, k)
        item_loss = sampled_softmax(here, positives[users, steps], negatives, target_items[users, steps], negative_ids)
        category_loss = sampled_softmax(here, target_category_vectors[users, steps], category_vectors,
                                        target_categories[users, steps], category_ids)
        known = (target_purchase >= 0).float()
        purchase_loss = F.binary_cross_entropy_with_logits(
            purchase_logits.float(), target_purchase.clamp(min=0), reduction="none"
        ) * known  # (B, T)
        B = target_items.shape[0]
        per_user_sum = torch.zeros(B, device=item_loss.device, dtype=item_loss.dtype).index_add(
            0, users, item_loss + self.category_weight * category_loss
        ) + self.purchase_weight * purchase_loss.sum(1)
        if self.average == "positions":
            if self.reduction == "none":
                raise ValueError("average='positions' has no per-user loss: DP-SGD needs average='users'")
            total = per_user_sum.sum()
            return total / (B * self.positions_per_user) if self.reduction == "mean" else total
        per_user = per_user_sum / (target_items > 0).sum(1).clamp(min=1)  # (B,)
        if self.reduction == "none":
            return per_user
        return per_user.sum() if self.reduction == "sum" else per_user.mean()

"""The profile loss: per-customer averaging (what DP-SGD clips) and SASRec's per-position averaging."""

from __future__ import annotations

import pytest
import torch

from shared_model.loss import ProfileLoss


def _outputs_and_targets(lengths: list[int], *, T: int = 6, k: int = 4, N: int = 8):
    torch.manual_seed(0)
    B = len(lengths)
    target_items = torch.zeros(B, T, dtype=torch.long)
    for row, n in enumerate(lengths):
        target_items[row, :n] = torch.randint(1, 50, (n,))
    outputs = (torch.randn(B, T, k), torch.randn(B, T, k), torch.randn(B, T, k), torch.randn(N, k), torch.randn(3, k),
               torch.randn(B, T))
    targets = (target_items, torch.randint(1, 4, (B, T)), torch.full((B, T), -1.0), torch.arange(50, 50 + N),
               torch.arange(1, 4))
    return outputs, targets


def _per_position(outputs, targets) -> torch.Tensor:
    """Each scored position's loss, from a batch per position (the reference)."""
    target_items = targets[0]
    losses = []
    for row, step in zip(*(target_items > 0).nonzero(as_tuple=True)):
        one = [o[row:row + 1, step:step + 1] if o.dim() >= 2 and o.shape[0] == target_items.shape[0] else o
               for o in outputs]
        kept = [t[row:row + 1, step:step + 1] if t.dim() == 2 else t for t in targets]
        losses.append(ProfileLoss(category_weight=0.1, purchase_weight=0.0, reduction="sum")(one, kept))
    return torch.stack(losses)


def test_users_average_each_customer_and_positions_weigh_every_event_alike():
    """A customer with 5 scored events and one with 1: per customer, each counts half; per position, the long
    history counts 5 of 6 (over a constant, so a batch of long histories weighs more than a batch of short ones)."""
    outputs, targets = _outputs_and_targets([5, 1])
    each = _per_position(outputs, targets)  # (6,): the first customer's five, then the second's one
    users = ProfileLoss(category_weight=0.1, purchase_weight=0.0)(outputs, targets)
    assert torch.allclose(users, (each[:5].mean() + each[5]) / 2, atol=1e-5)
    positions = ProfileLoss(category_weight=0.1, purchase_weight=0.0, average="positions",
                            positions_per_user=3.0)(outputs, targets)
    assert torch.allclose(positions, each.sum() / (2 * 3.0), atol=1e-5)
    assert not torch.allclose(users, positions)


def test_positions_have_no_per_customer_loss_for_dp():
    outputs, targets = _outputs_and_targets([2, 3])
    with pytest.raises(ValueError, match="DP-SGD needs average='users'"):
        ProfileLoss(category_weight=0.1, purchase_weight=0.1, average="positions", reduction="none")(outputs, targets)
    with pytest.raises(ValueError, match="average must be one of"):
        ProfileLoss(category_weight=0.1, purchase_weight=0.1, average="tokens")

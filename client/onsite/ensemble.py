"""Two profile models as one: concatenated profiles and item vectors, so scores add as `a + weight * b`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from shared_model.model import ProfileTransformer

WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)  # weights of the second model tried on the validation customers


@dataclass(frozen=True)
class EnsembleShape:
    profile_dim: int  # k_a + k_b: what last_profiles allocates


class ScoreEnsemble(nn.Module):
    """`first` and `second` over the same catalogue, scored as `first's score + weight * second's` for every
    (customer, item): profile [p_a, weight * p_b] against item vector [e_a, e_b], so the evaluation and ranking
    code that reads `encode`, `item_vectors` and `descriptors` ranks with both without knowing it. Both models
    are trained on site (or received): nothing here is sent."""

    def __init__(self, first: ProfileTransformer, second: ProfileTransformer, weight: float):
        super().__init__()
        self.first, self.second, self.weight = first, second, float(weight)
        self.config = EnsembleShape(first.config.profile_dim + second.config.profile_dim)

    @property
    def descriptors(self) -> torch.Tensor:
        return self.first.descriptors

    def set_catalogue(self, descriptors: torch.Tensor) -> None:
        self.first.set_catalogue(descriptors)
        self.second.set_catalogue(descriptors)

    def encode(self, *inputs) -> torch.Tensor:
        return torch.cat([self.first.encode(*inputs), self.weight * self.second.encode(*inputs)], dim=-1)  # (B, T, ka+kb)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first.item_vectors(items), self.second.item_vectors(items)], dim=-1)  # (n, ka+kb)

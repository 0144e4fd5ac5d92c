"""Two profile models as one: concatenated profiles and item vectors, so scores add as `a + weight * b`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shared_model.checkpoint import GLOBAL_MODEL_FILE, ModelSource, open_model, save_model
from shared_model.features import Catalogue, HashSpec
from shared_model.model import ProfileTransformer

WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)  # weights of the second model tried on the validation customers
MAX_WEIGHT = 64.0  # what a saved ensemble may say: far beyond any weight tried
SECOND_FILE = "second.pt"  # beside the first part's model.pt in an on-site model folder; never named by metadata


@dataclass(frozen=True)
class EnsembleShape:
    """What the ranking and profiling code reads from a model's config."""

    profile_dim: int  # k_a + k_b: what last_profiles allocates
    hash_spec: HashSpec  # both parts hash a catalogue the same way (checked)
    max_len: int


class ScoreEnsemble(nn.Module):
    """`first` and `second` over the same catalogue, scored as `first's score + weight * second's` for every
    (customer, item) and every category: profile [p_a, weight * p_b] against item vector [e_a, e_b], so the
    evaluation, ranking and profiling code that reads `encode`, `item_vectors`, `category_vectors` and
    `descriptors` uses both without knowing it; the purchase propensity is the first part's. Both models are
    trained on site (or received): nothing here is sent."""

    def __init__(self, first: ProfileTransformer, second: ProfileTransformer, weight: float):
        super().__init__()
        if first.config.hash_spec != second.config.hash_spec or first.config.max_len != second.config.max_len:
            raise ValueError("the two parts of an ensemble must hash items alike and read as many events "
                             f"(hash spec and max_len: {first.config.hash_spec}, {first.config.max_len} against "
                             f"{second.config.hash_spec}, {second.config.max_len})")
        self.first, self.second, self.weight = first, second, float(weight)
        self.config = EnsembleShape(first.config.profile_dim + second.config.profile_dim, first.config.hash_spec,
                                    first.config.max_len)

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

    def category_vectors(self, buckets: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first.category_vectors(buckets), self.second.category_vectors(buckets)], dim=-1)  # (C, ka+kb)

    def purchase_head(self, profiles: torch.Tensor) -> torch.Tensor:
        return self.first.purchase_head(profiles[..., : self.first.config.profile_dim])  # (U, 1)


def check_ensemble_weight(weight) -> float:
    """The second part's weight, as given or read back from an on-site model's metadata: finite, in (0, MAX]."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"ensemble weight {weight!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 < value <= MAX_WEIGHT):
        raise ValueError(f"ensemble weight {value} must be finite and within (0, {MAX_WEIGHT:g}]")
    return value


def save_served(folder: Path, model: ProfileTransformer | ScoreEnsemble, catalogue: Catalogue, *,
                metadata: dict) -> None:
    """An on-site model into `folder`: one model file, or an ensemble's first part there (its metadata carrying
    the weight) and its second part in SECOND_FILE beside it."""
    if isinstance(model, ScoreEnsemble):
        save_model(folder / SECOND_FILE, model.second.eval(), catalogue, metadata={"part": "second"})
        save_model(folder / GLOBAL_MODEL_FILE, model.first.eval(), catalogue,
                   metadata={**metadata, "ensemble-weight": model.weight})
    else:
        save_model(folder / GLOBAL_MODEL_FILE, model.eval(), catalogue, metadata=metadata)


def served_model(source: ModelSource, first: ProfileTransformer, catalogue: Catalogue, *,
                 device: torch.device) -> ProfileTransformer | ScoreEnsemble:
    """What `source` serves: `first` (built from it), or, for an on-site ensemble, `first` with its second part
    from SECOND_FILE beside it. A received global model is always served as it came: only a merchant's own
    on-site fit (a full model file with its catalogue) can name a second part, and only by this fixed name."""
    if "shared_state" in source.blob:
        return first
    weight = json.loads(source.blob.get("metadata_json", "{}")).get("ensemble-weight")
    if weight is None:
        return first
    second_file = source.file.parent / SECOND_FILE
    if not second_file.is_file():
        raise ValueError(f"{source.file}: an ensemble's first part without its second ({second_file} is missing)")
    second, _, _ = open_model(second_file).build(catalogue, device=device)
    return ScoreEnsemble(first, second, check_ensemble_weight(weight)).to(device).eval()

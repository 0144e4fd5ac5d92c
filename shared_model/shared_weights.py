"""The weights merchants share: the global model's first state and which of its tensors are lookup tables."""

from __future__ import annotations

import torch

from shared_model.features import ITEM_FIELDS, TITLE_TOKENS
from shared_model.model import ProfileConfig, ProfileTransformer


def initial_shared_state(config: ProfileConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The global model's first shared weights; they do not depend on any merchant's catalogue."""
    torch.manual_seed(seed)
    model = ProfileTransformer(config, torch.zeros(1, len(ITEM_FIELDS) + TITLE_TOKENS, dtype=torch.long))
    return {name: tensor.clone() for name, tensor in model.shared_state().items()}


def embedding_table_names(config: ProfileConfig) -> frozenset[str]:
    """The shared weights that are lookup tables (one row per hashed item, category, word...): a merchant's
    training changes only the rows its own data looks up."""
    model = ProfileTransformer(config, torch.zeros(1, len(ITEM_FIELDS) + TITLE_TOKENS, dtype=torch.long))
    shared = model.shared_state()
    return frozenset(f"{name}.weight" for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Embedding) and f"{name}.weight" in shared)

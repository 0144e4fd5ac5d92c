"""The local optimizer and its moments as flat tensors, so a merchant can carry them from one round to the next."""

from __future__ import annotations

import torch
import torch.nn as nn

OPTIMIZERS = ("adam", "sgd")


def make_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (fused), or SGD with momentum 0.9, over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def optimizer_moments(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors ("<parameter index>.<name>"), e.g. Adam's moments."""
    return {f"{index}.{name}": value.detach().cpu().clone() for index, state in optimizer.state_dict()["state"].items()
            for name, value in state.items() if torch.is_tensor(value)}


def load_moments(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Carry on from `optimizer_moments` of the same model's optimizer; this call's learning rate holds."""
    state: dict[int, dict] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})

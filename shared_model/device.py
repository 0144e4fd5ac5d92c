"""Where tensors run: CUDA when present, the CPU otherwise, chosen at run time."""

from __future__ import annotations

import contextlib

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or when asked for), CPU otherwise."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (Hopper and Ampere run it at full rate); full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)

"""Opacus' RDP of the subsampled Gaussian, computed once per (sample rate, noise multiplier, orders), times steps."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1024)
def _per_step(compute_rdp, q: float, noise_multiplier: float, orders):
    values = compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=1,
                         orders=orders if isinstance(orders, float) else list(orders))
    if isinstance(values, np.ndarray):
        values.setflags(write=False)  # shared by every later call: nobody may change it in place
    return values


def remember_rdp() -> None:
    """Make Opacus' `compute_rdp` remember its per-step values. RDP composes linearly in steps, and Opacus itself
    returns the one-step value times `steps`, so the figures are the same to the bit. Each epsilon a merchant
    reports (before a round, to check its budget, and after it) goes through Opacus' PRV accountant, whose domain
    bound runs the RDP accountant at some sixty orders, the fractional ones by a slow series: 0.2 s a call on
    CPU-2, every round, for a history that differs from the last only in its count of steps. Idempotent; Opacus
    is imported here, not at import time (shared_model/dp_engine.py says why)."""
    from opacus.accountants.analysis import rdp

    if getattr(rdp.compute_rdp, "remembers", False):
        return
    opacus_compute_rdp = rdp.compute_rdp

    def compute_rdp(*, q: float, noise_multiplier: float, steps: int, orders):
        key = float(orders) if np.ndim(orders) == 0 else tuple(float(order) for order in orders)
        return _per_step(opacus_compute_rdp, float(q), float(noise_multiplier), key) * steps

    compute_rdp.remembers = True
    rdp.compute_rdp = compute_rdp

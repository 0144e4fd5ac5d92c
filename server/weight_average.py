"""The published model as an exponential moving average of the global weights over rounds (post-processing)."""

from __future__ import annotations

import numpy as np

PREFIX = "published-average/"  # its arrays' names in the round's checkpoint


class WeightAverage:
    """average_1 = w_1; average_t = decay x average_{t-1} + (1 - decay) x w_t. Under DP each round's weights
    carry that round's noise; the average keeps the trend and cancels much of the noise, and since it is computed
    from released weights only it costs no privacy. Training continues from the raw weights; the average is what
    is evaluated, published and served. decay 0 publishes the last weights."""

    def __init__(self, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"published-average must be in [0, 1), got {decay}")
        self.decay = decay
        self.average: dict[str, np.ndarray] | None = None

    def update(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fold in this round's global weights; returns the weights to publish."""
        if self.decay == 0:
            return arrays
        if self.average is None:
            self.average = {k: np.array(v, dtype=np.float32, copy=True) for k, v in arrays.items()}
        else:
            for name, value in arrays.items():
                self.average[name] = (self.decay * self.average[name] + (1 - self.decay) * value).astype(np.float32)
        return {k: v.copy() for k, v in self.average.items()}

    def published(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the last `update` returned, given the global weights it was given (a resumed run's)."""
        if self.decay == 0 or self.average is None:
            return arrays
        return {k: v.copy() for k, v in self.average.items()}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {PREFIX + k: v for k, v in (self.average or {}).items()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        found = {k[len(PREFIX):]: np.array(v, dtype=np.float32) for k, v in arrays.items() if k.startswith(PREFIX)}
        self.average = found or None

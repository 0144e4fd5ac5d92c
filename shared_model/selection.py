"""Which weights a training call keeps: the best by validation NDCG@10, an exponential average, or the last."""

from __future__ import annotations

import copy

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class Selection:
    """Follows validation passes and steps. `select_best` (plain training only: under DP, choosing weights by
    the users' validation items would spend privacy the accountant does not count) keeps the best weights and
    stops after `patience` passes without a better NDCG@10; `ema_decay` > 0 keeps an average of the weights,
    made after each step from the weights alone (post-processing, no privacy cost), which validation scores."""

    def __init__(self, model: nn.Module, *, select_best: bool, ema_decay: float = 0.0, patience: int | None = None):
        self._model, self.select_best, self.patience = model, select_best, patience
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)) if ema_decay else None
        self.best_score, self.best_state, self.best_epoch = -1.0, None, 0
        self.stale = 0

    @property
    def scored(self) -> nn.Module:
        """What validation sees and what is kept: the average when there is one, else the model itself."""
        return self.ema.module if self.ema is not None else self._model

    def after_step(self, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.update_parameters(model)

    def observe(self, epoch: int, ndcg: float) -> bool:
        """Note one validation pass; True when patience has run out and training should stop."""
        if ndcg > self.best_score:
            state = copy.deepcopy(self.scored.state_dict()) if self.select_best else None
            self.best_score, self.best_state, self.best_epoch = ndcg, state, epoch
            self.stale = 0
            return False
        self.stale += 1
        return self.select_best and self.patience is not None and self.stale >= self.patience

    @property
    def restores_best(self) -> bool:
        return self.select_best and self.best_state is not None

    def restore_best(self, model: nn.Module, last_epoch: int) -> int:
        """Load the best weights into `model` when they are kept; returns the epoch the kept weights are from."""
        if self.restores_best:
            model.load_state_dict(self.best_state)
            return self.best_epoch
        return last_epoch

    def keep_average(self, model: nn.Module) -> None:
        """Load the average into `model` (when there is one and the best weights were not restored instead)."""
        if self.ema is not None and not self.restores_best:
            model.load_state_dict(self.ema.module.state_dict())

"""Attaching Opacus to one training call: user-level DP-SGD on a ledger that carries epsilon across calls."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from shared_model import embedding_norm
from shared_model.batching import steps_for
from shared_model.ghost_clipping import GhostClippingSpeedup
from shared_model.model import ProfileTransformer
from shared_model.privacy import PrivacyConfig, PrivacyLedger, secret_generator

if TYPE_CHECKING:
    from opacus import PrivacyEngine


@dataclass
class PrivateTraining:
    """The Opacus-wrapped module, optimizer, criterion and Poisson loader of one DP-SGD call, and its ledger."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    loader: torch.utils.data.DataLoader
    engine: PrivacyEngine
    ledger: PrivacyLedger
    speedup: GhostClippingSpeedup | None = None  # ghost clipping only

    def backward(self, loss) -> None:
        """Both of ghost clipping's passes (or Opacus' hooks mode's one)."""
        if self.speedup is not None:
            self.speedup.backward(loss)
        else:
            loss.backward()

    def epsilon(self) -> float:
        """Record the steps taken so far in the ledger and return the epsilon spent over every call."""
        self.ledger.record(self.engine.accountant)
        return self.ledger.epsilon()

    def close(self) -> None:
        """Remove Opacus' hooks and per-sample attributes: the model is plain again."""
        if self.speedup is not None:
            self.speedup.close()
        self.net._close()


def make_private(model: ProfileTransformer, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 loader: torch.utils.data.DataLoader, *, privacy: PrivacyConfig, epochs: float,
                 ledger_state: dict | None) -> PrivateTraining:
    """Wrap one call's training for DP-SGD: one user = one example, Poisson sampling at 1 / batches per epoch.

    The noise multiplier is fixed once, for the planned steps over every call (`privacy.planned_epochs`), and
    kept in the ledger; `ledger_state` continues an earlier call's ledger, whose targets drop to `privacy`'s when
    those are lower. Raises PrivacyBudgetExhausted before any step when this call's steps, at the sample rate they
    will use, would take epsilon past the target."""
    if model.config.tie_item_tables:
        raise ValueError(
            "tie_item_tables is for plain training: DP-SGD's ghost clipping refuses one item table used for "
            "both inputs and outputs; build the model with tie_item_tables=False"
        )
    if model.config.frequency_mix > 0:
        raise ValueError(
            "frequency_mix is for plain training: Opacus has no per-customer gradient for the low-pass filter's "
            "beta; build the model with frequency_mix=0"
        )
    # Opacus here, not at the top: importing it takes about 2 s, and every process that loads the training loop
    # (a merchant's service, console and daemon among them) would pay it without ever training with DP
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    embedding_norm.install()
    sample_rate = 1 / len(loader)
    if ledger_state is not None:  # an earlier call's ledger: a ceiling lowered since then applies now
        ledger = PrivacyLedger.from_state_dict(ledger_state)
        ledger.tighten(epsilon=privacy.target_epsilon, delta=privacy.target_delta)
    else:
        planned_epochs = privacy.planned_epochs or epochs
        ledger = PrivacyLedger.plan(privacy, sample_rate=sample_rate,
                                    planned_steps=int(round(planned_epochs * len(loader))))
    # projected at the rate these steps will use: a batch size changed since the plan changes it
    ledger.check_budget(steps_for(epochs, len(loader)), sample_rate=sample_rate)
    engine = PrivacyEngine(accountant=ledger.accountant_name)
    if ledger.accountant_state:
        engine.accountant.load_state_dict(copy.deepcopy(ledger.accountant_state))
    mode = "ghost" if privacy.ghost_clipping else "hooks"
    # Poisson sampling (on the CPU, where the loader draws) and noise (where the parameters are) from secret
    # generators (Opacus would draw both from torch's global one, which training seeds with the run's public
    # seed): nobody else can redraw them
    sampling = secret_generator(privacy.noise_seed)
    noise = secret_generator(privacy.noise_seed, device=next(model.parameters()).device)
    wrapped = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=DPDataLoader.from_data_loader(loader, generator=sampling),
        noise_multiplier=ledger.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=False,  # the loader above already samples
        noise_generator=noise,
        grad_sample_mode=mode,
        loss_reduction="mean",
    )
    if mode == "ghost":  # ghost clipping wraps the criterion too (its two backward passes)
        net, optimizer, criterion, loader = wrapped
    else:
        net, optimizer, loader = wrapped
    net.forbid_grad_accumulation()  # as Opacus does for the Poisson sampling it sets up itself
    speedup = GhostClippingSpeedup(net, optimizer, one_pass=privacy.one_pass_clipping) if mode == "ghost" else None
    return PrivateTraining(net, optimizer, criterion, loader, engine, ledger, speedup)

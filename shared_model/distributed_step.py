"""A merchant's part of one central DP-SGD step: its Poisson-sampled customers' clipped gradients and a noise share."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch.utils.data import TensorDataset

from shared_model import embedding_norm
from shared_model.features import SequenceData
from shared_model.ghost_clipping import GhostClippingSpeedup
from shared_model.loss import ProfileLoss
from shared_model.model import ProfileTransformer
from shared_model.privacy import secret_generator
from shared_model.run_config import RunConfig
from shared_model.training import _Step


def noise_share(noise_multiplier: float, *, min_survivors: int, colluders: int) -> float:
    """The noise multiplier each merchant adds so that any `min_survivors - colluders` honest merchants' shares
    sum to at least `noise_multiplier` (Gaussian variances add): sigma / sqrt(M_min - t)."""
    if min_survivors - colluders < 1:
        raise ValueError(f"min_survivors ({min_survivors}) must exceed colluders ({colluders})")
    return noise_multiplier / math.sqrt(min_survivors - colluders)


def value_bound(*, max_grad_norm: float, max_users: int, share: float) -> float:
    """The largest magnitude one coordinate of a merchant's noised sum may take: every sampled customer's
    clipped gradient on that coordinate (at most the clipping norm each) plus 40 standard deviations of its
    noise share (a Gaussian passes that once in 10^349 draws)."""
    return max_grad_norm * max_users + 40.0 * share * max_grad_norm


@dataclass
class GradientShare:
    """What one merchant computed for one round; only `vector` (masked by the secure sum) leaves the merchant."""

    vector: np.ndarray  # (P,) float64: sum of clipped per-customer gradients + N(0, (share * C)^2) per coordinate
    sampled: int  # customers in this round's Poisson sample (stays on the merchant: not covered by DP)
    seconds: float


def noised_gradient_sum(model: ProfileTransformer, data: SequenceData, run: RunConfig,
                        shapes: dict[str, tuple[int, ...]], *,
                        share: float, device: torch.device, seed: int | None = None) -> GradientShare:
    """Poisson-sample the merchant's customers at `run.sample_rate`, clip each one's gradient to
    `run.max_grad_norm` (user level: one customer = one example) and add Gaussian noise of standard deviation
    `share * max_grad_norm`; Opacus does the sampling, clipping and noise. Returns the noised sum over the
    shared parameters `shapes` names (in the coordinator's order), flattened."""
    started = time.perf_counter()
    embedding_norm.install()
    model.to(device)
    model.train()
    dataset = TensorDataset(*data.train.tensors())
    # sample and noise unpredictable to anyone else (secret_generator); `seed` (tests) makes them and the
    # negatives repeat
    sampling, noise = secret_generator(seed), secret_generator(seed, device=device)  # noise where the weights are
    if seed is not None:
        torch.manual_seed(seed)
    loader = DPDataLoader(dataset, sample_rate=run.sample_rate, generator=sampling)
    # lr 0: the step only fills .grad (Opacus' clipped, noised sum); the merchant's model is not moved
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    config = run.train_config(server_round=0)
    criterion = ProfileLoss(category_weight=config.category_weight, purchase_weight=config.purchase_weight)
    engine = PrivacyEngine(accountant="prv")  # its accountant is unused: the merchant's ledger accounts sigma
    mode = "ghost"
    wrapped = engine.make_private(module=model, optimizer=optimizer, criterion=criterion, data_loader=loader,
                                  noise_multiplier=share, max_grad_norm=run.max_grad_norm, poisson_sampling=False,
                                  noise_generator=noise, grad_sample_mode=mode, loss_reduction="mean")
    net, optimizer, criterion, loader = wrapped
    optimizer.expected_batch_size = 1  # "mean" divides .grad by this: 1 keeps the plain sum
    speedup = GhostClippingSpeedup(net, optimizer)
    step = _Step(net, optimizer, criterion, config, data, device, private=True, proximal_mu=0.0, model=model,
                 backward=speedup.backward)
    batch = next(iter(loader))
    _, sampled, _ = step(batch)
    params = dict(model.named_parameters())
    parts = []
    for name, shape in shapes.items():
        param = params.get(name)
        if param is None or param.grad is None:  # a buffer, or a table this batch never touched
            parts.append(np.zeros(int(np.prod(shape))))
        else:
            parts.append(param.grad.detach().double().cpu().numpy().ravel())
    speedup.close()
    net._close()
    model.cpu()
    return GradientShare(vector=np.concatenate(parts), sampled=int(sampled), seconds=time.perf_counter() - started)

"""DP-SGD's noise drawn on several threads: the distribution Opacus' is, secret streams, Opacus' checks kept."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers.optimizer import DPOptimizer

from shared_model.dp_noise import ParallelNoise


def _optimizer(sizes, *, noise_multiplier=1.3, max_grad_norm=0.7):
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    optimizer = DPOptimizer(torch.optim.SGD(params, lr=0.1), noise_multiplier=noise_multiplier,
                            max_grad_norm=max_grad_norm, expected_batch_size=64)
    for p in params:
        p.summed_grad = torch.full_like(p, 0.25)  # what clipping and accumulating left
    return optimizer, params


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_each_coordinate_gets_its_sum_plus_gaussian_noise_of_opacus_scale(threads):
    optimizer, params = _optimizer([300_000, 200_000, 7, 100_000])
    noise = ParallelNoise(params, torch.Generator().manual_seed(1), threads=threads)
    noise.install(optimizer)
    optimizer.add_noise()
    std = 1.3 * 0.7
    for p in params:
        drawn = p.grad - 0.25
        assert p.grad.shape == p.shape and torch.isfinite(p.grad).all()
        if p.numel() > 1000:
            assert abs(drawn.mean().item()) < 5 * std / p.numel() ** 0.5
            assert drawn.std().item() == pytest.approx(std, rel=0.01)
    big, other = params[0].grad[:100_000] - 0.25, params[3].grad - 0.25
    # independent streams: no two parameters (nor two threads) share draws
    assert abs(torch.corrcoef(torch.stack([big, other]))[0, 1].item()) < 0.02
    noise.close(optimizer)


def test_the_noise_is_fresh_every_step_and_repeats_only_for_the_same_secret_seed():
    def draws(seed, steps=2):
        optimizer, params = _optimizer([50_000, 20_000])
        noise = ParallelNoise(params, torch.Generator().manual_seed(seed), threads=2)
        noise.install(optimizer)
        out = []
        for _ in range(steps):
            for p in params:
                p.summed_grad = torch.zeros_like(p)
            optimizer.add_noise()
            out.append(torch.cat([p.grad.clone() for p in params]))
        noise.close(optimizer)
        return out

    first, again, other = draws(7), draws(7), draws(8)
    assert not torch.equal(first[0], first[1])  # a new draw each step
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # the tests' fixed seed repeats
    assert not torch.equal(first[0], other[0])


def test_opacus_checks_stay_and_close_restores_its_own_noise():
    optimizer, params = _optimizer([1000])
    noise = ParallelNoise(params, torch.Generator().manual_seed(1), threads=2)
    noise.install(optimizer)
    optimizer.add_noise()
    with pytest.raises(ValueError):  # the same summed gradient noised twice: Opacus refuses it
        optimizer.add_noise()
    noise.close(optimizer)
    assert "add_noise" not in optimizer.__dict__
    assert optimizer.add_noise.__func__ is DPOptimizer.add_noise

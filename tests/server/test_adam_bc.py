"""DP-AdamBC: the noise variance comes out of Adam's second moment, and nothing else changes."""

from __future__ import annotations

import pytest
import torch

from server.adam_bc import AdamBC


def _steps(optimizer_of, gradients):
    param = torch.nn.Parameter(torch.zeros(len(gradients[0])))
    optimizer = optimizer_of([param])
    for gradient in gradients:
        param.grad = torch.tensor(gradient)
        optimizer.step()
    return param.detach().clone(), optimizer


def test_without_noise_it_takes_adams_steps():
    gradients = [[0.3, -0.02, 1.5], [0.1, -0.05, 0.7], [-0.2, 0.01, 0.9]]
    ours, _ = _steps(lambda p: AdamBC(p, lr=0.01, noise_variance=0.0, floor=1e-16), gradients)
    adam, _ = _steps(lambda p: torch.optim.Adam(p, lr=0.01, eps=0.0), gradients)
    torch.testing.assert_close(ours, adam, rtol=1e-5, atol=1e-8)


def test_the_noise_variance_is_taken_out_of_the_second_moment():
    # one step with gradient g: m_hat = g, v_hat = g^2; the step is lr * g / sqrt(g^2 - phi)
    phi, g = 0.5, 1.0
    param, _ = _steps(lambda p: AdamBC(p, lr=0.1, noise_variance=phi), [[g]])
    assert param.item() == pytest.approx(-0.1 * g / (g * g - phi) ** 0.5, rel=1e-5)
    # a gradient inside the noise: the floor bounds the step
    param, _ = _steps(lambda p: AdamBC(p, lr=0.1, noise_variance=4.0, floor=0.25), [[1.0]])
    assert param.item() == pytest.approx(-0.1 * 1.0 / 0.5, rel=1e-5)


def test_its_state_has_adams_keys_so_a_checkpoint_holds_either():
    _, optimizer = _steps(lambda p: AdamBC(p, lr=0.01, noise_variance=1e-4), [[0.1, 0.2]])
    state = next(iter(optimizer.state.values()))
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == 1


def test_it_refuses_settings_that_cannot_work():
    with pytest.raises(ValueError, match="floor > 0"):
        AdamBC([torch.nn.Parameter(torch.zeros(1))], lr=0.01, noise_variance=0.0, floor=0.0)

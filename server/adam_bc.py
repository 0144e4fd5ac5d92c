"""DP-AdamBC: Adam whose second moment has the DP noise's known variance taken out (Tang et al., 2023)."""

from __future__ import annotations

import torch


class AdamBC(torch.optim.Optimizer):
    """Adam on noised gradients g + N(0, phi): its second moment estimates E[g^2] + phi, so in coordinates where
    the noise dominates every step is about lr x m / sqrt(phi), plain SGD at a fixed rate whatever the coordinate's
    own curvature. This subtracts phi (known to the coordinator: the noise of the secure sum) from the
    bias-corrected second moment and floors the difference at `floor` before the square root:

        step = lr x m_hat / sqrt(max(v_hat - phi, floor))

    Post-processing of the noised gradients only: no privacy cost. Set phi with `noise_variance=` before each
    `step()` (it changes with the merchants in the round's sum)."""

    def __init__(self, params, *, lr: float, noise_variance: float, floor: float = 5e-8,
                 betas: tuple[float, float] = (0.9, 0.999)):
        if lr <= 0 or floor <= 0 or noise_variance < 0:
            raise ValueError(f"AdamBC needs lr > 0, floor > 0 and noise_variance >= 0, got lr={lr}, "
                             f"floor={floor}, noise_variance={noise_variance}")
        super().__init__(params, dict(lr=lr, betas=betas, floor=floor, noise_variance=noise_variance))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # the same keys as torch's Adam, so a checkpoint holds either
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].mul_(beta1).add_(param.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1 ** t)
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** t)
                denominator = (v_hat - group["noise_variance"]).clamp_(min=group["floor"]).sqrt_()
                param.addcdiv_(m_hat, denominator, value=-group["lr"])
        return None

    def set_noise_variance(self, value: float) -> None:
        for group in self.param_groups:
            group["noise_variance"] = float(value)

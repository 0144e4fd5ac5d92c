"""Opacus ghost clipping without the work it throws away: norms-only first pass, sparse embedding gradients."""

from __future__ import annotations

import types

import torch
import torch.nn as nn


class GhostClippingSpeedup:
    """Two changes to one ghost-clipping DP-SGD call that leave every clipped, noised gradient as Opacus makes it.

    1. The first of ghost clipping's two backward passes only needs each layer's output gradient (its hooks
       turn them into per-customer norms); Opacus runs a full `backward()` there, computing every parameter
       gradient and then zeroing it. Here it runs with `inputs=` the trainable layers' outputs, so autograd
       skips the parameter gradients: for the hashed item tables those are dense (rows x dim) each.
    2. Embedding tables produce sparse gradients (only the rows a batch used), which the optimizer adds into a
       dense sum per logical batch: a physical batch no longer costs a dense pass over every table.

    `close()` restores the tables and the optimizer; the model is plain again."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer):
        self.net, self.optimizer = net, optimizer
        self._outputs: list[torch.Tensor] = []
        layers = [m for m in net.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        # forward hooks see a layer's own output, before Opacus wraps it in the hook that computes its norm
        self._handles = [layer.register_forward_hook(self._record) for layer in layers]
        self._tables = [m for m in layers if isinstance(m, nn.Embedding) and not m.sparse]
        for table in self._tables:
            table.sparse = True
        optimizer.accumulate = types.MethodType(_accumulate_dense, optimizer)

    def _record(self, module, args, output) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            self._outputs.append(output)

    def backward(self, loss) -> None:
        """Opacus' `DPTensorFastGradientClipping.backward` (mean reduction) with a norms-only first pass."""
        outputs, self._outputs = self._outputs, []
        trainable = [(name, p) for name, p in self.net.named_parameters() if p.requires_grad]
        for _, param in trainable:
            param._norm_sample = None  # so that a norm this pass does not write shows as missing, not stale
        torch.autograd.backward(loss.loss_per_sample.mean(dim=0), inputs=outputs, retain_graph=True)
        for output in outputs:
            output.grad = None
        missing = [name for name, param in trainable if param._norm_sample is None]
        if missing:  # a layer the pass did not reach would be left out of each customer's norm: never clip short
            raise RuntimeError(f"ghost clipping's first pass computed no per-customer norm for {missing[:3]}: every "
                               "trainable layer must produce a tensor output; train with ghost_clipping=False")
        self.optimizer.zero_grad()
        coefficient = self.net.get_clipping_coef()
        self.net.disable_hooks()
        try:
            torch.sum(coefficient.to(loss.loss_per_sample.device) * loss.loss_per_sample).backward()
        finally:
            self.net.enable_hooks()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for table in self._tables:
            table.sparse = False
        self._outputs = []
        del self.optimizer.accumulate  # the class's own again


def _accumulate_dense(optimizer) -> None:
    """`DPOptimizerFastGradientClipping.accumulate` with a dense sum: Opacus' noise step adds dense noise to it."""
    for p in optimizer.params:
        grad = p.grad.data
        if p.summed_grad is None:
            p.summed_grad = grad.to_dense() if grad.is_sparse else grad.clone()
        else:
            p.summed_grad.add_(grad)

"""Opacus ghost clipping without the work it throws away: norms-only first pass, sparse tables, no second pass."""

from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F

ONE_PASS_LAYERS = (nn.Linear, nn.Embedding, nn.LayerNorm)  # the layers whose clipped gradient is written here


class GhostClippingSpeedup:
    """Three changes to one ghost-clipping DP-SGD call that leave every clipped, noised gradient as Opacus makes it.

    1. The first of ghost clipping's two backward passes only needs each layer's output gradient (its hooks
       turn them into per-customer norms); Opacus runs a full `backward()` there, computing every parameter
       gradient and then zeroing it. Here it runs with `inputs=` the trainable layers' outputs, so autograd
       skips the parameter gradients: for the hashed item tables those are dense (rows x dim) each.
    2. Embedding tables produce sparse gradients (only the rows a batch used), which the optimizer adds into a
       dense sum per logical batch: a physical batch no longer costs a dense pass over every table.
    3. `one_pass` (book-keeping clipping, Bu et al., ICML 2023): the first pass leaves each layer's output
       gradient, and with the layer's input that is all its per-customer gradient needs, so each layer's clipped
       sum is formed directly (a matrix product for a linear layer, rows added for a table) instead of by
       Opacus' second backward pass over the coefficient-weighted loss. Only for Linear, Embedding and
       LayerNorm layers, which is every trained layer of the profile model; any other falls back to two passes.

    `close()` restores the tables and the optimizer; the model is plain again."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, *, one_pass: bool = True):
        self.net, self.optimizer = net, optimizer
        self._outputs: list[torch.Tensor] = []
        self._inputs: list[tuple[nn.Module, torch.Tensor]] = []  # one pass: each recorded output's layer and input
        layers = [m for m in net.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.one_pass = one_pass and all(_one_pass_layer(m) for m in layers)
        # forward hooks see a layer's own output, before Opacus wraps it in the hook that computes its norm
        self._handles = [layer.register_forward_hook(self._record) for layer in layers]
        self._tables = [m for m in layers if isinstance(m, nn.Embedding) and not m.sparse]
        for table in self._tables:
            table.sparse = True
        optimizer.accumulate = types.MethodType(_accumulate_dense, optimizer)

    def _record(self, module, args, output) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            self._outputs.append(output)
            if self.one_pass:
                self._inputs.append((module, args[0].detach()))

    def backward(self, loss) -> None:
        """Opacus' `DPTensorFastGradientClipping.backward` (mean reduction) with a norms-only first pass, and with
        `one_pass` no second one."""
        outputs, self._outputs = self._outputs, []
        inputs, self._inputs = self._inputs, []
        trainable = [(name, p) for name, p in self.net.named_parameters() if p.requires_grad]
        for _, param in trainable:
            param._norm_sample = None  # so that a norm this pass does not write shows as missing, not stale
        torch.autograd.backward(loss.loss_per_sample.mean(dim=0), inputs=outputs, retain_graph=not self.one_pass)
        grads = [output.grad for output in outputs]
        for output in outputs:
            output.grad = None
        missing = [name for name, param in trainable if param._norm_sample is None]
        if missing:  # a layer the pass did not reach would be left out of each customer's norm: never clip short
            raise RuntimeError(f"ghost clipping's first pass computed no per-customer norm for {missing[:3]}: every "
                               "trainable layer must produce a tensor output; train with ghost_clipping=False")
        self.optimizer.zero_grad()
        coefficient = self.net.get_clipping_coef()
        if self.one_pass:  # book-keeping: each layer's clipped gradient from what the first pass kept
            # the first pass differentiated the mean over the physical batch: n x coefficient weighs each customer
            weights = coefficient.to(loss.loss_per_sample.device) * loss.loss_per_sample.shape[0]
            for (module, layer_input), grad in zip(inputs, grads):
                _add_clipped_gradient(module, layer_input, grad, weights)
            return
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
        self._outputs, self._inputs = [], []
        del self.optimizer.accumulate  # the class's own again


def _accumulate_dense(optimizer) -> None:
    """`DPOptimizerFastGradientClipping.accumulate` with a dense sum: Opacus' noise step adds dense noise to it."""
    for p in optimizer.params:
        grad = p.grad.data
        if p.summed_grad is None:
            p.summed_grad = grad.to_dense() if grad.is_sparse else grad.clone()
        else:
            p.summed_grad.add_(grad)


def _one_pass_layer(module: nn.Module) -> bool:
    if type(module) not in ONE_PASS_LAYERS:  # a subclass may compute something else
        return False
    if isinstance(module, nn.Embedding):  # options whose gradient the rows added here would not follow
        return module.padding_idx is None and module.max_norm is None and not module.scale_grad_by_freq
    return True


def _add_clipped_gradient(module: nn.Module, inputs: torch.Tensor, grad: torch.Tensor | None,
                          weights: torch.Tensor) -> None:
    """Add sum_b weights[b] x (customer b's gradient) of one layer call into its parameters' .grad, from the call's
    input and the first pass's gradient at its output (batch first): what the second backward pass would give."""
    if grad is None:  # the output did not reach the loss
        return
    g = grad.float() * weights.view(-1, *([1] * (grad.dim() - 1)))  # (B, ..., out)
    params: dict[str, torch.Tensor] = {}
    if isinstance(module, nn.Linear):
        a = inputs.float().reshape(-1, module.in_features)  # (M, in)
        g2 = g.reshape(-1, module.out_features)  # (M, out)
        params["weight"] = g2.T @ a
        if module.bias is not None:
            params["bias"] = g2.sum(0)
    elif isinstance(module, nn.Embedding):
        rows = inputs.reshape(-1)
        values = g.reshape(-1, module.embedding_dim)
        # the rows are the ones the forward pass just looked up, so in range: no invariant check needed
        params["weight"] = torch.sparse_coo_tensor(rows.unsqueeze(0), values, module.weight.shape,
                                                   check_invariants=False)
    else:  # nn.LayerNorm
        normalised = F.layer_norm(inputs.float(), module.normalized_shape, eps=module.eps)
        dims = tuple(range(g.dim() - len(module.normalized_shape)))
        if module.weight is not None:
            params["weight"] = (g * normalised).sum(dims)
        if module.bias is not None:
            params["bias"] = g.sum(dims)
    for name, value in params.items():
        param = getattr(module, name)
        if not param.requires_grad:
            continue
        value = value.to(param.dtype)
        param.grad = value if param.grad is None else param.grad + value

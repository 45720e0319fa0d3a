"""``relu(bn(x) [+ residual])`` for a BatchNorm module, fused on the CPU in training mode.

:func:`batch_norm_relu` keeps the module's contract: in training mode it normalises with the
batch statistics and updates ``running_mean``/``running_var``/``num_batches_tracked`` exactly as
``nn.BatchNorm*d`` does (momentum, or the cumulative average when ``momentum`` is None; the
running variance unbiased); in eval mode (or without affine parameters) it is the module call
followed by the add and ReLU. Only the arithmetic of the training-mode forward and backward
changes (:mod:`sparsekernels.ops.batchnorm`): the same math, other rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsekernels.ops.batchnorm import batch_norm_relu_train, fused_batch_norm_applies

__all__ = ["batch_norm_relu"]


def batch_norm_relu(
    bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``relu(bn(x) + residual)`` (``residual`` optional, ``x``'s shape).

    x: ``[N, C, H, W]`` or ``[N, C]`` (any dtype and device; the fused path takes float32 CPU
    tensors, channels-last for 4-D) -> like ``x``.
    """
    use_batch_stats = bn.training or not bn.track_running_stats
    if not (use_batch_stats and bn.affine and fused_batch_norm_applies(x, residual)):
        y = bn(x)
        return torch.relu(y if residual is None else y + residual)
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y, mean, var = batch_norm_relu_train(x, bn.weight, bn.bias, bn.eps, residual)
    if bn.training and bn.track_running_stats:
        count = x.numel() // x.shape[1]
        # Through .data, as ATen's kernel updates them: in place without bumping their autograd
        # version (a graph that saved them, e.g. an ATen BatchNorm of the same module, stays valid).
        running_mean, running_var = bn.running_mean.data, bn.running_var.data
        running_mean.mul_(1.0 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
        unbiased = var.to(running_var.dtype) * (count / (count - 1))
        running_var.mul_(1.0 - factor).add_(unbiased, alpha=factor)
    return y

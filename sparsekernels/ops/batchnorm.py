"""Training-mode BatchNorm + ReLU (optionally with a residual added before the ReLU) as one
fused CPU op with autograd.

    y = relu(weight * (x - mean) / sqrt(var + eps) + bias [+ residual])

with ``mean``/``var`` the batch statistics per channel (``var`` biased, as BatchNorm normalises).
On float32 CPU tensors in eager mode, with the native extension built, the forward is a
statistics pass and one normalise-and-ReLU pass, the backward a reduction and one input-gradient
pass (``csrc/batchnorm.cpp``), instead of ATen's separate BatchNorm, add and ReLU kernels and
their backward (about 13 passes over the activations per pair, 8 of them in the backward).
Everywhere else (CUDA, other dtypes, ``torch.compile``, no extension) the same math runs as
ATen ops (:func:`batch_norm_relu_reference`).

Shapes: ``x`` and ``residual`` are ``[N, C, H, W]`` in channels-last memory or ``[N, C]``
(contiguous); ``weight``/``bias`` ``[C]``. The statistics and parameter gradients are reduced in
fixed row groups (float partials of 64 rows, added in order into float64): the same bits for any
thread count. The op does not touch running statistics; it returns the batch mean and biased
variance for the caller (:func:`sparsekernels.nn.batch_norm_relu` updates a module's).
"""

from __future__ import annotations

import os

import torch

from sparsekernels.ops.backends import native_available

__all__ = [
    "batch_norm_relu_reference",
    "batch_norm_relu_train",
    "fused_batch_norm_available",
    "fused_batch_norm_enabled",
    "fused_batch_norm_applies",
]


def fused_batch_norm_available() -> bool:
    """Whether the native extension has the fused BatchNorm + ReLU (an extension built from an
    older checkout does not)."""
    return native_available() and hasattr(torch.ops.sparsekernels_native, "bn_relu_forward")


def fused_batch_norm_enabled() -> bool:
    """Whether the fused op is built and not switched off (``SPARSEKERNELS_FUSED_BATCHNORM=0``:
    always the ATen ops, e.g. to measure what the fusion saves)."""
    return os.environ.get("SPARSEKERNELS_FUSED_BATCHNORM", "1").strip() != "0" and fused_batch_norm_available()


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as its ``[rows, C]`` channels-last matrix (a view), or None if its memory is not that."""
    if t.dim() == 2:
        return t if t.is_contiguous() else None
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: NHWC is contiguous
    return None


def fused_batch_norm_applies(x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether :func:`batch_norm_relu_train` takes the fused op for these inputs (float32 CPU,
    channels-last 4-D or contiguous 2-D, eager mode, extension built)."""
    tensors = (x,) if residual is None else (x, residual)
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and _rows(x) is not None
        and (residual is None or (residual.shape == x.shape and _rows(residual) is not None))
        and x.numel() > x.shape[1]  # more than one value per channel (else ATen raises its error)
        and not torch.compiler.is_compiling()
        and fused_batch_norm_enabled()
    )


def batch_norm_relu_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same math as ATen ops (any device and float dtype): ``(y, batch mean, biased var)``."""
    dims = [0, 2, 3] if x.dim() == 4 else [0]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    shape = [1, -1, 1, 1] if x.dim() == 4 else [1, -1]
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps) * weight.view(shape) + bias.view(shape)
    if residual is not None:
        y = y + residual
    return torch.relu(y), mean.detach(), var.detach()


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps):
        x2 = _rows(x)
        r2 = _rows(residual) if residual is not None else None
        channels = x2.shape[1]
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        out = torch.empty_like(x)  # same memory format as x
        mean, invstd, var = (torch.empty(channels, dtype=torch.float32) for _ in range(3))
        torch.ops.sparsekernels_native.bn_relu_forward(x2, w, b, r2, float(eps), _rows(out), mean, invstd, var)
        ctx.save_for_backward(x, residual, w, b, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative raises instead of being wrong
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, residual, w, b, mean, invstd = ctx.saved_tensors
        x2 = _rows(x)
        grad = grad.contiguous(memory_format=torch.channels_last) if grad.dim() == 4 else grad.contiguous()
        grad_x = torch.empty_like(x)
        grad_params = torch.empty((2, x2.shape[1]), dtype=torch.float32)
        grad_residual = torch.empty_like(residual) if residual is not None else None
        torch.ops.sparsekernels_native.bn_relu_backward(
            _rows(grad),
            x2,
            _rows(residual) if residual is not None else None,
            w,
            b,
            mean,
            invstd,
            _rows(grad_x),
            grad_params,
            _rows(grad_residual) if grad_residual is not None else None,
        )
        return grad_x, grad_params[0], grad_params[1], grad_residual, None


def batch_norm_relu_train(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode ``relu(batch_norm(x) [+ residual])`` with batch statistics.

    Returns ``(y, mean, var)``: ``y`` like ``x`` (same memory format), the batch mean and biased
    variance ``[C]`` (detached, float32 on the fused path, ``x.dtype`` otherwise). Differentiable
    in ``x``, ``weight``, ``bias`` and ``residual``.
    """
    channels = x.shape[1] if x.dim() in (2, 4) else None
    if channels is None:
        raise ValueError(f"x must be [N, C] or [N, C, H, W]; got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p.dim() != 1 or p.shape[0] != channels:
            raise ValueError(f"{name} must have shape [{channels}] (x's channels); got {tuple(p.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}; got {tuple(residual.shape)}")
    if fused_batch_norm_applies(x, residual) and weight.dtype == bias.dtype == torch.float32:
        return _BatchNormReLU.apply(x, weight, bias, residual, eps)
    return batch_norm_relu_reference(x, weight, bias, eps, residual)

"""Fused pointwise ops of the SET MLP: SReLU and dropout, with autograd.

On float32 CPU tensors in eager mode, with the native extension built, each runs as one C++
pass (``csrc/pointwise.cpp``) instead of the ~15 ATen ops of its plain expression: in a
sparse MLP, where the matmuls are cheap, those ops were most of a training step. Everywhere
else (CUDA, other dtypes, ``torch.compile``, no extension) the same math runs as the ATen
expression (:func:`srelu_reference`, :func:`dropout_reference`), which Inductor fuses itself.

SReLU (Jin et al. 2016), per feature ``f`` with ``t_r = t_l + |r|``::

    y = x + [x < t_l] (a_l - 1)(x - t_l) + [x > t_r] (a_r - 1)(x - t_r)

x: ``[..., F]``; t_left, t_right (= r), a_left, a_right: ``[F]``; y: like x. The fused forward
is bitwise equal to the expression; the backward agrees with float64 autograd within the
float32 tolerance (parameter gradients are reduced in float64, one column per thread: the
same bits for any thread count).

Dropout: the fused version keeps element ``i`` when a counter-based hash of ``(seed, i)`` is
``>= p``, with ``seed`` drawn from torch's global generator (one draw per call, so runs stay
reproducible and resumable from a checkpoint of that generator); the backward regenerates the
mask from the seed instead of storing it. Its random stream differs from
:func:`dropout_reference`'s (``torch.rand_like``): same distribution, other numbers.
"""

from __future__ import annotations

import os

import torch

from sparsekernels.ops.backends import native_available

__all__ = [
    "srelu",
    "srelu_reference",
    "dropout",
    "dropout_reference",
    "fused_available",
    "fused_enabled",
    "set_fused_enabled",
]

_SEED_HIGH = 2**62
# SPARSEKERNELS_FUSED_POINTWISE=0 (or set_fused_enabled(False)): always the ATen expressions,
# e.g. to measure what the fused ops save.
_enabled = os.environ.get("SPARSEKERNELS_FUSED_POINTWISE", "1").strip() != "0"


def fused_available() -> bool:
    """Whether the native extension has the fused pointwise ops (an extension built from an
    older checkout has the matmul kernels only)."""
    return native_available() and hasattr(torch.ops.sparsekernels_native, "srelu_forward")


def set_fused_enabled(enabled: bool) -> None:
    """Use the fused ops where they apply (default) or never (the ATen expressions everywhere)."""
    global _enabled
    _enabled = bool(enabled)


def fused_enabled() -> bool:
    """Whether float32 CPU tensors in eager mode take the fused ops now."""
    return _enabled and fused_available()


def _use_fused(*tensors: torch.Tensor) -> bool:
    return (
        _enabled
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.compiler.is_compiling()
        and fused_available()
    )


# ----------------------------------------------------------------------------- SReLU
def srelu_reference(
    x: torch.Tensor, t_left: torch.Tensor, t_right: torch.Tensor, a_left: torch.Tensor, a_right: torch.Tensor
) -> torch.Tensor:
    """SReLU as ATen ops (any device and float dtype; parameters cast to ``x.dtype``)."""
    t_l = t_left.to(x.dtype)
    t_r = t_l + t_right.abs().to(x.dtype)
    # The region masks are constants, so autograd of a few multiply-adds gives every parameter
    # its exact (piecewise) gradient. Float masks instead of torch.where: on a CPU `where` over
    # a [100, 4000] batch costs ~10x a multiply.
    below = (x < t_l).to(x.dtype)
    above = (x > t_r).to(x.dtype)
    slope_l = a_left.to(x.dtype) - 1.0
    slope_r = a_right.to(x.dtype) - 1.0
    return x + below * slope_l * (x - t_l) + above * slope_r * (x - t_r)


class _SReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t_left, t_right, a_left, a_right):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        params = [p.detach().contiguous() for p in (t_left, t_right, a_left, a_right)]
        out = torch.empty_like(x2)
        torch.ops.sparsekernels_native.srelu_forward(x2, *params, out)
        ctx.save_for_backward(x2, *params)
        ctx.shape = shape
        return out.view(shape)

    @staticmethod
    def backward(ctx, grad):
        x2, *params = ctx.saved_tensors
        grad2 = grad.reshape(x2.shape).contiguous()
        grad_x = torch.empty_like(x2)
        grad_params = torch.empty((4, x2.shape[1]), dtype=x2.dtype)
        torch.ops.sparsekernels_native.srelu_backward(grad2, x2, *params, grad_x, grad_params)
        return (grad_x.view(ctx.shape), *grad_params.unbind(0))


def srelu(
    x: torch.Tensor, t_left: torch.Tensor, t_right: torch.Tensor, a_left: torch.Tensor, a_right: torch.Tensor
) -> torch.Tensor:
    """SReLU of ``x`` ``[..., F]`` with per-feature parameters ``[F]`` (see the module docstring);
    differentiable in ``x`` and all four parameters."""
    features = x.shape[-1] if x.dim() else None
    for name, p in (("t_left", t_left), ("t_right", t_right), ("a_left", a_left), ("a_right", a_right)):
        if p.dim() != 1 or p.shape[0] != features:
            raise ValueError(f"{name} must have shape [{features}] (x's last dimension); got {tuple(p.shape)}")
    if x.numel() and _use_fused(x, t_left, t_right, a_left, a_right):
        return _SReLU.apply(x, t_left, t_right, a_left, a_right)
    return srelu_reference(x, t_left, t_right, a_left, a_right)


# ----------------------------------------------------------------------------- dropout
def dropout_reference(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout as ATen ops: the mask is ``torch.rand_like(x) >= p``, kept elements
    scaled by ``1 / (1 - p)`` (about twice as fast on a CPU as ``F.dropout``'s ``bernoulli_``)."""
    mask = (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        x2 = x.reshape(1, -1).contiguous()
        out = torch.empty_like(x2)
        torch.ops.sparsekernels_native.dropout_apply(x2, seed, p, out)
        ctx.p, ctx.seed = p, seed
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        g2 = grad.reshape(1, -1).contiguous()
        out = torch.empty_like(g2)
        torch.ops.sparsekernels_native.dropout_apply(g2, ctx.seed, ctx.p, out)
        return out.view(grad.shape), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` (any shape) with drop probability ``p`` in [0, 1); kept
    elements are scaled by ``1 / (1 - p)``. Randomness from torch's global generator."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1); got {p}")
    if p == 0.0:
        return x
    if x.numel() and _use_fused(x):
        seed = int(torch.randint(0, _SEED_HIGH, (), dtype=torch.int64))
        return _Dropout.apply(x, float(p), seed)
    return dropout_reference(x, p)

"""``torch.library`` registration of the block-sparse ops, their fake kernels and autograd.

Every op takes the layout as its six index tensors plus ``[M, N, bm, bn]`` so that
``torch.compile`` sees plain tensors and ints. The op body resolves the backend
(:mod:`sparsekernels.ops.backends`) and calls its implementation; the autograd formulas
below are written with the same ops, so backward passes run on the same backend.

Gradients (``S`` is the sparse ``[M, N]`` operand, ``G`` the output gradient)::

    sdd:  V = blocks(A @ B)          dA = dsd(dV, B^T)          dB = dds(A^T, dV)
    dsd:  Y = S @ B   (or S^T @ B)   dV = sdd(G, B^T) (sdd(B, G^T))   dB = dsd(V, G, not t)
    dds:  Y = A @ S   (or A @ S^T)   dV = sdd(A^T, G) (sdd(G^T, A))   dA = dds(G, V, not t)
    conv: y = conv(x, W)             dx = conv_input_grad(dy, W)       dV = conv_weight_grad(x, dy)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparsekernels import _checks
from sparsekernels.layout import INDEX_FIELDS, BlockLayout
from sparsekernels.ops import backends
from sparsekernels.ops.checks import conv_output_size

_LIB = "sparsekernels"
# Autograd of custom ops wants one entry per tensor of a tensor-list input.
_NO_GRADS = [None] * len(INDEX_FIELDS)


def layout_args(layout: BlockLayout) -> tuple[list[Tensor], list[int]]:
    """The op arguments that carry a layout: its index tensors and ``[M, N, bm, bn]``."""
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be a BlockLayout; got {type(layout).__name__}")
    return [getattr(layout, f) for f in INDEX_FIELDS], [*layout.shape, *layout.block_size]


def _layout(tensors: Sequence[Tensor], meta: Sequence[int]) -> BlockLayout:
    """The layout an op received. The public ops checked it on entry (``checks.check_layout``),
    so it is rewrapped without a check; in debug-checks mode it is validated again before every
    kernel, backward ones included (a layer's buffers may have been edited in place since)."""
    layout = BlockLayout._wrap(meta[:2], meta[2:], dict(zip(INDEX_FIELDS, tensors)))
    if _checks.enabled():
        layout.validate()
    return layout


def _impl(op: str, backend: str, operand: Tensor, layout: BlockLayout):
    """The backend's function ``op``; ``"auto"`` is resolved for this call's device, dtype and block size."""
    name = backends.resolve(backend, operand.device, operand.dtype, layout.block_size)
    return getattr(backends.module(name), op)


def _flatten_rows(t: Tensor) -> Tensor:
    """``[..., P, X]`` -> ``[prod(...)*P, X]`` (a view when strides allow)."""
    return t.reshape(-1, t.shape[-1])


def _sum_to_shape(grad: Tensor, shape: torch.Size) -> Tensor:
    """Reduce broadcast leading dimensions of a gradient back to ``shape``."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for i, s in enumerate(shape):
        if s == 1 and grad.shape[i] != 1:
            grad = grad.sum(i, keepdim=True)
    return grad


# ---------------------------------------------------------------------------- sdd
@torch.library.custom_op(f"{_LIB}::sdd", mutates_args=())
def sdd_op(a: Tensor, b: Tensor, layout_tensors: list[Tensor], layout_meta: list[int], backend: str) -> Tensor:
    layout = _layout(layout_tensors, layout_meta)
    return _impl("sdd", backend, a, layout)(a, b, layout)


@sdd_op.register_fake
def _(a, b, layout_tensors, layout_meta, backend):
    return a.new_empty((layout_tensors[1].shape[0], layout_meta[2], layout_meta[3]))


def _sdd_setup(ctx, inputs, output):
    a, b, layout_tensors, layout_meta, backend = inputs
    ctx.save_for_backward(a, b, *layout_tensors)
    ctx.layout_meta, ctx.backend = layout_meta, backend


# The gradient formulas, written once. Each takes the ops it needs as callables bound to the
# layout and backend (``dsd(values, b, transpose)``, ...): the custom ops' autograd passes the
# differentiable custom ops, the eager CPU path (ops/eager.py) the backend functions.
def sdd_grads(grad: Tensor, a: Tensor, b: Tensor, needs: Sequence[bool], dsd, dds) -> tuple:
    grad = grad.contiguous()
    da = dsd(grad, b.t(), False) if needs[0] else None
    db = dds(a.t(), grad, False) if needs[1] else None
    return da, db


def dsd_grads(grad: Tensor, values: Tensor, b: Tensor, t: bool, needs: Sequence[bool], sdd, dsd) -> tuple:
    dvalues = db = None
    if needs[0]:
        # Stack the batch into the reduction: S-grad = sum over batch of G_i @ B_iᵀ.
        g_cols = grad.movedim(-2, 0).reshape(grad.shape[-2], -1)  # [rows_out, batch*P]
        b_cols = b.movedim(-2, 0).reshape(b.shape[-2], -1)  # [rows_in, batch*P]
        dvalues = sdd(b_cols, g_cols.t()) if t else sdd(g_cols, b_cols.t())
    if needs[1]:
        db = dsd(values, grad, not t)
    return dvalues, db


def dds_grads(grad: Tensor, a: Tensor, values: Tensor, t: bool, needs: Sequence[bool], sdd, dds) -> tuple:
    da = dvalues = None
    if needs[0]:
        da = dds(grad, values, not t)
    if needs[1]:
        a2, g2 = _flatten_rows(a), _flatten_rows(grad)  # [batch*P, in], [batch*P, out]
        dvalues = sdd(g2.t(), a2) if t else sdd(a2.t(), g2)
    return da, dvalues


def conv_grads(grad: Tensor, x: Tensor, values: Tensor, needs: Sequence[bool], input_grad, weight_grad) -> tuple:
    dx = input_grad(grad, values, list(x.shape)) if needs[0] else None
    dvalues = weight_grad(x, grad) if needs[1] else None
    return dx, dvalues


def _bound_ops(lt: list[Tensor], meta: list[int], backend: str) -> dict:
    """The custom ops bound to one layout and backend, as the gradient formulas call them."""
    return {
        "sdd": lambda a, b: sdd_op(a, b, lt, meta, backend),
        "dsd": lambda v, b, t: dsd_op(v, lt, meta, b, t, backend),
        "dds": lambda a, v, t: dds_op(a, v, lt, meta, t, backend),
    }


def _sdd_backward(ctx, grad):
    a, b, *lt = ctx.saved_tensors
    ops = _bound_ops(lt, ctx.layout_meta, ctx.backend)
    da, db = sdd_grads(grad, a, b, ctx.needs_input_grad[:2], ops["dsd"], ops["dds"])
    return da, db, _NO_GRADS, None, None


sdd_op.register_autograd(_sdd_backward, setup_context=_sdd_setup)


# ---------------------------------------------------------------------------- dsd
@torch.library.custom_op(f"{_LIB}::dsd", mutates_args=())
def dsd_op(
    values: Tensor,
    layout_tensors: list[Tensor],
    layout_meta: list[int],
    b: Tensor,
    transpose_sparse: bool,
    backend: str,
) -> Tensor:
    layout = _layout(layout_tensors, layout_meta)
    return _impl("dsd", backend, b, layout)(values, layout, b, transpose_sparse)


@dsd_op.register_fake
def _(values, layout_tensors, layout_meta, b, transpose_sparse, backend):
    rows = layout_meta[1] if transpose_sparse else layout_meta[0]
    return b.new_empty((*b.shape[:-2], rows, b.shape[-1]))


def _dsd_setup(ctx, inputs, output):
    values, layout_tensors, layout_meta, b, transpose_sparse, backend = inputs
    ctx.save_for_backward(values, b, *layout_tensors)
    ctx.layout_meta, ctx.transpose_sparse, ctx.backend = layout_meta, transpose_sparse, backend


def _dsd_backward(ctx, grad):
    values, b, *lt = ctx.saved_tensors
    ops = _bound_ops(lt, ctx.layout_meta, ctx.backend)
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[3])
    dvalues, db = dsd_grads(grad, values, b, ctx.transpose_sparse, needs, ops["sdd"], ops["dsd"])
    return dvalues, _NO_GRADS, None, db, None, None


dsd_op.register_autograd(_dsd_backward, setup_context=_dsd_setup)


# ---------------------------------------------------------------------------- dds
@torch.library.custom_op(f"{_LIB}::dds", mutates_args=())
def dds_op(
    a: Tensor,
    values: Tensor,
    layout_tensors: list[Tensor],
    layout_meta: list[int],
    transpose_sparse: bool,
    backend: str,
) -> Tensor:
    layout = _layout(layout_tensors, layout_meta)
    return _impl("dds", backend, a, layout)(a, values, layout, transpose_sparse)


@dds_op.register_fake
def _(a, values, layout_tensors, layout_meta, transpose_sparse, backend):
    cols = layout_meta[0] if transpose_sparse else layout_meta[1]
    return a.new_empty((*a.shape[:-1], cols))


def _dds_setup(ctx, inputs, output):
    a, values, layout_tensors, layout_meta, transpose_sparse, backend = inputs
    ctx.save_for_backward(a, values, *layout_tensors)
    ctx.layout_meta, ctx.transpose_sparse, ctx.backend = layout_meta, transpose_sparse, backend


def _dds_backward(ctx, grad):
    a, values, *lt = ctx.saved_tensors
    ops = _bound_ops(lt, ctx.layout_meta, ctx.backend)
    da, dvalues = dds_grads(grad, a, values, ctx.transpose_sparse, ctx.needs_input_grad[:2], ops["sdd"], ops["dds"])
    return da, dvalues, _NO_GRADS, None, None, None


dds_op.register_autograd(_dds_backward, setup_context=_dds_setup)


# ---------------------------------------------------------------------------- conv2d
@torch.library.custom_op(f"{_LIB}::conv2d", mutates_args=())
def conv2d_op(
    x: Tensor,
    values: Tensor,
    layout_tensors: list[Tensor],
    layout_meta: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    backend: str,
) -> Tensor:
    layout = _layout(layout_tensors, layout_meta)
    fn = _impl("conv2d_forward", backend, x, layout)
    return fn(x, values, layout, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))


@conv2d_op.register_fake
def _(x, values, layout_tensors, layout_meta, kernel_size, stride, padding, dilation, backend):
    K = layout_meta[0] // (kernel_size[0] * kernel_size[1])
    Ho = conv_output_size(x.shape[2], kernel_size[0], stride[0], padding[0], dilation[0])
    Wo = conv_output_size(x.shape[3], kernel_size[1], stride[1], padding[1], dilation[1])
    return torch.empty((x.shape[0], K, Ho, Wo), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op(f"{_LIB}::conv2d_input_grad", mutates_args=())
def conv2d_input_grad_op(
    dy: Tensor,
    values: Tensor,
    layout_tensors: list[Tensor],
    layout_meta: list[int],
    input_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    backend: str,
) -> Tensor:
    layout = _layout(layout_tensors, layout_meta)
    fn = _impl("conv2d_input_grad", backend, dy, layout)
    return fn(
        dy, values, layout, tuple(input_shape), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation)
    )


@conv2d_input_grad_op.register_fake
def _(dy, values, layout_tensors, layout_meta, input_shape, kernel_size, stride, padding, dilation, backend):
    return torch.empty(input_shape, dtype=dy.dtype, device=dy.device, memory_format=torch.channels_last)


@torch.library.custom_op(f"{_LIB}::conv2d_weight_grad", mutates_args=())
def conv2d_weight_grad_op(
    x: Tensor,
    dy: Tensor,
    layout_tensors: list[Tensor],
    layout_meta: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    backend: str,
) -> Tensor:
    layout = _layout(layout_tensors, layout_meta)
    fn = _impl("conv2d_weight_grad", backend, x, layout)
    return fn(x, dy, layout, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))


@conv2d_weight_grad_op.register_fake
def _(x, dy, layout_tensors, layout_meta, kernel_size, stride, padding, dilation, backend):
    return x.new_empty((layout_tensors[1].shape[0], layout_meta[2], layout_meta[3]))


def _conv_setup(ctx, inputs, output):
    x, values, layout_tensors, layout_meta, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, values, *layout_tensors)
    ctx.args = (layout_meta, kernel_size, stride, padding, dilation, backend)


def _conv_backward(ctx, grad):
    x, values, *lt = ctx.saved_tensors
    meta, kernel_size, stride, padding, dilation, backend = ctx.args
    geometry = (kernel_size, stride, padding, dilation)
    dx, dvalues = conv_grads(
        grad,
        x,
        values,
        ctx.needs_input_grad[:2],
        lambda dy, v, shape: conv2d_input_grad_op(dy, v, lt, meta, shape, *geometry, backend),
        lambda xx, dy: conv2d_weight_grad_op(xx, dy, lt, meta, *geometry, backend),
    )
    return dx, dvalues, _NO_GRADS, None, None, None, None, None, None


conv2d_op.register_autograd(_conv_backward, setup_context=_conv_setup)

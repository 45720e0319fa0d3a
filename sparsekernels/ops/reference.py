"""Plain-PyTorch block-sparse products: the oracle of every kernel test and the fallback backend.

Notation: ``S`` is the sparse ``[M, N]`` matrix given by ``values: [nnz, bm, bn]`` over
``layout`` (see :mod:`sparsekernels.layout`). Every function works on any device and any
floating dtype (float64 included), accepts non-contiguous dense operands, and is
differentiable by autograd. They never build the dense ``S``: each active block is
multiplied on its own (gather, batched matmul, scatter-add), which is also the fast way
to run them on a CPU at low density.

float16 and bfloat16 operands are multiplied and summed in float32 and the result rounded
once to their dtype, as the kernels do (fp32 accumulation): the oracle must not be less
accurate than what it checks. Zero-size operands (any dimension 0, ``nnz = 0``) give the
exact empty or all-zero result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparsekernels.conv_layout import conv_matrix_to_weight, conv_weight_to_matrix
from sparsekernels.layout import BlockLayout
from sparsekernels.ops.checks import (
    check_conv,
    check_conv_grad_output,
    check_dds,
    check_dsd,
    check_operands,
    check_sdd,
    zero_size_conv_forward,
    zero_size_conv_input_grad,
    zero_size_conv_weight_grad,
)

__all__ = ["sdd", "dsd", "dds", "conv2d"]

# Dtypes computed in float32 and rounded back (fp32 accumulation, like the kernels).
_UPCAST = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _UPCAST else dtype


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Sampled dense-dense product: the blocks of ``a @ b`` at the layout's active blocks.

    a: ``[M, K]``, b: ``[K, N]`` (same float dtype) -> values ``[nnz, bm, bn]``.
    """
    check_sdd(a, b, layout)
    dtype, acc = a.dtype, _compute_dtype(a.dtype)
    a, b = a.to(acc), b.to(acc)
    (bm, bn), (R, C) = layout.block_size, layout.grid
    K = a.shape[1]  # explicit sizes: a reshape with -1 is ambiguous when M or N is 0
    a_rows = a.reshape(R, bm, K)[layout.row_indices.long()]  # [nnz, bm, K]
    b_cols = b.reshape(K, C, bn).transpose(0, 1)[layout.col_indices.long()]  # [nnz, K, bn]
    return torch.bmm(a_rows, b_cols).to(dtype)


def dsd(values: torch.Tensor, layout: BlockLayout, b: torch.Tensor, transpose_sparse: bool = False) -> torch.Tensor:
    """Sparse times dense: ``S @ b`` (or ``Sᵀ @ b`` when ``transpose_sparse``).

    values: ``[nnz, bm, bn]``; b: ``[..., N, P]`` (``[..., M, P]`` transposed)
    -> ``[..., M, P]`` (``[..., N, P]`` transposed).
    """
    check_dsd(values, layout, b, transpose_sparse)
    dtype, acc = b.dtype, _compute_dtype(b.dtype)
    values, b = values.to(acc), b.to(acc)
    (bm, bn), (R, C) = layout.block_size, layout.grid
    if transpose_sparse:
        values = values.transpose(-1, -2)
        (bm, bn), (R, C) = (bn, bm), (C, R)
        out_idx, in_idx = layout.col_indices.long(), layout.row_indices.long()
    else:
        out_idx, in_idx = layout.row_indices.long(), layout.col_indices.long()
    lead, P = b.shape[:-2], b.shape[-1]
    b_blocks = b.reshape(*lead, C, bn, P)[..., in_idx, :, :]  # [..., nnz, bn, P]
    partial = torch.matmul(values, b_blocks)  # [..., nnz, bm, P]
    out = partial.new_zeros(*lead, R, bm, P).index_add(-3, out_idx, partial)
    return out.reshape(*lead, R * bm, P).to(dtype)


def dds(a: torch.Tensor, values: torch.Tensor, layout: BlockLayout, transpose_sparse: bool = False) -> torch.Tensor:
    """Dense times sparse: ``a @ S`` (or ``a @ Sᵀ`` when ``transpose_sparse``).

    a: ``[..., P, M]`` (``[..., P, N]`` transposed); values: ``[nnz, bm, bn]``
    -> ``[..., P, N]`` (``[..., P, M]`` transposed).
    """
    check_dds(a, values, layout, transpose_sparse)
    dtype, acc = a.dtype, _compute_dtype(a.dtype)
    a, values = a.to(acc), values.to(acc)
    (bm, bn), (R, C) = layout.block_size, layout.grid
    if transpose_sparse:
        values = values.transpose(-1, -2)
        (bm, bn), (R, C) = (bn, bm), (C, R)
        in_idx, out_idx = layout.col_indices.long(), layout.row_indices.long()
    else:
        in_idx, out_idx = layout.row_indices.long(), layout.col_indices.long()
    lead, P = a.shape[:-2], a.shape[-2]
    a_blocks = a.reshape(*lead, P, R, bm)[..., in_idx, :].movedim(-2, -3)  # [..., nnz, P, bm]
    partial = torch.matmul(a_blocks, values)  # [..., nnz, P, bn]
    out = partial.new_zeros(*lead, C, P, bn).index_add(-3, out_idx, partial)
    return out.movedim(-3, -2).reshape(*lead, P, C * bn).to(dtype)


def conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-sparse 2-D convolution (groups = 1, zero padding).

    x: ``[N, C, H, W]`` (any memory format); values ``[nnz, bk, bc]`` over a layout of shape
    ``[R*S*K, C]`` (tap-major stacking, see :mod:`sparsekernels.conv_layout`);
    bias: ``[K]`` or None -> ``[N, K, Ho, Wo]``. The reference rebuilds the dense weight and
    calls ``F.conv2d``: clarity over speed. A NaN/Inf in ``x`` takes a slow path over the stored
    blocks instead, so that unstored blocks stay structural zeros as in the kernels.
    """
    kernel_size, stride, padding, dilation = check_conv(x, values, layout, kernel_size, stride, padding, dilation)
    empty = zero_size_conv_forward(x, layout, kernel_size, stride, padding, dilation)
    if empty is not None:  # torch's convolutions reject zero output channels or batches
        return empty if bias is None else empty + bias.view(1, -1, 1, 1)
    dtype, acc = x.dtype, _compute_dtype(x.dtype)
    if not bool(torch.isfinite(x).all()):
        # The dense weight's zeros would turn a NaN/Inf input into NaN through unstored blocks.
        y = _structural_conv_forward(x.to(acc), values.to(acc), layout, kernel_size, stride, padding, dilation)
        return (y if bias is None else y + bias.to(acc).view(1, -1, 1, 1)).to(dtype)
    weight = conv_matrix_to_weight(layout.values_to_dense(values.to(acc)), kernel_size)
    bias = None if bias is None else bias.to(acc)
    return F.conv2d(x.to(acc), weight, bias, stride, padding, dilation).to(dtype)


# ---------------------------------------------------------------------- convolution pieces
# The backend interface splits the convolution into forward, input gradient and weight
# gradient (what the autograd formula of sparsekernels.ops.library calls). Outputs are
# channels-last, as the kernels produce them.


def conv2d_forward(x, values, layout, kernel_size, stride, padding, dilation):
    """x ``[N, C, H, W]`` -> y ``[N, K, Ho, Wo]`` (channels-last memory), no bias."""
    y = conv2d(x, values, layout, kernel_size, stride, padding, dilation)
    return y.contiguous(memory_format=torch.channels_last)


def conv2d_input_grad(dy, values, layout, input_shape, kernel_size, stride, padding, dilation):
    """dy ``[N, K, Ho, Wo]`` -> dx ``[N, C, H, W]`` (channels-last memory)."""
    check_operands(layout, values, dy=dy)
    kernel_size, stride, padding, dilation = check_conv_grad_output(
        dy, layout, input_shape, kernel_size, stride, padding, dilation
    )
    empty = zero_size_conv_input_grad(dy, layout, tuple(int(s) for s in input_shape))
    if empty is not None:
        return empty
    dtype, acc = dy.dtype, _compute_dtype(dy.dtype)
    if not bool(torch.isfinite(dy).all()):
        dx = _structural_conv_input_grad(
            dy.to(acc), values.to(acc), layout, input_shape, kernel_size, stride, padding, dilation
        )
        return dx.to(dtype).contiguous(memory_format=torch.channels_last)
    weight = conv_matrix_to_weight(layout.values_to_dense(values.to(acc)), kernel_size)
    dx = torch.nn.grad.conv2d_input(list(input_shape), weight, dy.to(acc), stride, padding, dilation)
    return dx.to(dtype).contiguous(memory_format=torch.channels_last)


def conv2d_weight_grad(x, dy, layout, kernel_size, stride, padding, dilation):
    """x ``[N, C, H, W]``, dy ``[N, K, Ho, Wo]`` -> dvalues ``[nnz, bk, bc]`` (active blocks only)."""
    kernel_size, stride, padding, dilation = check_conv(x, None, layout, kernel_size, stride, padding, dilation)
    check_operands(layout, None, x=x, dy=dy)
    check_conv_grad_output(dy, layout, x.shape, kernel_size, stride, padding, dilation)
    R, S = kernel_size
    K = layout.shape[0] // (R * S)
    empty = zero_size_conv_weight_grad(x, dy, layout)
    if empty is not None:
        return empty
    dtype, acc = x.dtype, _compute_dtype(x.dtype)
    dweight = torch.nn.grad.conv2d_weight(x.to(acc), [K, x.shape[1], R, S], dy.to(acc), stride, padding, dilation)
    return layout.dense_to_values(conv_weight_to_matrix(dweight)).to(dtype).contiguous()


def _tap_slices(kernel_size, stride, dilation, out_hw):
    """Per tap ``(t, rows, cols)``: the strided windows of the padded input that tap ``t`` reads."""
    (R, S), (sh, sw), (dh, dw), (Ho, Wo) = kernel_size, stride, dilation, out_hw
    for t in range(R * S):
        i, j = divmod(t, S)
        yield t, slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)


def _structural_conv_forward(x, values, layout, kernel_size, stride, padding, dilation):
    """Forward over the stored blocks only (one einsum per block): unstored blocks are structural
    zeros, so a NaN/Inf input reaches only the outputs its stored blocks touch, as in the
    kernels; zero padding is real zeros (``0 * NaN = NaN`` for a non-finite stored weight)."""
    N, _, H, W = x.shape
    (bk, bc), T = layout.block_size, kernel_size[0] * kernel_size[1]
    Kb = layout.grid[0] // T
    Ho = (H + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    x_pad = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    y = x.new_zeros(N, Kb * bk, Ho, Wo)
    windows = {t: (r, c) for t, r, c in _tap_slices(kernel_size, stride, dilation, (Ho, Wo))}
    for s, (row, cb) in enumerate(zip(layout.row_indices.tolist(), layout.col_indices.tolist())):
        t, kb = divmod(row, Kb)
        r, c = windows[t]
        patch = x_pad[:, cb * bc : (cb + 1) * bc, r, c]  # [N, bc, Ho, Wo]
        y[:, kb * bk : (kb + 1) * bk] += torch.einsum("kc,nchw->nkhw", values[s], patch)
    return y


def _structural_conv_input_grad(dy, values, layout, input_shape, kernel_size, stride, padding, dilation):
    """Input gradient over the stored blocks only (the transpose of the forward above)."""
    N, C, H, W = input_shape
    (bk, bc), T = layout.block_size, kernel_size[0] * kernel_size[1]
    Kb = layout.grid[0] // T
    Ho, Wo = dy.shape[2:]
    dx_pad = dy.new_zeros(N, C, H + 2 * padding[0], W + 2 * padding[1])
    windows = {t: (r, c) for t, r, c in _tap_slices(kernel_size, stride, dilation, (Ho, Wo))}
    for s, (row, cb) in enumerate(zip(layout.row_indices.tolist(), layout.col_indices.tolist())):
        t, kb = divmod(row, Kb)
        r, c = windows[t]
        dx_pad[:, cb * bc : (cb + 1) * bc, r, c] += torch.einsum(
            "kc,nkhw->nchw", values[s], dy[:, kb * bk : (kb + 1) * bk]
        )
    return dx_pad[:, :, padding[0] : padding[0] + H, padding[1] : padding[1] + W]

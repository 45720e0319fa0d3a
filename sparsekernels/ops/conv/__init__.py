"""Triton block-sparse 2-D convolution: forward, input gradient and weight gradient.

The three functions have the signatures of the reference backend's convolution pieces
(:mod:`sparsekernels.ops.reference`) and share its layout convention
(:mod:`sparsekernels.conv_layout`): weight ``[K, C, R, S]`` stored as ``Wm [R*S*K, C]``
with values ``[nnz, bk, bc]``. All three are implicit GEMMs over channels-last (NHWC)
activations; no im2col buffer is ever built.

Memory format: channels-last is the fast path. An NCHW (or otherwise strided) activation is
first copied into channels-last memory, once per call: one extra read and write of the
tensor, which for a sparse layer can cost as much as the convolution itself. Outputs are
always channels-last, so a network kept channels-last end to end pays nothing.

Supported: fp32 / fp16 / bf16 (fp32 accumulation; TF32 for fp32 operands only when
``torch.backends.cudnn.allow_tf32`` is True), stride >= 1, zero padding, any kernel size,
block sizes 16, 32, 64 and 128 per dimension. Dilation > 1 runs the reference implementation
with a warning.
"""

from __future__ import annotations

import warnings

import torch

from sparsekernels.layout import BlockLayout, check_kernel_block_size
from sparsekernels.ops import reference
from sparsekernels.ops._triton_utils import check_kernel_dtype
from sparsekernels.ops.checks import check_conv, check_conv_grad_output, check_operands, conv_output_size
from sparsekernels.ops.conv.forward import launch_forward
from sparsekernels.ops.conv.input_grad import launch_input_grad
from sparsekernels.ops.conv.weight_grad import launch_weight_grad

__all__ = ["conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad"]

# Kernels index pixels with int32 and channels with int64 (see the kernels).
_INT32_MAX = 2**31 - 1


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` in channels-last memory (a no-op when it already is; else one copy)."""
    return t.contiguous(memory_format=torch.channels_last)


def _allow_tf32() -> bool:
    # Convolutions follow cuDNN's flag, as torch's own conv does (not the matmul flag).
    return bool(torch.backends.cudnn.allow_tf32)


def _out_size(hw: tuple[int, int], kernel_size, stride, padding) -> tuple[int, int]:
    return tuple(conv_output_size(hw[i], kernel_size[i], stride[i], padding[i], 1) for i in range(2))


def _check_kernel_args(layout: BlockLayout, pixels: int, **tensors: torch.Tensor) -> None:
    """What the kernels add to the reference's checks: block sizes, dtypes, index range
    (``pixels``: the larger of ``N*H*W`` and ``N*Ho*Wo``)."""
    check_kernel_block_size(layout.block_size)
    for name, t in tensors.items():
        check_kernel_dtype(t, name)
    if pixels > _INT32_MAX:
        raise ValueError(
            f"the convolution has too many pixels for the kernels' int32 pixel index: {pixels} > {_INT32_MAX}"
        )


def _falls_back(dilation: tuple[int, int]) -> bool:
    if dilation == (1, 1):
        return False
    warnings.warn(
        f"the Triton convolution kernels support dilation 1 only; dilation={dilation} runs the "
        "reference implementation (dense weight + torch convolution)",
        stacklevel=3,
    )
    return True


def conv2d_forward(x, values, layout, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """Block-sparse convolution without bias.

    x: ``[N, C, H, W]`` (fp32|fp16|bf16, any memory format; channels-last is the fast path);
    values: ``[nnz, bk, bc]`` same dtype; layout of shape ``[R*S*K, C]``; kernel_size, stride,
    padding, dilation: pairs of ints -> y ``[N, K, Ho, Wo]`` in channels-last memory, dtype of x.
    """
    kernel_size, stride, padding, dilation = check_conv(x, values, layout, kernel_size, stride, padding, dilation)
    if _falls_back(dilation):
        return reference.conv2d_forward(x, values, layout, kernel_size, stride, padding, dilation)
    N, _, H, W = x.shape
    Ho, Wo = _out_size((H, W), kernel_size, stride, padding)
    _check_kernel_args(layout, N * max(H * W, Ho * Wo), x=x, values=values)
    R, S = kernel_size
    K = layout.shape[0] // (R * S)
    return launch_forward(
        _channels_last(x),
        values.contiguous(),
        layout,
        K,
        (Ho, Wo),
        kernel_size,
        stride,
        padding,
        _allow_tf32(),
    )


def conv2d_input_grad(dy, values, layout, input_shape, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """Gradient of the convolution with respect to its input.

    dy: ``[N, K, Ho, Wo]`` (fp32|fp16|bf16, any memory format); values ``[nnz, bk, bc]`` same
    dtype; input_shape: ``(N, C, H, W)`` of x -> dx ``[N, C, H, W]`` in channels-last memory,
    dtype of dy.
    """
    check_operands(layout, values, dy=dy)
    kernel_size, stride, padding, dilation = check_conv_grad_output(
        dy, layout, input_shape, kernel_size, stride, padding, dilation
    )
    input_shape = tuple(int(s) for s in input_shape)
    if _falls_back(dilation):
        return reference.conv2d_input_grad(dy, values, layout, input_shape, kernel_size, stride, padding, dilation)
    N, _, H, W = input_shape
    Ho, Wo = _out_size((H, W), kernel_size, stride, padding)
    _check_kernel_args(layout, N * max(H * W, Ho * Wo), dy=dy, values=values)
    return launch_input_grad(
        _channels_last(dy),
        values.contiguous(),
        layout,
        input_shape,
        kernel_size,
        stride,
        padding,
        _allow_tf32(),
    )


def conv2d_weight_grad(x, dy, layout, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """Gradient of the convolution with respect to the values of the active blocks.

    x: ``[N, C, H, W]``, dy: ``[N, K, Ho, Wo]`` (same dtype, fp32|fp16|bf16, any memory format)
    -> dvalues ``[nnz, bk, bc]`` (contiguous, dtype of x).
    """
    kernel_size, stride, padding, dilation = check_conv(x, None, layout, kernel_size, stride, padding, dilation)
    check_operands(layout, None, x=x, dy=dy)
    check_conv_grad_output(dy, layout, x.shape, kernel_size, stride, padding, dilation)
    if _falls_back(dilation):
        return reference.conv2d_weight_grad(x, dy, layout, kernel_size, stride, padding, dilation)
    N, _, H, W = x.shape
    Ho, Wo = _out_size((H, W), kernel_size, stride, padding)
    _check_kernel_args(layout, N * max(H * W, Ho * Wo), x=x, dy=dy)
    return launch_weight_grad(
        _channels_last(x),
        _channels_last(dy),
        layout.row_indices,
        layout.col_indices,
        layout.block_size,
        kernel_size,
        stride,
        padding,
        _allow_tf32(),
        row_offsets=layout.row_offsets,
    )

"""The Triton backend: matmul kernels of :mod:`sparsekernels.ops.matmul` and convolution
kernels of :mod:`sparsekernels.ops.conv`, with the signatures of the reference backend.

Imported on first use of ``backend="triton"`` (never at ``import sparsekernels``); on CPU
tensors the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``).

This module is the dispatch layer in front of the kernels: it checks the arguments (the
layout too, when the library did not build it, see :func:`sparsekernels.ops.checks.check_layout`),
refuses dtypes the kernels do not support, and answers zero-size operands (empty outputs,
empty reductions, ``nnz = 0``) without launching anything, so a kernel never sees a grid or
a reshape of zero elements.
"""

from __future__ import annotations

import torch

from sparsekernels.layout import BlockLayout
from sparsekernels.ops import checks
from sparsekernels.ops._triton_utils import check_kernel_dtype
from sparsekernels.ops.conv import conv2d_forward as _conv2d_forward
from sparsekernels.ops.conv import conv2d_input_grad as _conv2d_input_grad
from sparsekernels.ops.conv import conv2d_weight_grad as _conv2d_weight_grad
from sparsekernels.ops.matmul import dds as _dds
from sparsekernels.ops.matmul import dsd as _dsd
from sparsekernels.ops.matmul import sdd as _sdd

__all__ = ["sdd", "dsd", "dds", "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad"]


def _kernel_dtypes(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        check_kernel_dtype(t, name)


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """a ``[M, K]``, b ``[K, N]`` -> values ``[nnz, bm, bn]`` (see :func:`sparsekernels.ops.reference.sdd`)."""
    checks.check_sdd(a, b, layout)
    _kernel_dtypes(a=a, b=b)
    out = checks.zero_size_sdd(a, b, layout)
    return _sdd(a, b, layout) if out is None else out


def dsd(values: torch.Tensor, layout: BlockLayout, b: torch.Tensor, transpose_sparse: bool = False) -> torch.Tensor:
    """``S @ b`` (``Sᵀ @ b``); b ``[..., N, P]`` -> ``[..., M, P]`` (see the reference)."""
    checks.check_dsd(values, layout, b, transpose_sparse)
    _kernel_dtypes(values=values, b=b)
    out = checks.zero_size_dsd(values, layout, b, transpose_sparse)
    return _dsd(values, layout, b, transpose_sparse) if out is None else out


def dds(a: torch.Tensor, values: torch.Tensor, layout: BlockLayout, transpose_sparse: bool = False) -> torch.Tensor:
    """``a @ S`` (``a @ Sᵀ``); a ``[..., P, M]`` -> ``[..., P, N]`` (see the reference)."""
    checks.check_dds(a, values, layout, transpose_sparse)
    _kernel_dtypes(a=a, values=values)
    out = checks.zero_size_dds(a, values, layout, transpose_sparse)
    return _dds(a, values, layout, transpose_sparse) if out is None else out


def conv2d_forward(x, values, layout, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """x ``[N, C, H, W]`` -> y ``[N, K, Ho, Wo]`` (channels-last memory), no bias."""
    ks, st, pd, dl = checks.check_conv(x, values, layout, kernel_size, stride, padding, dilation)
    _kernel_dtypes(x=x, values=values)
    out = checks.zero_size_conv_forward(x, layout, ks, st, pd, dl)
    return _conv2d_forward(x, values, layout, ks, st, pd, dl) if out is None else out


def conv2d_input_grad(dy, values, layout, input_shape, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """dy ``[N, K, Ho, Wo]`` -> dx ``[N, C, H, W]`` (``input_shape``, channels-last memory)."""
    checks.check_operands(layout, values, dy=dy)
    ks, st, pd, dl = checks.check_conv_grad_output(dy, layout, input_shape, kernel_size, stride, padding, dilation)
    _kernel_dtypes(dy=dy, values=values)
    input_shape = tuple(int(s) for s in input_shape)
    out = checks.zero_size_conv_input_grad(dy, layout, input_shape)
    return _conv2d_input_grad(dy, values, layout, input_shape, ks, st, pd, dl) if out is None else out


def conv2d_weight_grad(x, dy, layout, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """x ``[N, C, H, W]``, dy ``[N, K, Ho, Wo]`` -> dvalues ``[nnz, bk, bc]``."""
    ks, st, pd, dl = checks.check_conv(x, None, layout, kernel_size, stride, padding, dilation)
    checks.check_operands(layout, None, x=x, dy=dy)
    checks.check_conv_grad_output(dy, layout, x.shape, ks, st, pd, dl)
    _kernel_dtypes(x=x, dy=dy)
    out = checks.zero_size_conv_weight_grad(x, dy, layout)
    return _conv2d_weight_grad(x, dy, layout, ks, st, pd, dl) if out is None else out

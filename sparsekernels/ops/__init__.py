"""Block-sparse operations with backend dispatch and autograd.

``sdd``, ``dsd``, ``dds`` and ``conv2d`` take ``backend="auto" | "reference" | "triton" |
"native"`` (see :mod:`sparsekernels.ops.backends`) and are differentiable; they run as
``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` traces through them. In
plain eager mode on the native CPU backend they skip that machinery (:mod:`.eager`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsekernels.layout import BlockLayout
from sparsekernels.ops import checks, eager
from sparsekernels.ops.library import conv2d_op, dds_op, dsd_op, layout_args, sdd_op

__all__ = ["sdd", "dsd", "dds", "conv2d"]


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, *, backend: str = "auto") -> torch.Tensor:
    """Blocks of ``a @ b`` at the layout's active blocks.

    a: ``[M, K]``, b: ``[K, N]`` (fp32|bf16|fp16, or any float on the reference) -> ``[nnz, bm, bn]``.
    """
    checks.check_sdd(a, b, layout)
    if eager.use_eager(backend, a, b):
        return eager.sdd(a, b, layout)
    return sdd_op(a, b, *layout_args(layout), backend)


def dsd(
    values: torch.Tensor,
    layout: BlockLayout,
    b: torch.Tensor,
    transpose_sparse: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``S @ b`` (``Sᵀ @ b`` when ``transpose_sparse``); b: ``[..., N, P]`` -> ``[..., M, P]``."""
    checks.check_dsd(values, layout, b, transpose_sparse)
    if eager.use_eager(backend, values, b):
        return eager.dsd(values, layout, b, transpose_sparse)
    return dsd_op(values, *layout_args(layout), b, bool(transpose_sparse), backend)


def dds(
    a: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    transpose_sparse: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``a @ S`` (``a @ Sᵀ`` when ``transpose_sparse``); a: ``[..., P, M]`` -> ``[..., P, N]``."""
    checks.check_dds(a, values, layout, transpose_sparse)
    if eager.use_eager(backend, a, values):
        return eager.dds(a, values, layout, transpose_sparse)
    return dds_op(a, values, *layout_args(layout), bool(transpose_sparse), backend)


def conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Block-sparse convolution, groups = 1 (layout convention: :mod:`sparsekernels.conv_layout`).

    x: ``[N, C, H, W]`` (channels-last memory is the fast path; NCHW is converted once);
    values ``[nnz, bk, bc]``; bias ``[K]`` or None -> ``[N, K, Ho, Wo]`` in channels-last memory.
    """
    ks, st, pd, dl = checks.check_conv(x, values, layout, kernel_size, stride, padding, dilation)
    if eager.use_eager(backend, x, values):
        y = eager.conv2d(x, values, layout, (ks, st, pd, dl))
    else:
        y = conv2d_op(x, values, *layout_args(layout), list(ks), list(st), list(pd), list(dl), backend)
    if bias is not None:
        if bias.shape != (y.shape[1],):
            raise ValueError(f"bias must have shape [{y.shape[1]}]; got {tuple(bias.shape)}")
        y = y + bias.view(1, -1, 1, 1)
    return y

"""SparseLinear: a drop-in ``nn.Linear`` whose weight is block-sparse."""

from __future__ import annotations

import torch
from torch import nn

from sparsekernels import ops
from sparsekernels.layout import BlockLayout, normalize_block_size
from sparsekernels.nn._block_sparse import BlockSparseWeight, autocast_inputs, top_blocks_layout


class SparseLinear(BlockSparseWeight):
    """``y = x @ Wᵀ + b`` with ``W: [out_features, in_features]`` stored as active blocks.

    Args:
        density: fraction of active blocks of a random initial layout (None and no
            ``layout``: every block active).
        block_size: int or ``(bm, bn)`` over ``(out_features, in_features)``; the kernels
            support 16, 32, 64, 128.
        layout: an explicit ``BlockLayout`` of shape ``[out_features, in_features]``.

    Shapes: x ``[..., in_features]`` (fp32|bf16|fp16; float64 on the reference backend)
    -> ``[..., out_features]``. Parameters: ``weight_values [nnz, bm, bn]``, ``bias [out]``.
    Forward is ``dds(x, W, transpose_sparse=True)``; backward computes dX through the
    transposed traversal and dW only at active blocks (SDD); no dense weight is built.
    Initialisation: ``U(-1/sqrt(f), 1/sqrt(f))`` for weights and bias with
    ``f = in_features × density`` (the mean active fan-in), ``nn.Linear``'s rule at density 1.

    Not a subclass of ``nn.Linear``: ``weight`` is a property giving a dense ``[out, in]``
    copy (assigning it writes into the active blocks), see
    :mod:`sparsekernels.nn._block_sparse`. ``to_sparse_bsr``/``from_sparse_bsr`` convert to and
    from ``torch.sparse_bsr`` tensors (for inference with ``torch.sparse``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        density: float | None = None,
        block_size: int | tuple[int, int] = 32,
        layout: BlockLayout | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if layout is not None and not isinstance(layout, BlockLayout):
            raise TypeError(f"layout must be a BlockLayout or None; got {type(layout).__name__}")
        bm, bn = normalize_block_size(block_size) if layout is None else layout.block_size
        if out_features % bm:
            raise ValueError(f"block_size ({bm}) must divide out_features ({out_features})")
        if in_features % bn:
            raise ValueError(f"block_size ({bn}) must divide in_features ({in_features})")
        self.in_features = in_features
        self.out_features = out_features
        self._init_weight((out_features, in_features), (bm, bn), density, layout, device, dtype)
        factory = {"device": self.weight_values.device, "dtype": self.weight_values.dtype}
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def _dense_fan_in(self) -> int:
        return self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"input must have in_features = {self.in_features} in its last dimension; got shape {tuple(x.shape)}"
            )
        x, values, bias = autocast_inputs(x, self.weight_values, self.bias)
        lead = x.shape[:-1]
        y = ops.dds(x.reshape(-1, self.in_features), values, self.layout, True, backend=self.backend)
        self._maybe_hook_dense_grad(x, y)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, self.out_features)

    def _dense_weight_grad(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        # dL/dW = Gᵀ X over all rows: [out, rows] @ [rows, in]
        return grad_output.reshape(-1, self.out_features).t().float() @ x.reshape(-1, self.in_features).float()

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        *,
        density: float | None = None,
        mask: torch.Tensor | None = None,
        block_size: int | tuple[int, int] = 32,
        layout: BlockLayout | None = None,
    ) -> "SparseLinear":
        """Sparse copy of ``linear``: keep the blocks of largest L2 norm (``density``), the blocks
        touched by an element ``mask [out, in]``, the blocks of ``layout`` (shape ``[out, in]``;
        its block size wins over ``block_size``), or every block (none of them)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear; got {type(linear).__name__}")
        if sum(x is not None for x in (density, mask, layout)) > 1:
            raise ValueError("pass at most one of density, mask and layout")
        if layout is not None:
            if tuple(layout.shape) != tuple(linear.weight.shape):
                raise ValueError(f"layout must have shape {tuple(linear.weight.shape)}; got {tuple(layout.shape)}")
            block_size = layout.block_size
        weight = linear.weight.detach()
        block_size = normalize_block_size(block_size)
        out_f, in_f = weight.shape
        if out_f % block_size[0] or in_f % block_size[1]:
            raise ValueError(
                f"block_size {block_size} must divide the weight shape (out_features={out_f}, in_features={in_f})"
            )
        if layout is not None:
            layout = layout.to(weight.device)
        elif mask is not None:
            if tuple(mask.shape) != (out_f, in_f):
                raise ValueError(f"mask must have shape {(out_f, in_f)}; got {tuple(mask.shape)}")
            layout = BlockLayout.from_mask(mask.to(weight.device), block_size)
        else:
            layout = top_blocks_layout(weight, block_size, 1.0 if density is None else density)
        layer = cls(in_f, out_f, linear.bias is not None, layout=layout, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight_values.copy_(layout.dense_to_values(weight))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (zeros outside the active blocks)."""
        w = self.weight_values.detach()
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.layout.values_to_dense(w))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def to_sparse_bsr(self) -> torch.Tensor:
        """The weight ``[out_features, in_features]`` as a ``torch.sparse_bsr`` tensor (values
        ``[nnz, bm, bn]`` copied and detached, int32 indices), e.g. for
        ``torch.nn.functional.linear(x, layer.to_sparse_bsr(), layer.bias)`` at inference."""
        return self._matrix_to_sparse_bsr()

    @classmethod
    def from_sparse_bsr(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "SparseLinear":
        """A ``SparseLinear`` whose weight is the BSR tensor ``weight [out, in]`` (its blocks,
        ``[bm, bn]``, become the layout; values and ``bias [out]`` are copied)."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError("weight must be a 2-D torch.sparse_bsr tensor [out_features, in_features]")
        out_f, in_f = weight.shape
        layout = cls._layout_from_sparse_bsr(weight, (out_f, in_f), "weight")
        if bias is not None and tuple(bias.shape) != (out_f,):
            raise ValueError(f"bias must have shape ({out_f},); got {tuple(bias.shape)}")
        values = weight.values()
        layer = cls(in_f, out_f, bias is not None, layout=layout, device=values.device, dtype=values.dtype)
        with torch.no_grad():
            layer.weight_values.copy_(values)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, {super().extra_repr()}"
        )

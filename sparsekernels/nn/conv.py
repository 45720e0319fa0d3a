"""SparseConv2d: a drop-in ``nn.Conv2d`` (groups = 1) whose weight is block-sparse per tap."""

from __future__ import annotations

import torch
from torch import nn

from sparsekernels import ops
from sparsekernels.conv_layout import (
    conv_layout_from_mask,
    conv_layout_shape,
    conv_matrix_to_weight,
    conv_weight_to_matrix,
    pair,
)
from sparsekernels.layout import BlockLayout, normalize_block_size
from sparsekernels.nn._block_sparse import BlockSparseWeight, autocast_inputs, top_blocks_layout


def _padding(padding, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]):
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1) or any((d * (k - 1)) % 2 for k, d in zip(kernel_size, dilation)):
            raise ValueError("padding='same' needs stride 1 and an even total padding (odd kernel)")
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    return pair(padding, "padding")


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x [N, C, H, W]`` is in channels-last memory (and not also plain contiguous,
    which happens when C or H·W is 1: then NCHW is the format to return, as nn.Conv2d does)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class SparseConv2d(BlockSparseWeight):
    """2-D convolution whose weight ``[K, C, R, S]`` keeps blocks of ``(K, C)`` channel tiles
    independently for every kernel tap (layout convention: :mod:`sparsekernels.conv_layout`).

    Shapes: x ``[N, C, H, W]`` -> ``[N, K, Ho, Wo]`` in the input's memory format, as
    ``nn.Conv2d``: channels-last in, channels-last out (the fast path: the kernels work in
    channels-last, so nothing is converted); otherwise a contiguous NCHW result (the input and
    the output are each converted once). Parameters: ``weight_values [nnz, bk, bc]``,
    ``bias [K]``. Initialisation: ``U(-1/sqrt(f), 1/sqrt(f))`` with ``f = C·R·S × density``
    (mean active fan-in), ``nn.Conv2d``'s rule at density 1. Zero padding, groups = 1 only.

    Not a subclass of ``nn.Conv2d``: ``weight`` is a property giving a dense ``[K, C, R, S]``
    copy (assigning it writes into the active blocks), see :mod:`sparsekernels.nn._block_sparse`.
    ``to_sparse_bsr``/``from_sparse_bsr`` convert the weight *matrix* ``[R*S*K, C]`` (the
    convention of :mod:`sparsekernels.conv_layout`) to and from ``torch.sparse_bsr`` tensors.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = True,
        *,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        density: float | None = None,
        block_size: int | tuple[int, int] = 32,
        layout: BlockLayout | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if groups != 1:
            raise ValueError(f"groups must be 1 for SparseConv2d; got {groups}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' for SparseConv2d; got {padding_mode!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = _padding(padding, self.kernel_size, self.stride, self.dilation)
        for name, value, low in (
            ("kernel_size", self.kernel_size, 1),
            ("stride", self.stride, 1),
            ("dilation", self.dilation, 1),
            ("padding", self.padding, 0),
        ):
            if min(value) < low:
                raise ValueError(f"{name} must be >= {low} in both dimensions; got {value}")
        if layout is not None and not isinstance(layout, BlockLayout):
            raise TypeError(f"layout must be a BlockLayout or None; got {type(layout).__name__}")
        block = normalize_block_size(block_size) if layout is None else layout.block_size
        shape, block = conv_layout_shape(out_channels, in_channels, self.kernel_size, block)
        self._init_weight(shape, block, density, layout, device, dtype)
        factory = {"device": self.weight_values.device, "dtype": self.weight_values.dtype}
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _dense_fan_in(self) -> int:
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"input must be 4-D [N, C, H, W]; got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input must have in_channels = {self.in_channels}; got shape {tuple(x.shape)}")
        x, values, bias = autocast_inputs(x, self.weight_values, self.bias)
        y = ops.conv2d(
            x, values, self.layout, self.kernel_size, self.stride, self.padding, self.dilation, backend=self.backend
        )
        self._maybe_hook_dense_grad(x, y)
        if bias is not None:
            y = y + bias.view(1, -1, 1, 1)  # keeps y's (channels-last) memory format
        if not _channels_last(x):
            # nn.Conv2d returns the input's memory format: NCHW in, contiguous NCHW out (so
            # x.view(x.size(0), -1) works after a conv stack). One conversion of the result.
            y = y.contiguous()
        return y

    def _dense_weight_grad(self, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        K, C, (R, S) = self.out_channels, self.in_channels, self.kernel_size
        dweight = torch.nn.grad.conv2d_weight(
            x.float(), [K, C, R, S], grad_output.float(), self.stride, self.padding, self.dilation
        )
        return conv_weight_to_matrix(dweight)

    def dense_weight(self) -> torch.Tensor:
        """The dense ``[K, C, R, S]`` weight with zeros outside the active blocks (= ``weight``)."""
        return conv_matrix_to_weight(self.layout.values_to_dense(self.weight_values), self.kernel_size)

    def _matrix_to_weight(self, matrix: torch.Tensor) -> torch.Tensor:
        return conv_matrix_to_weight(matrix, self.kernel_size)

    def _weight_to_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return conv_weight_to_matrix(weight)

    def to_sparse_bsr(self) -> torch.Tensor:
        """The weight matrix ``[R*S*K, C]`` (``Wm[t*K + k, c] = W[k, c, r, s]``, tap
        ``t = r*S + s``) as a ``torch.sparse_bsr`` tensor (values copied and detached). torch has
        no BSR convolution: use it to store or inspect the topology, or multiply it yourself."""
        return self._matrix_to_sparse_bsr()

    @classmethod
    def from_sparse_bsr(
        cls,
        weight: torch.Tensor,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: torch.Tensor | None = None,
        *,
        dilation: int | tuple[int, int] = 1,
    ) -> "SparseConv2d":
        """A ``SparseConv2d`` whose weight matrix ``[R*S*K, C]`` is the BSR tensor ``weight`` (the
        inverse of :meth:`to_sparse_bsr`; values and ``bias [K]`` are copied)."""
        ks = pair(kernel_size, "kernel_size")
        shape = (ks[0] * ks[1] * out_channels, in_channels)
        layout = cls._layout_from_sparse_bsr(weight, shape, "weight")
        if bias is not None and tuple(bias.shape) != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},); got {tuple(bias.shape)}")
        values = weight.values()
        layer = cls(
            in_channels,
            out_channels,
            ks,
            stride,
            padding,
            bias is not None,
            dilation=dilation,
            layout=layout,
            device=values.device,
            dtype=values.dtype,
        )
        with torch.no_grad():
            layer.weight_values.copy_(values)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        *,
        density: float | None = None,
        mask: torch.Tensor | None = None,
        block_size: int | tuple[int, int] = 32,
        layout: BlockLayout | None = None,
    ) -> "SparseConv2d":
        """Sparse copy of ``conv``: keep the blocks of largest L2 norm (``density``), the blocks
        touched by an element ``mask [K, C, R, S]``, the blocks of ``layout`` (of the tap-major
        weight matrix ``[R*S*K, C]``; its block size wins over ``block_size``), or every block
        (none of them)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d; got {type(conv).__name__}")
        if sum(x is not None for x in (density, mask, layout)) > 1:
            raise ValueError("pass at most one of density, mask and layout")
        if layout is not None:
            block_size = layout.block_size
        weight = conv.weight.detach()
        K, C = conv.out_channels, conv.in_channels
        if conv.groups != 1:
            raise ValueError(f"groups must be 1 for SparseConv2d; got {conv.groups}")
        expected, block = conv_layout_shape(K, C, conv.kernel_size, block_size)
        if layout is not None:
            if tuple(layout.shape) != tuple(expected):
                raise ValueError(f"layout must have shape {tuple(expected)} (R*S*K, C); got {tuple(layout.shape)}")
            layout = layout.to(weight.device)
        elif mask is not None:
            if tuple(mask.shape) != tuple(weight.shape):
                raise ValueError(f"mask must have shape {tuple(weight.shape)}; got {tuple(mask.shape)}")
            layout = conv_layout_from_mask(mask.to(weight.device), block)
        else:
            layout = top_blocks_layout(conv_weight_to_matrix(weight), block, 1.0 if density is None else density)
        layer = cls(
            C,
            K,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.bias is not None,
            dilation=conv.dilation,
            padding_mode=conv.padding_mode,
            layout=layout,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            layer.weight_values.copy_(layout.dense_to_values(conv_weight_to_matrix(weight)))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` computing the same function."""
        w = self.weight_values.detach()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(conv_matrix_to_weight(self.layout.values_to_dense(w), self.kernel_size))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, {super().extra_repr()}"
        )

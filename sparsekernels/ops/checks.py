"""Argument validation shared by the public ops and every backend (clear errors, no asserts)."""

from __future__ import annotations

import functools
import math

import torch

from sparsekernels import _checks
from sparsekernels.conv_layout import pair
from sparsekernels.layout import BlockLayout


def check_layout(layout: BlockLayout) -> None:
    """Validate ``layout`` (O(nnz), one host sync) unless the library built or checked it.

    Layouts made by the ``BlockLayout`` constructors, checked ``from_fields``, layers and
    ``load_state_dict`` are trusted (no sync on the training path); anything else (the raw
    dataclass constructor, ``from_fields(check=False)``) is validated before a kernel reads it.
    In debug-checks mode every layout is validated on every call."""
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be a BlockLayout; got {type(layout).__name__}")
    if not layout._valid or _checks.enabled():
        layout.validate()


def check_operands(
    layout: BlockLayout, values: torch.Tensor | None, *, validate_layout: bool = True, **dense: torch.Tensor
) -> None:
    """Types, devices and one shared float dtype for a layout, its values and dense operands.

    ``validate_layout``: run :func:`check_layout` (the native backend passes False: its C++
    side checks every index itself)."""
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be a BlockLayout; got {type(layout).__name__}")
    if validate_layout:
        check_layout(layout)
    dtypes = {}
    if values is not None:
        layout.check_values(values)
        if values.dim() != 3:
            raise ValueError(f"values must be 3-D [nnz, bm, bn]; got shape {tuple(values.shape)}")
        dtypes["values"] = values.dtype
    for name, t in dense.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {t.dtype}")
        if t.device != layout.device:
            raise ValueError(f"{name} is on {t.device} but the layout is on {layout.device}")
        dtypes[name] = t.dtype
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"operands must share one dtype; got {', '.join(f'{k}={v}' for k, v in dtypes.items())}")


def check_dim(t: torch.Tensor, name: str, dim: int, expected: int, what: str) -> None:
    if t.dim() < 2 or t.shape[dim] != expected:
        raise ValueError(f"{name} must have {what} = {expected}; got shape {tuple(t.shape)}")


def check_sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, validate_layout: bool = True) -> None:
    check_operands(layout, None, validate_layout=validate_layout, a=a, b=b)
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"a and b must be 2-D; got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    M, N = layout.shape
    check_dim(a, "a", 0, M, "rows (layout.shape[0])")
    check_dim(b, "b", 1, N, "columns (layout.shape[1])")
    check_dim(b, "b", 0, a.shape[1], "rows (a.shape[1])")


def check_dsd(
    values: torch.Tensor, layout: BlockLayout, b: torch.Tensor, transpose_sparse: bool, validate_layout: bool = True
) -> None:
    check_operands(layout, values, validate_layout=validate_layout, b=b)
    inner = layout.shape[0] if transpose_sparse else layout.shape[1]
    check_dim(b, "b", -2, inner, "rows (the sparse operand's inner dimension)")


def check_dds(
    a: torch.Tensor, values: torch.Tensor, layout: BlockLayout, transpose_sparse: bool, validate_layout: bool = True
) -> None:
    check_operands(layout, values, validate_layout=validate_layout, a=a)
    inner = layout.shape[1] if transpose_sparse else layout.shape[0]
    check_dim(a, "a", -1, inner, "columns (the sparse operand's inner dimension)")


def check_conv(
    x: torch.Tensor,
    values: torch.Tensor | None,
    layout: BlockLayout,
    kernel_size,
    stride,
    padding,
    dilation,
    validate_layout: bool = True,
):
    """Validate a convolution call; returns the normalised ``(kernel_size, stride, padding, dilation)``."""
    check_operands(layout, values, validate_layout=validate_layout, x=x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W]; got shape {tuple(x.shape)}")
    args = (_int_key(kernel_size), _int_key(stride), _int_key(padding), _int_key(dilation))
    shape = (int(layout.shape[0]), int(layout.block_size[0]))
    if None in args or torch.compiler.is_compiling():
        # Not plain ints / pairs of ints (bools, floats, ...): the same checks, uncached. Traced
        # code too: dynamo would warn about (and ignore) the cache.
        ks, st, pd, dl = _conv_geometry.__wrapped__(kernel_size, stride, padding, dilation, *shape)
    else:  # per call a cache lookup: a layer calls with the same arguments every time
        ks, st, pd, dl = _conv_geometry(*args, *shape)
    C = layout.shape[1]
    if x.shape[1] != C:
        raise ValueError(f"x must have {C} input channels (layout.shape[1]); got shape {tuple(x.shape)}")
    for i, (size, k) in enumerate(zip(x.shape[2:], ks)):
        if size + 2 * pd[i] < dl[i] * (k - 1) + 1:
            raise ValueError(
                f"x spatial size {tuple(x.shape[2:])} with padding {pd} is smaller than the dilated kernel {ks}"
            )
    return ks, st, pd, dl


def _int_key(value) -> int | tuple[int, int] | None:
    """``value`` as a cache key when it is an int or a pair of ints (exact types, so that ``True`` or
    ``3.0``, equal to ``1`` and ``3`` as dict keys, still reach the type check), else None."""
    if type(value) is int:
        return value
    if type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return (value[0], value[1])
    return None


@functools.lru_cache(maxsize=1024)
def _conv_geometry(kernel_size, stride, padding, dilation, rows: int, block_rows: int):
    """The geometry checks of :func:`check_conv` that depend on no tensor: normalised pairs, or the
    error. Cached (exceptions are not cached: a bad call raises every time)."""
    R, S = pair(kernel_size, "kernel_size")
    st, pd, dl = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if min(R, S, *st, *dl) < 1 or min(pd) < 0:
        raise ValueError(
            f"kernel_size, stride and dilation must be >= 1 and padding >= 0; got "
            f"kernel_size={(R, S)}, stride={st}, padding={pd}, dilation={dl}"
        )
    if rows % (R * S):
        raise ValueError(f"layout rows ({rows}) must be a multiple of R*S = {R * S} for kernel_size {(R, S)}")
    K = rows // (R * S)
    if K % block_rows:
        # Tap-major stacking: a block-row must not straddle two taps (the native rule, now everywhere).
        raise ValueError(
            f"kernel_size {(R, S)} does not match the layout: out_channels = layout rows / (R*S) = {K} "
            f"must be a multiple of the block size {block_rows}"
        )
    return (R, S), st, pd, dl


def conv_output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one spatial dimension (torch's formula)."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def check_conv_grad_output(
    dy: torch.Tensor,
    layout: BlockLayout,
    input_shape,
    kernel_size,
    stride,
    padding,
    dilation,
    validate_layout: bool = True,
):
    """Validate the output gradient ``dy [N, K, Ho, Wo]`` of a convolution whose input had
    ``input_shape (N, C, H, W)``; returns the normalised ``(kernel_size, stride, padding, dilation)``."""
    check_operands(layout, None, validate_layout=validate_layout, dy=dy)
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be [N, C, H, W]; got {list(input_shape)}")
    # check_conv validates the geometry on a zero-stride stand-in for x (one element of storage).
    stand_in = dy.new_empty_strided(input_shape, (0, 0, 0, 0))
    ks, st, pd, dl = check_conv(stand_in, None, layout, kernel_size, stride, padding, dilation, validate_layout)
    N, _, H, W = input_shape
    K = layout.shape[0] // (ks[0] * ks[1])
    expected = (N, K, *(conv_output_size(s, ks[i], st[i], pd[i], dl[i]) for i, s in enumerate((H, W))))
    if tuple(dy.shape) != expected:
        raise ValueError(f"dy must have shape [N, K, Ho, Wo] = {list(expected)}; got {tuple(dy.shape)}")
    return ks, st, pd, dl


# ---------------------------------------------------------------------------- zero-size operands
# Kernels launch grids over blocks, rows and pixels and reshape their operands; a zero-size
# dimension (batch, rows, columns, block rows/columns, nnz 0, an empty reduction) is answered
# here instead, after the same argument checks, with the exact result: an empty tensor, or
# zeros where the output is non-empty but its reduction has no terms. Each returns None when
# the kernel has real work to do. Call after the op's checks.


def _zeros(shape, like: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    return torch.zeros(tuple(shape), dtype=like.dtype, device=like.device).contiguous(memory_format=memory_format)


def zero_size_sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout) -> torch.Tensor | None:
    """``sdd`` result when nothing is to compute: nnz = 0, or an empty inner dimension K."""
    if layout.nnz == 0 or a.shape[1] == 0:
        return _zeros(layout.values_shape(), a)
    return None


def zero_size_dsd(
    values: torch.Tensor, layout: BlockLayout, b: torch.Tensor, transpose_sparse: bool
) -> torch.Tensor | None:
    """``dsd`` result ``[..., rows, P]`` when it is empty or has no terms (nnz 0, inner dim 0)."""
    M, N = layout.shape
    rows = N if transpose_sparse else M
    shape = (*b.shape[:-2], rows, b.shape[-1])
    if math.prod(shape) == 0 or layout.nnz == 0 or b.shape[-2] == 0:
        return _zeros(shape, b)
    return None


def zero_size_dds(
    a: torch.Tensor, values: torch.Tensor, layout: BlockLayout, transpose_sparse: bool
) -> torch.Tensor | None:
    """``dds`` result ``[..., P, cols]`` when it is empty or has no terms."""
    M, N = layout.shape
    cols = M if transpose_sparse else N
    shape = (*a.shape[:-1], cols)
    if math.prod(shape) == 0 or layout.nnz == 0 or a.shape[-1] == 0:
        return _zeros(shape, a)
    return None


def zero_size_conv_forward(x, layout: BlockLayout, ks, st, pd, dl) -> torch.Tensor | None:
    """Convolution output ``[N, K, Ho, Wo]`` (channels-last) when empty or without terms."""
    N, C, H, W = x.shape
    K = layout.shape[0] // (ks[0] * ks[1])
    shape = (N, K, conv_output_size(H, ks[0], st[0], pd[0], dl[0]), conv_output_size(W, ks[1], st[1], pd[1], dl[1]))
    if math.prod(shape) == 0 or layout.nnz == 0 or C == 0 or H * W == 0:
        return _zeros(shape, x, torch.channels_last)
    return None


def zero_size_conv_input_grad(dy, layout: BlockLayout, input_shape) -> torch.Tensor | None:
    """Input gradient ``[N, C, H, W]`` (channels-last) when empty or without terms."""
    if math.prod(input_shape) == 0 or layout.nnz == 0 or dy.numel() == 0:
        return _zeros(input_shape, dy, torch.channels_last)
    return None


def zero_size_conv_weight_grad(x, dy, layout: BlockLayout) -> torch.Tensor | None:
    """Weight gradient ``[nnz, bk, bc]`` when empty or without terms (no pixels)."""
    if layout.nnz == 0 or x.numel() == 0 or dy.numel() == 0:
        return _zeros(layout.values_shape(), x)
    return None

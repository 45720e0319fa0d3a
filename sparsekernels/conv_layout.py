"""How a block-sparse convolution weight maps onto a ``BlockLayout``.

A convolution weight ``W: [K, C, R, S]`` (out channels, in channels, kernel height,
kernel width) is stored as the matrix ``Wm: [R*S*K, C]`` that stacks the ``[K, C]``
channel matrix of every kernel tap ``t = r*S + s`` on top of each other::

              C (in channels) ->
            +-----+-----+-----+
    tap 0   | blk | .   | blk |   rows 0*K .. 1*K   (W[:, :, 0, 0])
    (r=0,s=0)+-----+-----+-----+
    tap 1   | .   | blk | .   |   rows 1*K .. 2*K   (W[:, :, 0, 1])
            +-----+-----+-----+
     ...                           ...
    tap RS-1| blk | .   | .   |   rows (RS-1)*K .. RS*K
            +-----+-----+-----+

    Wm[t*K + k, c] = W[k, c, t // S, t % S]

A ``BlockLayout`` of shape ``[R*S*K, C]`` with block size ``(bk, bc)`` then holds, for every
tap independently, a block mask over ``(K/bk, C/bc)`` channel tiles; reshaping its block mask
``[R*S*K/bk, C/bc]`` to ``[R*S, K/bk, C/bc]`` gives the per-tap masks. Values are stored
compressed as ``[nnz, bk, bc]`` in the layout's row-major order: tap-major, then output
channel block, then input channel block. The forward pass of output block ``kb`` reads
block-rows ``t*(K/bk) + kb`` for every tap; the input gradient of channel block ``cb``
reads block-column ``cb`` through the transposed traversal, whose block-row gives the tap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsekernels.layout import BlockLayout, normalize_block_size


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(v, v)`` from an int, or the validated pair itself."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints; got {value!r}")


def conv_weight_to_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``[K, C, R, S]`` -> ``[R*S*K, C]`` (tap-major stacking, see module docstring)."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D [K, C, R, S]; got shape {tuple(weight.shape)}")
    K, C, R, S = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(R * S * K, C)


def conv_matrix_to_weight(matrix: torch.Tensor, kernel_size: int | Sequence[int]) -> torch.Tensor:
    """``[R*S*K, C]`` -> ``[K, C, R, S]``, the inverse of :func:`conv_weight_to_matrix`."""
    R, S = pair(kernel_size, "kernel_size")
    rows, C = matrix.shape
    if rows % (R * S):
        raise ValueError(f"matrix rows ({rows}) must be a multiple of R*S = {R * S}")
    K = rows // (R * S)
    return matrix.reshape(R, S, K, C).permute(2, 3, 0, 1)


def conv_layout_shape(
    out_channels: int, in_channels: int, kernel_size: int | Sequence[int], block_size: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Matrix shape and block size of the layout of a ``[K, C, R, S]`` weight, validated."""
    R, S = pair(kernel_size, "kernel_size")
    bk, bc = normalize_block_size(block_size)
    if out_channels % bk:
        raise ValueError(f"block_size ({bk}) must divide out_channels ({out_channels})")
    if in_channels % bc:
        raise ValueError(f"block_size ({bc}) must divide in_channels ({in_channels})")
    return (R * S * out_channels, in_channels), (bk, bc)


def conv_layout_from_mask(mask: torch.Tensor, block_size: int | Sequence[int], nnz: int | None = None) -> BlockLayout:
    """Layout from an element mask ``[K, C, R, S]`` (a block is active where any element is)."""
    if mask.dim() != 4:
        raise ValueError(f"mask must be 4-D [K, C, R, S]; got shape {tuple(mask.shape)}")
    K, C, R, S = mask.shape
    conv_layout_shape(K, C, (R, S), block_size)
    return BlockLayout.from_mask(conv_weight_to_matrix(mask != 0), block_size, nnz)


def conv_layout_from_tap_masks(
    tap_masks: torch.Tensor, block_size: int | Sequence[int], nnz: int | None = None
) -> BlockLayout:
    """Layout from per-tap block masks ``[R*S, K/bk, C/bc]`` (bool)."""
    if tap_masks.dim() != 3:
        raise ValueError(f"tap_masks must be 3-D [R*S, K/bk, C/bc]; got shape {tuple(tap_masks.shape)}")
    T, Kb, Cb = tap_masks.shape
    return BlockLayout.from_block_mask(tap_masks.reshape(T * Kb, Cb), block_size, nnz)

"""The one parameter table of the convolution tests, shared by every backend.

Axes: stride 1/2, padding 0/1/3, kernel 1/3/7, odd spatial sizes, batch 1 and 2, channel
blocks 16/32, block densities 0/0.1/0.5/1, fp32/fp16/bf16, NCHW and NHWC inputs.

* :data:`CPU_CASES`: a pairwise covering sample (every value pair of every two axes appears in
  some case), small enough for Triton's interpreter; plus the few combinations that stress
  one code path each (:data:`_STRESS`).
* :func:`gpu_groups` / :func:`gpu_inner`: the full product, for ``--device cuda``; the outer
  axes are test parameters, the inner ones loop inside a test so the suite stays a few
  hundred items.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

STRIDES = (1, 2)
PADDINGS = (0, 1, 3)
KERNELS = (1, 3, 7)
SIZES = ((5, 7), (9, 5), (7, 9))
BATCHES = (1, 2)
BLOCKS = (16, 32)
DENSITIES = (0.0, 0.1, 0.5, 1.0)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHANNELS_LAST = (False, True)

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class ConvCase:
    """One convolution: x ``[batch, in_channels, *size]`` with a ``kernel x kernel`` weight."""

    batch: int
    in_channels: int
    out_channels: int
    size: tuple[int, int]
    kernel: int
    stride: int
    padding: int
    block: int
    density: float
    dtype: torch.dtype
    channels_last: bool

    @property
    def valid(self) -> bool:
        """Whether the padded input is at least as large as the kernel."""
        return min(self.size) + 2 * self.padding >= self.kernel

    @property
    def id(self) -> str:
        fmt = "nhwc" if self.channels_last else "nchw"
        return (
            f"n{self.batch}-c{self.in_channels}-k{self.out_channels}-{self.size[0]}x{self.size[1]}-"
            f"r{self.kernel}-s{self.stride}-p{self.padding}-b{self.block}-d{self.density}-"
            f"{_DTYPE_NAMES[self.dtype]}-{fmt}"
        )


def _case(batch, size, kernel, stride, padding, block, density, dtype, channels_last, channels=None) -> ConvCase:
    # Block 32: one channel block per side. Block 16: one and two blocks, C < K or C > K.
    in_c, out_c = channels or ((32, 32) if block == 32 else ((32, 16) if size[0] % 3 == 0 else (16, 32)))
    return ConvCase(batch, in_c, out_c, size, kernel, stride, padding, block, density, dtype, channels_last)


_AXES = (BATCHES, SIZES, KERNELS, STRIDES, PADDINGS, BLOCKS, DENSITIES, DTYPES, CHANNELS_LAST)


def _pairwise(seed: int = 0, candidates: int = 60) -> list[ConvCase]:
    """Greedy pairwise covering array over :data:`_AXES` (valid cases only), deterministic."""
    rng = random.Random(seed)
    uncovered = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(len(_AXES)), 2)
        for a in range(len(_AXES[i]))
        for b in range(len(_AXES[j]))
    }
    cases = []
    while uncovered:
        best, best_gain = None, 0
        for _ in range(candidates):
            pick = [rng.randrange(len(axis)) for axis in _AXES]
            # Seed each candidate with one uncovered pair so progress is guaranteed.
            i, a, j, b = rng.choice(sorted(uncovered))
            pick[i], pick[j] = a, b
            case = _case(*(axis[k] for axis, k in zip(_AXES, pick)))
            if not case.valid:
                continue
            gain = sum((i, pick[i], j, pick[j]) in uncovered for i, j in itertools.combinations(range(len(_AXES)), 2))
            if gain > best_gain:
                best, best_gain = (pick, case), gain
        if best is None:
            continue
        pick, case = best
        uncovered -= {(i, pick[i], j, pick[j]) for i, j in itertools.combinations(range(len(_AXES)), 2)}
        cases.append(case)
    return cases


# One path each: 7x7/stride 2/padding 3 (ResNet stem shape, the dx parity classes with most
# taps), 1x1/stride 2 (downsample: dx pixels no tap reaches must be zero), NHWC bf16 3x3,
# even sizes with stride 2 (ResNet's 32 -> 16: parity classes of equal size).
_STRESS = [
    _case(2, (9, 9), 7, 2, 3, 16, 0.5, torch.float32, True),
    _case(2, (7, 5), 1, 2, 0, 16, 1.0, torch.float16, False),
    _case(1, (9, 7), 3, 2, 1, 32, 0.5, torch.bfloat16, True),
    _case(2, (8, 6), 3, 2, 1, 16, 0.5, torch.float32, True),
]

CPU_CASES: list[ConvCase] = _pairwise() + _STRESS


def gpu_groups() -> list[tuple[int, int, int, torch.dtype, int]]:
    """Outer axes of the full product: ``(kernel, stride, padding, dtype, block)``."""
    return list(itertools.product(KERNELS, STRIDES, PADDINGS, DTYPES, (16, 32, 64)))


def gpu_inner(kernel: int, stride: int, padding: int, dtype: torch.dtype, block: int) -> list[ConvCase]:
    """Inner axes of the full product for one group, at GPU-sized shapes as well."""
    sizes = SIZES[:2] + ((17, 15),)
    cases = [
        ConvCase(batch, channels[0], channels[1], size, kernel, stride, padding, block, density, dtype, cl)
        for batch in (1, 3)
        for size in sizes
        for density in DENSITIES
        for cl in CHANNELS_LAST
        for channels in ((block, 2 * block), (4 * block, 2 * block))
    ]
    return [c for c in cases if c.valid]

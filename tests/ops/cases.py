"""The one parameter table of the matmul tests (``sdd``, ``dsd``, ``dds``), shared by every backend.

Axes: op and transpose flag, shape (square, tall, wide, batched, strided operands), block size
(16, 32, non-square 16x32; 64 and 128 in a few cases), block density (0, 0.05, 0.5, 1), dtype
(fp32, fp16, bf16) and whether the Triton kernels are forced through their split paths
(``split=1``: dsd/dds cut every segment of two or more blocks into one-block chunks, sdd
cuts K in two).

* :data:`CPU_CASES`: a covering sample (every value pair of every two axes, and every
  (op, dtype, density) triple, appears in some case) at shapes small enough for Triton's
  interpreter, plus :data:`_LARGE_BLOCKS`.
* :data:`GPU_CASES`: the full product at larger shapes, for ``--device cuda``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

OPS = (("sdd", False), ("dsd", False), ("dsd", True), ("dds", False), ("dds", True))
SHAPES = ("square", "tall", "wide", "batch", "strided")
BLOCKS = ((16, 16), (32, 32), (16, 32))
DENSITIES = (0.0, 0.05, 0.5, 1.0)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SPLITS = (None, 1)

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Sparse-matrix grid [R, C] in blocks for each shape kind.
_GRIDS = {"square": (4, 4), "tall": (6, 2), "wide": (2, 6), "batch": (4, 4), "strided": (4, 4)}


@dataclass(frozen=True)
class MatmulCase:
    """One product with the sparse operand ``S: [R*bm, C*bn]`` and dense dimension ``p``.

    sdd: ``a [M, p] @ b [p, N]``; dsd: ``S(ᵀ) @ b [..., *, p]``; dds: ``a [..., p, *] @ S(ᵀ)``.
    ``batch`` puts leading dims ``lead`` on the dense operand (dsd/dds only); ``strided``
    passes every dense operand, and the values, as transposed views.
    """

    op: str
    transpose: bool
    shape: str
    block: tuple[int, int]
    density: float
    dtype: torch.dtype
    split: int | None = None
    p: int = 40  # not a multiple of the P tiles: exercises the edge masks
    scale: int = 1  # multiplies the block grid (GPU-sized cases)

    @property
    def grid(self) -> tuple[int, int]:
        R, C = _GRIDS[self.shape]
        return R * self.scale, C * self.scale

    @property
    def lead(self) -> tuple[int, ...]:
        return (2,) if self.shape == "batch" else ()

    @property
    def strided(self) -> bool:
        return self.shape == "strided"

    @property
    def id(self) -> str:
        op = f"{self.op}{'_t' if self.transpose else ''}"
        bm, bn = self.block
        split = "" if self.split is None else f"-split{self.split}"
        R, C = self.grid
        return f"{op}-{self.shape}{R}x{C}-b{bm}x{bn}-d{self.density}-{_DTYPE_NAMES[self.dtype]}-p{self.p}{split}"


def _valid(op: str, shape: str, split: int | None) -> bool:
    # sdd has no batch dims.
    return not (op == "sdd" and shape == "batch")


_AXES = (OPS, SHAPES, BLOCKS, DENSITIES, DTYPES, SPLITS)


def _covering() -> list[MatmulCase]:
    """Greedy covering array over :data:`_AXES` (valid cases only), deterministic.

    Covers every value pair of every two axes, and every (op, dtype, density) triple: the
    kernels branch on all three. Each step takes the valid combination covering the most
    still-uncovered tuples; ties go to the one whose values were used least so far (so the
    filler values spread over every axis), then to the first in product order.
    """
    groups = [*itertools.combinations(range(len(_AXES)), 2), (0, 3, 4)]
    candidates = [
        pick
        for pick in itertools.product(*(range(len(axis)) for axis in _AXES))
        if _valid(OPS[pick[0]][0], SHAPES[pick[1]], SPLITS[pick[5]])
    ]

    def tuples(pick):
        return {(g, tuple(pick[i] for i in g)) for g in groups}

    covers = [tuples(pick) for pick in candidates]
    uncovered = set().union(*covers)
    used = {(i, k): 0 for i, axis in enumerate(_AXES) for k in range(len(axis))}
    cases = []
    while uncovered:
        n = max(
            range(len(candidates)),
            key=lambda n: (len(covers[n] & uncovered), -sum(used[i, k] for i, k in enumerate(candidates[n]))),
        )
        best = candidates[n]
        uncovered -= covers[n]
        for i, k in enumerate(best):
            used[i, k] += 1
        (op, transpose), shape, block, density, dtype, split = (axis[k] for axis, k in zip(_AXES, best))
        cases.append(MatmulCase(op, transpose, shape, block, density, dtype, split))
    return cases


# Block sizes 64 and 128 on the interpreter: one case per op, both dtype families, one
# non-square; the grid stays 2x2 blocks so the interpreter runs a handful of programs.
_LARGE_BLOCKS = [
    MatmulCase("sdd", False, "square", (64, 64), 0.5, torch.bfloat16, scale=1),
    MatmulCase("dsd", True, "square", (128, 128), 0.5, torch.float32, split=1),
    MatmulCase("dds", False, "tall", (64, 128), 0.5, torch.float16),
    MatmulCase("dds", True, "strided", (128, 64), 1.0, torch.bfloat16),
    MatmulCase("dsd", False, "batch", (64, 64), 1.0, torch.float16),
]

CPU_CASES: list[MatmulCase] = _covering() + _LARGE_BLOCKS

GPU_CASES: list[MatmulCase] = [
    MatmulCase(op, transpose, shape, block, density, dtype, split, p=200, scale=4)
    for (op, transpose), shape, block, density, dtype, split in itertools.product(
        OPS, SHAPES, ((16, 16), (32, 32), (64, 64), (128, 128), (32, 64)), DENSITIES, DTYPES, SPLITS
    )
    if _valid(op, shape, split)
]

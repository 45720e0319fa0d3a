"""The native backend's small-block path (element sparsity and blocks of <= 16 weights,
csrc/unstructured.cpp) against float64: dds both ways and sdd, odd sizes, rectangular blocks,
empty rows and columns, strided operands, every instruction set, any thread count (same bits)."""

from __future__ import annotations

import pytest
import torch

from sparsekernels import BlockLayout, native_available
from sparsekernels.ops import native_backend as nb
from sparsekernels.ops import reference as ref
from tests.helpers import assert_close
from tests.ops.test_native import ISAS, _poison, _supported_isas, cpu  # noqa: F401  (fixtures used by name)

F64 = torch.float64
# Poisoned outputs (test_native's autouse fixture) and CPU only (its `cpu` fixture skips on CUDA).
pytestmark = [
    pytest.mark.skipif(not native_available(), reason="native extension not built"),
    pytest.mark.usefixtures("cpu"),
]


def element_layout(M: int, N: int, density: float, seed: int, block: tuple[int, int] = (1, 1)) -> BlockLayout:
    """A layout of ``block`` blocks with an empty block-row and block-column when there is room."""
    g = torch.Generator().manual_seed(seed)
    R, C = M // block[0], N // block[1]
    mask = torch.rand(R, C, generator=g) < density
    if R > 2 and C > 2:
        mask[1] = False
        mask[:, 2] = False
    return BlockLayout.from_block_mask(mask, block)


def problems(M: int, N: int, P: int, K: int, layout: BlockLayout, seed: int):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(layout.values_shape(), generator=g)
    return values, {
        "dds": (torch.randn(P, M, generator=g), False),
        "dds_t": (torch.randn(P, N, generator=g), True),
        "sdd": (torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)),
    }


# P and K around the 64-float panel and the 8-float partial sums: full panels, tails, both.
@pytest.mark.parametrize(("M", "N", "P", "K", "density"), [
    (37, 53, 1, 1, 0.3), (64, 100, 63, 7, 0.1), (128, 96, 64, 8, 0.05), (300, 200, 129, 100, 0.02),
    (5, 3, 200, 65, 0.9),
])  # fmt: skip
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (2, 8), (16, 1), (3, 5)])
def test_small_block_ops_match_float64(M, N, P, K, density, block):
    M, N = M - M % block[0] or block[0], N - N % block[1] or block[1]
    layout = element_layout(M, N, density, seed=M + N, block=block)
    values, cases = problems(M, N, P, K, layout, seed=P + K)
    v64 = values.to(F64)
    a, t = cases["dds"]
    assert_close(nb.dds(a, values, layout, t), ref.dds(a.to(F64), v64, layout, t))
    a, t = cases["dds_t"]
    assert_close(nb.dds(a, values, layout, t), ref.dds(a.to(F64), v64, layout, t))
    a, b = cases["sdd"]
    assert_close(nb.sdd(a, b, layout), ref.sdd(a.to(F64), b.to(F64), layout))


@pytest.mark.parametrize("block", [(1, 1), (2, 2)])
def test_wide_operands_are_walked_in_chunks_of_p_with_the_same_bits(block):
    """Inner dimensions above 1024 cut P into 64-wide chunks (the transposed operand's chunk
    stays in cache): P = 300 gives four full chunks and a 44-wide tail. Each output row equals,
    bitwise, the same product on 50-row slices of the dense operand (a single chunk each),
    and float64."""
    M, N, P = 1100, 1300, 300
    layout = element_layout(M, N, 0.01, seed=3, block=block)
    g = torch.Generator().manual_seed(4)
    values = torch.randn(layout.values_shape(), generator=g)
    for inner, t in ((M, False), (N, True)):
        a = torch.randn(P, inner, generator=g)
        y = nb.dds(a, values, layout, t)
        assert torch.equal(y, torch.cat([nb.dds(a[p : p + 50], values, layout, t) for p in range(0, P, 50)]))
        assert_close(y, ref.dds(a.to(F64), values.to(F64), layout, t))


def test_strided_operands_and_empty_layout():
    """Transposed views (as autograd passes dy^T) and a layout without entries."""
    layout = element_layout(40, 70, 0.1, seed=1)
    values = torch.randn(layout.values_shape())
    v64 = values.to(F64)
    a = torch.randn(40, 33).t()  # [33, 40], column-major
    assert_close(nb.dds(a, values, layout, False), ref.dds(a.to(F64), v64, layout, False))
    dy = torch.randn(33, 40)
    x = torch.randn(70, 33).t()
    assert_close(nb.sdd(dy.t(), x, layout), ref.sdd(dy.t().to(F64), x.to(F64), layout))
    empty = BlockLayout.from_block_mask(torch.zeros(6, 9, dtype=torch.bool), 1)
    out = nb.dds(torch.randn(4, 6), torch.zeros(empty.values_shape()), empty, False)
    assert out.shape == (4, 9) and torch.equal(out, torch.zeros(4, 9))


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_every_isa_matches_float64(block):
    layout = element_layout(92, 132, 0.05, seed=2, block=block)
    values, cases = problems(92, 132, 70, 45, layout, seed=3)
    v64 = values.to(F64)
    native = torch.ops.sparsekernels_native
    tested = []
    for isa in ISAS:
        if isa not in _supported_isas():
            continue
        native.set_isa(isa)
        try:
            for name in ("dds", "dds_t"):
                a, t = cases[name]
                assert_close(nb.dds(a, values, layout, t), ref.dds(a.to(F64), v64, layout, t))
            a, b = cases["sdd"]
            assert_close(nb.sdd(a, b, layout), ref.sdd(a.to(F64), b.to(F64), layout))
        finally:
            native.set_isa("auto")
        tested.append(isa)
    assert "baseline" in tested


@pytest.mark.parametrize("block", [(1, 1), (4, 4)])
def test_results_do_not_depend_on_the_thread_count(block):
    layout = element_layout(1000, 800, 0.03, seed=4, block=block)
    values, cases = problems(1000, 800, 100, 100, layout, seed=5)
    saved = torch.get_num_threads()

    def run():
        out = [nb.dds(a, values, layout, t) for a, t in (cases["dds"], cases["dds_t"])]
        return [*out, nb.sdd(*cases["sdd"], layout)]

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(x, y) for x, y in zip(one, two))


def test_nan_propagates_as_in_a_matmul():
    """out[0, c] = sum_r a[0, r] S[r, c]: a NaN at a[0, 0] reaches exactly the columns that row 0
    of S has entries in."""
    layout = element_layout(8, 8, 0.5, seed=6)
    values = torch.randn(layout.values_shape())
    a = torch.randn(3, 8)
    a[0, 0] = float("nan")
    out = nb.dds(a, values, layout, False)
    row0 = layout.col_indices[layout.row_offsets[0] : layout.row_offsets[1]].long()
    expected = torch.zeros(8, dtype=torch.bool)
    expected[row0] = True
    assert expected.any() and torch.equal(torch.isnan(out[0]), expected)
    assert torch.isfinite(out[1:]).all()

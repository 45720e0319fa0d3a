"""BlockLayout against an independent numpy CSR/CSC construction, round trips, remap, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsekernels
from sparsekernels import BlockLayout
from sparsekernels.layout import check_kernel_block_size
from tests.helpers import random_block_mask, spy_host_syncs

SHAPES = [(1, 1), (1, 7), (7, 1), (3, 4), (8, 8), (5, 13), (16, 3)]
DENSITIES = [0.0, 0.05, 0.3, 0.5, 1.0]


def numpy_csr_csc(mask: np.ndarray):
    """Row-major slots and the column-major traversal, by explicit Python loops."""
    R, C = mask.shape
    slots = [(r, c) for r in range(R) for c in range(C) if mask[r, c]]
    slot_of = {rc: i for i, rc in enumerate(slots)}
    row_offsets = np.zeros(R + 1, dtype=np.int64)
    for r, _ in slots:
        row_offsets[r + 1] += 1
    row_offsets = np.cumsum(row_offsets)
    cols_t, rows_t, blocks_t = [], [], []
    col_offsets = [0]
    for c in range(C):
        for r in range(R):
            if mask[r, c]:
                rows_t.append(r)
                blocks_t.append(slot_of[(r, c)])
        col_offsets.append(len(rows_t))
        cols_t.append(c)
    return {
        "row_offsets": row_offsets,
        "col_indices": np.array([c for _, c in slots], dtype=np.int64),
        "row_indices": np.array([r for r, _ in slots], dtype=np.int64),
        "col_offsets": np.array(col_offsets, dtype=np.int64),
        "row_indices_t": np.array(rows_t, dtype=np.int64),
        "block_indices_t": np.array(blocks_t, dtype=np.int64),
    }


@pytest.mark.parametrize("grid", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("pass_nnz", [False, True])
def test_layout_matches_numpy(grid, density, pass_nnz, device):
    mask = random_block_mask(*grid, density, device=device)
    nnz = int(mask.sum()) if pass_nnz else None
    layout = BlockLayout.from_block_mask(mask, (2, 3), nnz)
    expected = numpy_csr_csc(mask.cpu().numpy())
    for name, value in expected.items():
        got = getattr(layout, name)
        assert got.dtype == torch.int32, name
        assert got.device == mask.device, name
        np.testing.assert_array_equal(got.cpu().numpy(), value, err_msg=name)
    assert layout.nnz == int(mask.sum())
    assert layout.grid == grid
    assert layout.shape == (grid[0] * 2, grid[1] * 3)
    assert torch.equal(layout.to_block_mask(), mask)


def test_docstring_example():
    mask = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    layout = BlockLayout.from_block_mask(mask, 16)
    assert layout.row_offsets.tolist() == [0, 2, 4, 5]
    assert layout.col_indices.tolist() == [1, 3, 0, 1, 1]
    assert layout.col_offsets.tolist() == [0, 1, 4, 4, 5]
    assert layout.row_indices_t.tolist() == [1, 0, 1, 2, 0]
    assert layout.block_indices_t.tolist() == [2, 0, 3, 4, 1]


@pytest.mark.parametrize("block_size", [(4, 4), (2, 5), (1, 3)])
def test_from_mask_any_element_activates_block(block_size, device):
    bm, bn = block_size
    M, N = 4 * bm, 3 * bn
    mask = torch.zeros(M, N, dtype=torch.bool, device=device)
    mask[bm * 1 + bm - 1, bn * 2] = True  # one corner element of block (1, 2)
    mask[0, 0] = True
    layout = BlockLayout.from_mask(mask, block_size)
    expected = torch.zeros(4, 3, dtype=torch.bool, device=device)
    expected[1, 2] = expected[0, 0] = True
    assert torch.equal(layout.to_block_mask(), expected)
    assert torch.equal(layout.to_mask(), expected.repeat_interleave(bm, 0).repeat_interleave(bn, 1))


@pytest.mark.parametrize("density", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_values_round_trip(density, dtype, device):
    layout = BlockLayout.from_block_mask(random_block_mask(5, 6, density, device=device), (3, 2))
    dense = torch.randn(*layout.shape, device=device).to(dtype)
    values = layout.dense_to_values(dense)
    assert values.shape == (layout.nnz, 3, 2)
    back = layout.values_to_dense(values)
    assert torch.equal(back, dense * layout.to_mask())
    # and values -> dense -> values is the identity
    fresh = torch.randn(layout.nnz, 3, 2, device=device).to(dtype)
    assert torch.equal(layout.dense_to_values(layout.values_to_dense(fresh)), fresh)


def test_values_batched_round_trip(device):
    layout = BlockLayout.random((8, 12), 4, 0.5, device=device)
    dense = torch.randn(2, 3, 8, 12, device=device)
    values = layout.dense_to_values(dense)
    assert values.shape == (2, 3, layout.nnz, 4, 4)
    assert torch.equal(layout.values_to_dense(values), dense * layout.to_mask())


def test_values_to_dense_is_differentiable(device):
    layout = BlockLayout.random((6, 6), 3, 0.5, device=device)
    values = torch.randn(layout.nnz, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(layout.values_to_dense, (values,))


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_transpose(density, device):
    layout = BlockLayout.from_block_mask(random_block_mask(4, 7, density, device=device), (2, 3))
    values = torch.randn(layout.nnz, 2, 3, device=device)
    t = layout.transpose()
    assert t.shape == (21, 8) and t.block_size == (3, 2)
    assert torch.equal(t.to_block_mask(), layout.to_block_mask().t())
    values_t = values[layout.block_indices_t.long()].transpose(-1, -2)
    assert torch.equal(t.values_to_dense(values_t), layout.values_to_dense(values).t())
    # the transposed layout is what building from the transposed mask gives
    rebuilt = BlockLayout.from_block_mask(layout.to_block_mask().t().contiguous(), (3, 2))
    for name in sparsekernels.layout.INDEX_FIELDS:
        assert torch.equal(getattr(t, name), getattr(rebuilt, name)), name
    # transposing twice gives the original back
    tt = t.transpose()
    for name in sparsekernels.layout.INDEX_FIELDS:
        assert torch.equal(getattr(tt, name), getattr(layout, name)), name


def test_remap_kept_grown_pruned(device):
    old_mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool, device=device)
    new_mask = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.bool, device=device)
    old = BlockLayout.from_block_mask(old_mask, 2)
    new = BlockLayout.from_block_mask(new_mask, 2, nnz=5)
    src = old.remap(new)
    # old slots: (0,0)=0 (0,2)=1 (1,1)=2 (2,0)=3 (2,1)=4
    # new slots: (0,0) (0,1) (1,1) (2,0) (2,2)
    assert src.tolist() == [0, -1, 2, 3, -1]
    assert src.dtype == torch.int64


@pytest.mark.parametrize("trial", range(5))
def test_remap_random_carries_values(trial, device):
    g = torch.Generator().manual_seed(trial)
    old = BlockLayout.from_block_mask(random_block_mask(6, 9, 0.4, generator=g).to(device), (2, 2))
    new = BlockLayout.from_block_mask(random_block_mask(6, 9, 0.4, generator=g).to(device), (2, 2))
    values = torch.randn(old.nnz, 2, 2, device=device)
    src = old.remap(new)
    kept = src >= 0
    carried = torch.where(kept[:, None, None], values[src.clamp(min=0)], torch.zeros_like(values[:1]))
    both = old.to_mask() & new.to_mask()
    grown = new.to_mask() & ~old.to_mask()
    dense_new = new.values_to_dense(carried)
    dense_old = old.values_to_dense(values)
    assert torch.equal(dense_new[both], dense_old[both])
    assert torch.all(dense_new[grown] == 0)
    assert int(kept.sum()) == int((old.to_block_mask() & new.to_block_mask()).sum())


def test_remap_rejects_other_shapes():
    a = BlockLayout.random((8, 8), 4, 0.5)
    with pytest.raises(ValueError, match="new_layout must have shape"):
        a.remap(BlockLayout.random((8, 12), 4, 0.5))
    with pytest.raises(ValueError, match="block_size"):
        a.remap(BlockLayout.random((8, 8), 2, 0.5))
    with pytest.raises(TypeError, match="new_layout"):
        a.remap(torch.zeros(3))


def test_build_with_nnz_traces_without_host_sync():
    """With nnz given, the build compiles into one graph: no .item()/.tolist()/nonzero()."""
    from sparsekernels.layout import INDEX_FIELDS

    def build(mask):
        layout = BlockLayout.from_block_mask(mask, 4, nnz=6)
        return tuple(getattr(layout, f) for f in INDEX_FIELDS)

    torch._dynamo.reset()
    compiled = torch.compile(build, fullgraph=True, backend="eager")
    mask = random_block_mask(4, 5, 0.3)
    assert int(mask.sum()) == 6
    for got, want in zip(compiled(mask), build(mask)):
        assert torch.equal(got, want)


def test_build_with_nnz_calls_no_sync_functions(monkeypatch):
    """A second guard: Tensor.item / tolist / nonzero are never called when nnz is given."""
    mask = random_block_mask(6, 6, 0.5)
    calls = spy_host_syncs(monkeypatch)
    layout = BlockLayout.from_block_mask(mask, 2, nnz=18)
    old = BlockLayout.from_block_mask(mask, 2, nnz=18)
    layout.remap(old)
    monkeypatch.undo()
    assert calls == []
    assert layout.nnz == 18


def test_checked_mode_detects_wrong_nnz():
    mask = random_block_mask(4, 4, 0.5)
    with pytest.raises(ValueError, match="nnz=3 but block_mask has 8 active blocks"):
        BlockLayout.from_block_mask(mask, 2, nnz=3, check=True)
    sparsekernels.set_debug_checks(True)
    try:
        with pytest.raises(ValueError, match="active blocks"):
            BlockLayout.from_block_mask(mask, 2, nnz=9)
    finally:
        sparsekernels.set_debug_checks(False)
    BlockLayout.from_block_mask(mask, 2, nnz=8, check=True)  # the right count passes


def test_random_and_dense_constructors(device):
    layout = BlockLayout.random((32, 64), 8, 0.25, device=device)
    assert layout.nnz == 8 and layout.device.type == torch.device(device).type
    layout.validate()
    full = BlockLayout.dense((32, 64), 8, device=device)
    assert full.nnz == 32 and bool(full.to_block_mask().all())


def test_validate_catches_corruption():
    layout = BlockLayout.random((16, 16), 4, 0.5)
    broken = BlockLayout.from_fields(
        layout.shape,
        layout.block_size,
        {**layout.fields(), "col_indices": layout.col_indices.flip(0).contiguous()},
        check=False,
    )
    with pytest.raises(ValueError):
        broken.validate()


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="block_mask must have dtype torch.bool"):
        BlockLayout.from_block_mask(torch.ones(2, 2), 4)
    with pytest.raises(ValueError, match="block_mask must be 2-D"):
        BlockLayout.from_block_mask(torch.ones(2, 2, 2, dtype=torch.bool), 4)
    with pytest.raises(TypeError, match="block_mask must be a torch.Tensor"):
        BlockLayout.from_block_mask([[True]], 4)
    with pytest.raises(ValueError, match="mask must be 2-D"):
        BlockLayout.from_mask(torch.ones(4, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match=r"block_size \(4, 4\) must divide the mask shape \(6, 8\)"):
        BlockLayout.from_mask(torch.ones(6, 8, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="block_size must be positive"):
        BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 0)
    with pytest.raises(TypeError, match="block_size must be an int or a pair"):
        BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 2.5)
    with pytest.raises(ValueError, match=r"nnz must be in \[0, 4\]"):
        BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 2, nnz=5)
    with pytest.raises(TypeError, match="nnz must be a Python int"):
        BlockLayout.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 2, nnz=torch.tensor(4))
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        BlockLayout.random((8, 8), 4, 1.5)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        BlockLayout.random((8, 8), 4, 0.0)


def test_kernel_block_size_check():
    check_kernel_block_size((32, 64))
    with pytest.raises(ValueError, match=r"block_size must be one of \(16, 32, 64, 128\)"):
        check_kernel_block_size((8, 8))
    with pytest.raises(ValueError, match="block_size"):
        check_kernel_block_size((32, 48))


def test_int32_overflow_is_rejected():
    # A block grid over 2**31 blocks needs no memory to describe: an expanded view.
    huge = torch.ones(1, 1, dtype=torch.bool).expand(2**16, 2**15 + 1)
    with pytest.raises(ValueError, match="overflows int32"):
        BlockLayout.from_block_mask(huge, 1)
    with pytest.raises(ValueError, match="overflows int32"):
        BlockLayout.from_block_mask(torch.ones(2, 1, dtype=torch.bool), (2**30 + 1, 1))


def test_values_shape_errors():
    layout = BlockLayout.random((8, 8), 4, 0.5)
    with pytest.raises(ValueError, match=r"values must have shape \[\.\.\., nnz, bm, bn\] = \[\.\.\., 2, 4, 4\]"):
        layout.values_to_dense(torch.randn(3, 4, 4))
    with pytest.raises(TypeError, match="values must be a floating-point"):
        layout.values_to_dense(torch.ones(2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"dense must have shape \[\.\.\., 8, 8\]"):
        layout.dense_to_values(torch.randn(8, 4))

"""Hostile and careless inputs, table-driven over every backend: corrupted layouts from every
entry point (from_fields, the raw constructor, load_state_dict, set_layout, in-place edits in
debug-checks mode), wrong nnz without a check, conv geometry, NaN propagation, dtypes through
``backend="auto"``, the reference's fp32 accumulation, and constructor arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekernels
from sparsekernels import ops
from sparsekernels.conv_layout import conv_matrix_to_weight
from sparsekernels.dst import DynamicSparsity
from sparsekernels.layout import BlockLayout
from sparsekernels.nn import SparseConv2d, SparseLinear, sparsify
from sparsekernels.ops import backends
from sparsekernels.ops import reference as ref
from tests.helpers import RTOL, assert_close, random_block_mask

BACKENDS = ["reference", "triton"] + (["native"] if backends.native_available() else [])


def base_layout() -> BlockLayout:
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, 1] = mask[3, 4] = mask[0, 5] = False
    return BlockLayout.from_block_mask(mask, 16)


def corrupt(layout: BlockLayout, field: str, index, value) -> dict[str, torch.Tensor]:
    fields = {k: v.clone() for k, v in layout.fields().items()}
    fields[field][index] = torch.as_tensor(value, dtype=torch.int32)
    return fields


L0 = base_layout()
R0, C0 = L0.grid
NNZ0 = L0.nnz
# (field the error must name, corrupted fields): out of range, huge, negative, non-monotone
# offsets, duplicates, CSR/CSC disagreement, wrong dtype and length.
CORRUPTIONS = [
    ("col_indices", corrupt(L0, "col_indices", NNZ0 - 1, C0)),
    ("col_indices", corrupt(L0, "col_indices", 0, 2**31 - 1)),
    ("col_indices", corrupt(L0, "col_indices", 3, -1)),
    ("col_indices", corrupt(L0, "col_indices", 1, int(L0.col_indices[0]))),
    ("row_offsets", corrupt(L0, "row_offsets", R0, NNZ0 + 1)),
    ("row_offsets", corrupt(L0, "row_offsets", 1, 2**30)),
    ("row_offsets", corrupt(L0, "row_offsets", 0, -1)),
    ("col_offsets", corrupt(L0, "col_offsets", C0, NNZ0 - 1)),
    ("col_offsets", corrupt(L0, "col_offsets", 2, 0)),
    ("row_indices", corrupt(L0, "row_indices", NNZ0 - 1, 0)),
    ("row_indices", corrupt(L0, "row_indices", 0, R0)),
    ("row_indices_t", corrupt(L0, "row_indices_t", 0, R0)),
    ("row_indices_t", corrupt(L0, "row_indices_t", 1, -5)),
    ("block_indices_t", corrupt(L0, "block_indices_t", 0, NNZ0)),
    ("block_indices_t", corrupt(L0, "block_indices_t", 1, -(2**31))),
    ("block_indices_t", corrupt(L0, "block_indices_t", [0, 1], L0.block_indices_t[[1, 0]])),
    ("col_offsets", {**L0.fields(), "col_offsets": L0.col_offsets.long()}),
    ("row_indices", {**L0.fields(), "row_indices": L0.row_indices[:-1]}),
]
IDS = [f"{i}-{f}" for i, (f, _) in enumerate(CORRUPTIONS)]


def every_op(layout: BlockLayout, backend: str):
    """(name, thunk) for every op of one backend module, on small random operands."""
    fn = backends.module(backend)
    M, N = layout.shape
    v = torch.randn(layout.values_shape())
    yield "sdd", lambda: fn.sdd(torch.randn(M, 3), torch.randn(3, N), layout)
    yield "dsd", lambda: fn.dsd(v, layout, torch.randn(N, 2))
    yield "dsd_t", lambda: fn.dsd(v, layout, torch.randn(M, 2), True)
    yield "dds", lambda: fn.dds(torch.randn(2, M), v, layout)
    yield "dds_t", lambda: fn.dds(torch.randn(2, N), v, layout, True)


@pytest.mark.parametrize("field, fields", CORRUPTIONS, ids=IDS)
def test_from_fields_rejects_corruption_naming_the_field(field, fields):
    with pytest.raises(ValueError, match=rf"layout\.{field}"):
        BlockLayout.from_fields(L0.shape, L0.block_size, fields)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field, fields", CORRUPTIONS, ids=IDS)
def test_every_backend_rejects_unchecked_corrupted_layouts(field, fields, backend):
    """A layout that skipped validation (raw constructor / check=False) is validated before
    any kernel reads it, on every backend and through the public ops: ValueError naming the field."""
    bad = BlockLayout.from_fields(L0.shape, L0.block_size, fields, check=False)
    for _name, thunk in every_op(bad, backend):
        with pytest.raises(ValueError, match=rf"layout\.{field}"):
            thunk()
    with pytest.raises(ValueError, match=rf"layout\.{field}"):
        ops.dds(torch.randn(2, L0.shape[1]), torch.randn(L0.values_shape()), bad, True, backend=backend)
    for method in (bad.validate, bad.to_block_mask, bad.transpose):
        with pytest.raises(ValueError, match=rf"layout\.{field}"):
            method()


@pytest.mark.parametrize("field, fields", CORRUPTIONS[:16], ids=IDS[:16])
def test_layer_state_dict_and_set_layout_reject_corruption(field, fields):
    layer = SparseLinear(96, 64, block_size=16, layout=L0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    tampered = dict(layer.state_dict())
    tampered.update({f"layout_{k}": v for k, v in fields.items()})
    with pytest.raises(ValueError, match=rf"layout\.{field}"):
        layer.load_state_dict(tampered)
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load must leave the layer unchanged"
    with pytest.raises(ValueError, match=rf"layout\.{field}"):
        layer.set_layout(BlockLayout.from_fields(L0.shape, L0.block_size, fields, check=False))
    assert all(torch.equal(before[k], layer.state_dict()[k]) for k in before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_debug_checks_catch_in_place_buffer_edits(backend):
    """Editing a layer's layout buffers in place bypasses every entry check; debug-checks mode
    validates before every kernel, forward and backward."""
    layer = SparseLinear(96, 64, block_size=16, layout=L0)
    layer.backend = backend
    x = torch.randn(3, 96, requires_grad=True)
    layer(x).sum().backward()  # fine before the edit
    with torch.no_grad():
        layer.layout_col_indices[0] = 99
    with sparsekernels.debug_checks(), pytest.raises(ValueError, match=r"layout\.col_indices"):
        layer(x)
    with torch.no_grad():
        layer.layout_col_indices[0] = L0.col_indices[0]
    with sparsekernels.debug_checks():
        y = layer(x)
    # Read only by backward kernels; through .data so autograd's version check does not fire first.
    layer.layout_block_indices_t.data[0] = NNZ0 + 3
    with sparsekernels.debug_checks(), pytest.raises(ValueError, match=r"layout\.block_indices_t"):
        y.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_wrong_nnz_still_gives_a_valid_layout(backend):
    """``from_block_mask(nnz=wrong)`` without a check used to give out-of-range indices (a
    segfault under the interpreter). Now it gives a valid layout of other blocks, on which
    every backend agrees with the reference."""
    mask = random_block_mask(4, 6, 0.5)
    true = int(mask.sum())
    for nnz in (true - 1, true + 1, 0, 24):
        layout = BlockLayout.from_block_mask(mask, 16, nnz=nnz)
        assert layout.nnz == nnz
        layout.validate()
        v = torch.randn(layout.values_shape())
        b = torch.randn(layout.shape[1], 3)
        assert_close(backends.module(backend).dsd(v, layout, b), ref.dsd(v.double(), layout, b.double()))
    with pytest.raises(ValueError, match=f"nnz={true - 1} but block_mask has {true} active blocks"):
        BlockLayout.from_block_mask(mask, 16, nnz=true - 1, check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_kernel_size_must_match_the_layout(backend):
    """A kernel_size whose taps split the layout's block rows is refused by every backend alike."""
    layout = BlockLayout.dense((9 * 32, 16), 16)  # K = 32 for 3x3
    x = torch.randn(1, 16, 6, 6)
    v = torch.randn(layout.values_shape())
    fn = backends.module(backend)
    with pytest.raises(ValueError, match=r"kernel_size \(2, 2\) .* = 72 must be a multiple of the block size 16"):
        fn.conv2d_forward(x, v, layout, (2, 2), (1, 1), (0, 0), (1, 1))  # K = 288 / 4 = 72: splits a block row
    with pytest.raises(ValueError, match="kernel_size"):
        ops.conv2d(x, v, layout, (4, 4), backend=backend)  # 288 / 16 = 18 output channels: not a block multiple


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_weight_on_padding_only_tap_propagates_like_dense(backend):
    """A NaN in a tap that only ever sees zero padding at the border gives NaN where F.conv2d
    does (0 * NaN), on every backend; so does a NaN output gradient into the weight gradient."""
    torch.manual_seed(1)
    layout = BlockLayout.dense((9 * 16, 16), 16)
    x = torch.randn(1, 16, 4, 4)
    v = torch.randn(layout.values_shape())
    v[0, 0, 0] = float("nan")  # tap (0, 0): at output row/col 0 it reads padding only
    weight = conv_matrix_to_weight(layout.values_to_dense(v), (3, 3))
    want = F.conv2d(x, weight, padding=1)
    got = backends.module(backend).conv2d_forward(x, v, layout, (3, 3), (1, 1), (1, 1), (1, 1))
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    dy = torch.randn(1, 16, 4, 4)
    dy[0, 0, 0, 0] = float("nan")
    want_dw = layout.dense_to_values(
        torch.nn.grad.conv2d_weight(x, [16, 16, 3, 3], dy, 1, 1).permute(2, 3, 0, 1).reshape(9 * 16, 16)
    )
    got_dw = backends.module(backend).conv2d_weight_grad(x, dy, layout, (3, 3), (1, 1), (1, 1), (1, 1))
    assert torch.equal(torch.isnan(got_dw), torch.isnan(want_dw))


def test_float64_through_auto_and_explicit_backend_errors():
    """``model.double()`` works under the default ``backend="auto"`` (the reference runs it);
    an explicit kernel backend still refuses float64 with its clear error."""
    torch.manual_seed(0)
    model = nn.Sequential(
        SparseLinear(32, 32, density=0.5, block_size=16), nn.ReLU(), SparseLinear(32, 16, block_size=16)
    )
    model = model.double()
    x = torch.randn(4, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: model(t), (x,), atol=1e-8)
    conv = SparseConv2d(16, 16, 3, padding=1, block_size=16, density=0.5).double()
    y = conv(torch.randn(1, 16, 5, 5, dtype=torch.float64))
    assert y.dtype == torch.float64
    layout = BlockLayout.dense((32, 32), 16)
    v, b = torch.randn(layout.values_shape(), dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    for backend in BACKENDS[1:]:
        with pytest.raises(TypeError, match="float64"):
            ops.dsd(v, layout, b, backend=backend)
    assert backends.resolve("auto", torch.device("cpu"), torch.float64) == "reference"
    assert backends.resolve("auto", torch.device("cpu"), torch.float32) == (
        "native" if "native" in BACKENDS else "reference"
    )
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        backends.resolve("gpu", torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_accumulates_half_types_in_fp32(dtype):
    """The oracle rounds once: equal to the float32 computation rounded to the dtype, exactly."""
    layout = BlockLayout.random((64, 256), 16, 0.5)
    v = torch.randn(layout.values_shape()).to(dtype)
    b = torch.randn(256, 8).to(dtype)
    got = ref.dsd(v, layout, b)
    want = ref.dsd(v.float(), layout, b.float()).to(dtype)
    assert torch.equal(got, want)
    assert_close(got, ref.dsd(v.double(), layout, b.double()), dtype)
    a = torch.randn(64, 128).to(dtype)
    bb = torch.randn(128, 256).to(dtype)
    assert torch.equal(ref.sdd(a, bb, layout), ref.sdd(a.float(), bb.float(), layout).to(dtype))
    assert RTOL[dtype] > 0


CONSTRUCTOR_ERRORS = [
    (lambda: SparseLinear(32, 32, layout="x"), TypeError, "layout must be a BlockLayout"),
    (lambda: SparseLinear(32, 32, layout=torch.zeros(2)), TypeError, "layout must be a BlockLayout"),
    (lambda: SparseConv2d(16, 16, 3, stride=0, block_size=16), ValueError, "stride must be >= 1"),
    (lambda: SparseConv2d(16, 16, 3, padding=-1, block_size=16), ValueError, "padding must be >= 0"),
    (lambda: SparseConv2d(16, 16, 3, dilation=(1, 0), block_size=16), ValueError, "dilation must be >= 1"),
    (lambda: SparseConv2d(16, 16, 0, block_size=16), ValueError, "kernel_size must be >= 1"),
    (lambda: sparsify(nn.Sequential(nn.Linear(32, 32)), backend="gpu"), ValueError, "backend must be 'auto'"),
    (lambda: setattr(SparseLinear(32, 32, block_size=16), "backend", "cuda"), ValueError, "backend must be 'auto'"),
]


@pytest.mark.parametrize("make, error, message", CONSTRUCTOR_ERRORS)
def test_constructors_validate_every_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_layer_rejects_unchecked_user_layout():
    bad = BlockLayout.from_fields(L0.shape, L0.block_size, CORRUPTIONS[0][1], check=False)
    with pytest.raises(ValueError, match=r"layout\.col_indices"):
        SparseLinear(96, 64, layout=bad)


def test_engine_rejects_shared_weight_values_and_dead_stop_after():
    a = SparseLinear(32, 32, density=0.5, block_size=16)
    b = SparseLinear(32, 32, density=0.5, block_size=16)
    b.weight_values = a.weight_values
    model = nn.Sequential(a, b)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="share one weight_values parameter"):
        DynamicSparsity(model, opt, method="set", update_every=1)
    same = nn.Sequential(a, nn.ReLU(), a)  # one module twice: one layer
    assert len(DynamicSparsity(same, torch.optim.SGD(same.parameters(), lr=0.1), method="set").layers) == 1
    model = nn.Sequential(SparseLinear(32, 32, density=0.5, block_size=16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"stop_after=0.75 .* is a step count, not a fraction"):
        DynamicSparsity(model, opt, method="set", update_every=10, stop_after=0.75)
    with pytest.raises(ValueError, match="before the first update step"):
        DynamicSparsity(model, opt, method="set", update_every=10, stop_after=9)
    DynamicSparsity(model, opt, method="set", update_every=10, stop_after=10)


@pytest.mark.parametrize("geometry", [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (2, 0), (2, 1))])
def test_reference_structural_conv_path_matches_the_dense_one(geometry):
    """The slow path the reference takes for non-finite inputs computes the same convolution."""
    ks, st, pd, dl = geometry
    mask = random_block_mask(ks[0] * ks[1] * 2, 2, 0.5)
    layout = BlockLayout.from_block_mask(mask, 8)
    x = torch.randn(2, 16, 7, 6, dtype=torch.float64)
    v = torch.randn(layout.values_shape(), dtype=torch.float64)
    dense = ref.conv2d_forward(x, v, layout, ks, st, pd, dl)
    slow = ref._structural_conv_forward(x, v, layout, ks, st, pd, dl)
    assert torch.allclose(slow, dense, rtol=1e-12, atol=1e-12)
    dy = torch.randn(dense.shape, dtype=torch.float64)
    dx = ref.conv2d_input_grad(dy, v, layout, x.shape, ks, st, pd, dl)
    slow_dx = ref._structural_conv_input_grad(dy, v, layout, tuple(x.shape), ks, st, pd, dl)
    assert torch.allclose(slow_dx, dx, rtol=1e-12, atol=1e-12)


def test_nan_inputs_reach_the_same_outputs_on_every_backend():
    """A NaN/Inf in a dense input reaches exactly the outputs its stored blocks touch, on every
    backend (unstored blocks are structural zeros): matmul and convolution, forward and dx."""
    torch.manual_seed(3)
    mask = torch.zeros(9 * 2, 2, dtype=torch.bool)
    mask[[0, 5, 9, 16], [0, 1, 0, 1]] = True  # taps 0, 2, 4, 8; both output and input blocks
    layout = BlockLayout.from_block_mask(mask, 16)  # K = 32, C = 32, 3x3
    v = torch.randn(layout.values_shape())
    x = torch.randn(1, 32, 5, 5)
    x[0, 3, 2, 2] = float("nan")  # input channel block 0
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    ys = {b: backends.module(b).conv2d_forward(x, v, layout, *geo) for b in BACKENDS}
    dense = F.conv2d(x, conv_matrix_to_weight(layout.values_to_dense(v), (3, 3)), padding=1)
    assert int((~torch.isfinite(dense)).sum()) > int((~torch.isfinite(ys["reference"])).sum()), "not structural"
    dy = torch.randn(1, 32, 5, 5)
    dy[0, 20, 0, 4] = float("inf")  # output channel block 1
    dxs = {b: backends.module(b).conv2d_input_grad(dy, v, layout, (1, 32, 5, 5), *geo) for b in BACKENDS}
    lin = BlockLayout.from_block_mask(torch.tensor([[True, False], [False, False], [True, True]]), 16)
    lv = torch.randn(lin.values_shape())
    a = torch.randn(3, 48)
    a[1, 40] = float("nan")  # reaches the output columns of block-row 2's blocks only
    outs = {b: backends.module(b).dds(a, lv, lin) for b in BACKENDS}
    for results in (ys, dxs, outs):
        want = ~torch.isfinite(results["reference"])
        assert 0 < int(want.sum()) < want.numel()
        for b, got in results.items():
            assert torch.equal(~torch.isfinite(got), want), f"{b}: NaN/Inf pattern differs from the reference"


@pytest.mark.skipif("native" not in BACKENDS, reason="native backend not built")
def test_native_kernels_are_bitwise_identical_for_any_thread_count():
    layout = BlockLayout.random((96, 64), 16, 0.5)
    conv_layout = BlockLayout.random((9 * 32, 32), 16, 0.5)
    nb = backends.module("native")
    v, cv = torch.randn(layout.values_shape()), torch.randn(conv_layout.values_shape())
    a, b, x = torch.randn(40, 96), torch.randn(64, 40), torch.randn(2, 32, 9, 9)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    dy = torch.randn(2, 32, 9, 9)

    def run():
        return [
            nb.dsd(v, layout, b),
            nb.dds(a, v, layout),
            nb.sdd(a.t().contiguous(), b.t().contiguous(), layout),
            nb.conv2d_forward(x, cv, conv_layout, *geo),
            nb.conv2d_input_grad(dy, cv, conv_layout, x.shape, *geo),
            nb.conv2d_weight_grad(x, dy, conv_layout, *geo),
        ]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(p, q) for p, q in zip(one, two))


@pytest.mark.skipif("native" not in BACKENDS, reason="native backend not built")
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_native_weight_grad_nonfinite_dy_like_dense(stride, seed):
    """Non-finite output gradients anywhere (border pixels whose taps see only padding
    included) give the NaN/Inf pattern of the dense weight gradient at the stored blocks: the
    C++ kernel's padding pass, not a Python scan of dy."""
    gen = torch.Generator().manual_seed(seed)
    layout = BlockLayout.random((9 * 32, 32), 16, 0.5, generator=gen)
    x = torch.randn(2, 32, 7, 6, generator=gen)
    Ho, Wo = (7 + 2 - 3) // stride + 1, (6 + 2 - 3) // stride + 1
    dy = torch.randn(2, 32, Ho, Wo, generator=gen)
    for _ in range(3):
        n, k = int(torch.randint(2, (1,), generator=gen)), int(torch.randint(32, (1,), generator=gen))
        oh, ow = int(torch.randint(Ho, (1,), generator=gen)), int(torch.randint(Wo, (1,), generator=gen))
        dy[n, k, oh, ow] = float("nan") if seed % 2 else float("inf")
    dense = torch.nn.grad.conv2d_weight(x.double(), [32, 32, 3, 3], dy.double(), stride, 1)
    want = layout.dense_to_values(dense.permute(2, 3, 0, 1).reshape(9 * 32, 32))
    got = backends.module("native").conv2d_weight_grad(x, dy, layout, (3, 3), (stride, stride), (1, 1), (1, 1))
    assert torch.equal(~torch.isfinite(got), ~torch.isfinite(want))
    assert_close(torch.where(torch.isfinite(want), got, 0.0), torch.where(torch.isfinite(want), want, 0.0))

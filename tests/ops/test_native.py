"""Native CPU backend specifics (the shared op tables of test_matmul/test_conv also run it).

Determinism across thread counts, layouts with huge block indices, corrupted layouts that
must raise instead of reading out of bounds, dtype handling, the availability flag, the
portable (non-AVX2) kernels, and forward + gradients through ``sparsekernels.ops`` against
float64. Outputs are NaN-poisoned, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

import sparsekernels
from sparsekernels import BlockLayout, native_available, ops
from sparsekernels.conv_layout import conv_layout_from_tap_masks, conv_matrix_to_weight
from sparsekernels.ops import backends
from sparsekernels.ops import native_backend as nb
from sparsekernels.ops import reference as ref
from sparsekernels.ops._alloc import set_poison_outputs
from tests.helpers import assert_close, random_block_mask

F64 = torch.float64
ISAS = ("avx512", "avx2", "baseline")  # the kernel tables of csrc/, widest first
needs_native = pytest.mark.skipif(not native_available(), reason="native extension not built")


@pytest.fixture(autouse=True)
def _poison():
    set_poison_outputs(True)
    yield
    set_poison_outputs(False)


@pytest.fixture
def cpu(device):
    """The native backend runs on CPU tensors only; the test is skipped under --device cuda."""
    if device.type != "cpu":
        pytest.skip("the native backend is CPU-only")
    return device


@pytest.fixture
def threads():
    """Restores torch's thread count after a test changes it."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def _layout(shape, block, density, generator=None) -> BlockLayout:
    R, C = shape[0] // block[0], shape[1] // block[1]
    return BlockLayout.from_block_mask(random_block_mask(R, C, density, generator=generator), block)


def _every_op(layout: BlockLayout, values, P=40, K=70):
    """Each matmul backend function with fresh dense operands: name -> (fn, args)."""
    M, N = layout.shape
    return {
        "dsd": (nb.dsd, (values, layout, torch.randn(2, N, P), False)),
        "dsd_t": (nb.dsd, (values, layout, torch.randn(M, P), True)),
        "dds": (nb.dds, (torch.randn(P, M), values, layout, False)),
        "dds_t": (nb.dds, (torch.randn(3, P, N), values, layout, True)),
        "sdd": (nb.sdd, (torch.randn(M, K), torch.randn(K, N), layout)),
    }


def _conv_problem(batch=2, channels=(64, 32), size=(11, 9), kernel=3, block=16, density=0.4):
    C, K = channels
    masks = random_block_mask(kernel * kernel * (K // block), C // block, density).reshape(kernel**2, K // block, -1)
    layout = conv_layout_from_tap_masks(masks, block)
    values = torch.randn(layout.nnz, block, block)
    x = torch.randn(batch, C, *size).contiguous(memory_format=torch.channels_last)
    return layout, values, x


def _every_conv(layout, values, x, stride=2, padding=1, dilation=1, kernel=3):
    geo = ((kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation))
    y = ref.conv2d_forward(x, values, layout, *geo)
    dy = torch.randn_like(y)
    return {
        "conv2d_forward": (nb.conv2d_forward, (x, values, layout, *geo)),
        "conv2d_input_grad": (nb.conv2d_input_grad, (dy, values, layout, tuple(x.shape), *geo)),
        "conv2d_weight_grad": (nb.conv2d_weight_grad, (x, dy, layout, *geo)),
    }


# ------------------------------------------------------------------------------ availability
def test_native_available_semantics(cpu):
    """A cached bool, consistent with the backend module, and what "auto" picks on CPU."""
    flag = native_available()
    assert isinstance(flag, bool)
    assert flag is sparsekernels.native_available() is nb.available()
    if flag:
        assert backends.resolve("auto", cpu) == "native"
        assert nb.isa() in ISAS
    else:
        assert backends.resolve("auto", cpu) == "reference"
        with pytest.raises(RuntimeError, match="not available"):
            backends.resolve("native", cpu)


def test_available_is_false_when_the_extension_does_not_load(monkeypatch):
    """A missing (or unloadable) extension reads as unavailable, never as an import error."""
    monkeypatch.setattr(nb, "_loaded", None)
    monkeypatch.delattr(sparsekernels, "_native", raising=False)
    monkeypatch.setitem(sys.modules, "sparsekernels._native", None)  # makes the import fail
    assert nb.available() is False
    with pytest.raises(RuntimeError, match="not available"):
        nb.dsd(torch.randn(1, 16, 16), BlockLayout.dense((16, 16), 16), torch.randn(16, 2))


# ------------------------------------------------------------------------------ correctness
@needs_native
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("block", [(16, 16), (32, 16), (64, 64)])
def test_matmul_autograd_vs_float64(block, transpose, cpu):
    """dsd / dds forward and both gradients (sdd, dsd, dds underneath) through the public ops."""
    layout = _layout((4 * block[0], 3 * block[1]), block, 0.5)
    values = torch.randn(layout.values_shape(), requires_grad=True)
    M, N = layout.shape
    b = torch.randn(2, M if transpose else N, 33, requires_grad=True)
    a = torch.randn(2, 17, N if transpose else M, requires_grad=True)
    y = ops.dsd(values, layout, b, transpose, backend="native")
    z = ops.dds(a, values, layout, transpose, backend="native")
    gy, gz = torch.randn_like(y), torch.randn_like(z)
    torch.autograd.backward([y, z], [gy, gz])

    v64, b64, a64 = (t.detach().to(F64).requires_grad_(True) for t in (values, b, a))
    y64 = ref.dsd(v64, layout, b64, transpose)
    z64 = ref.dds(a64, v64, layout, transpose)
    torch.autograd.backward([y64, z64], [gy.to(F64), gz.to(F64)])
    assert_close(y, y64)
    assert_close(z, z64)
    assert_close(values.grad, v64.grad)
    assert_close(b.grad, b64.grad)
    assert_close(a.grad, a64.grad)


@needs_native
@pytest.mark.parametrize("block", [(16, 16), (32, 64)])
def test_sdd_autograd_vs_float64(block, cpu):
    layout = _layout((3 * block[0], 5 * block[1]), block, 0.4)
    a = torch.randn(layout.shape[0], 300, requires_grad=True)  # K > the kernel's 256-long chunks
    b = torch.randn(300, layout.shape[1], requires_grad=True)
    v = ops.sdd(a, b, layout, backend="native")
    gv = torch.randn_like(v)
    v.backward(gv)
    a64, b64 = (t.detach().to(F64).requires_grad_(True) for t in (a, b))
    v64 = ref.sdd(a64, b64, layout)
    v64.backward(gv.to(F64))
    assert_close(v, v64)
    assert_close(a.grad, a64.grad)
    assert_close(b.grad, b64.grad)


@needs_native
@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, size",
    [(3, 1, 1, 1, (16, 16)), (3, 2, 1, 1, (9, 12)), (5, 1, 3, 2, (7, 8)), (1, 2, 0, 1, (8, 7))],
)
def test_conv_autograd_vs_float64(kernel, stride, padding, dilation, size, cpu):
    layout, values, x = _conv_problem(size=size, kernel=kernel)
    values.requires_grad_(True)
    x.requires_grad_(True)
    y = ops.conv2d(x, values, layout, kernel, stride, padding, dilation, backend="native")
    dy = torch.randn_like(y)
    y.backward(dy)

    x64, v64 = (t.detach().to(F64).requires_grad_(True) for t in (x, values))
    y64 = F.conv2d(x64, conv_matrix_to_weight(layout.values_to_dense(v64), kernel), None, stride, padding, dilation)
    y64.backward(dy.to(F64))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, y64)
    assert_close(x.grad, x64.grad)
    assert_close(values.grad, v64.grad)


@needs_native
def test_strided_and_broadcast_operands(cpu):
    """Views of any strides (transposed, sliced, stride-0 broadcast) are read correctly."""
    layout = _layout((64, 96), (16, 32), 0.5)
    values = torch.randn(layout.values_shape())
    v64 = values.to(F64)
    b_t = torch.randn(3, 50, 96).transpose(1, 2)  # [3, 96, 50], columns not contiguous
    b_sliced = torch.randn(96, 100)[:, ::2]  # column stride 2
    b_bcast = torch.randn(96, 1).expand(96, 50)  # column stride 0
    for b in (b_t, b_sliced, b_bcast):
        assert_close(nb.dsd(values, layout, b), ref.dsd(v64, layout, b.to(F64)))
    a_t = torch.randn(64, 30).t()  # [30, 64] column-major
    assert_close(nb.dds(a_t, values, layout), ref.dds(a_t.to(F64), v64, layout))
    a_b = torch.randn(5, 96)[:, None, :].expand(5, 4, 96)  # [5, 4, 96] with a stride-0 dim
    assert_close(nb.dds(a_b, values, layout, True), ref.dds(a_b.to(F64), v64, layout, True))
    a, b = torch.randn(70, 64).t(), torch.randn(96, 70).t()  # both column-major
    assert_close(nb.sdd(a, b, layout), ref.sdd(a.to(F64), b.to(F64), layout))
    x = torch.randn(2, 96, 9, 9)  # NCHW: converted to channels-last inside
    conv_layout = conv_layout_from_tap_masks(random_block_mask(9 * 2, 3, 0.5).reshape(9, 2, 3), 32)
    cv = torch.randn(conv_layout.values_shape())
    assert_close(
        nb.conv2d_forward(x, cv, conv_layout, (3, 3), (1, 1), (1, 1), (1, 1)),
        ref.conv2d_forward(x.to(F64), cv.to(F64), conv_layout, (3, 3), (1, 1), (1, 1), (1, 1)),
    )


@needs_native
def test_empty_rows_columns_and_layouts(cpu):
    """Block-rows/columns without blocks, and nnz = 0, still write every output element."""
    for density in (0.0, 0.05):
        layout = _layout((96, 128), (16, 32), density)
        values = torch.randn(layout.values_shape())
        for fn, args in _every_op(layout, values).values():
            expected = getattr(ref, fn.__name__)(*(t.to(F64) if isinstance(t, torch.Tensor) else t for t in args))
            assert_close(fn(*args), expected)
    layout, values, x = _conv_problem(density=0.0)
    for name, (fn, args) in _every_conv(layout, values, x).items():
        out = fn(*args)
        assert torch.equal(out, torch.zeros_like(out)), name


@needs_native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_compute_in_float32(dtype, cpu):
    layout = _layout((64, 64), (32, 32), 0.5)
    values = torch.randn(layout.values_shape()).to(dtype)
    b = torch.randn(64, 48).to(dtype)
    y = ops.dsd(values, layout, b, backend="native")
    assert y.dtype == dtype
    assert_close(y, ref.dsd(values.to(F64), layout, b.to(F64)))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
def test_unsupported_dtype_names_it(dtype, cpu):
    layout = _layout((32, 32), (16, 16), 1.0)
    if dtype.is_complex:  # the shared checks reject it before the backend: still a TypeError naming it
        with pytest.raises(TypeError, match="complex64"):
            ops.dsd(
                torch.randn(layout.values_shape(), dtype=dtype),
                layout,
                torch.randn(32, 4, dtype=dtype),
                backend="native",
            )
        return
    values, b = torch.randn(layout.values_shape(), dtype=dtype), torch.randn(32, 4, dtype=dtype)
    with pytest.raises(TypeError, match="float64"):
        ops.dsd(values, layout, b, backend="native")
    layout_c, cv, x = _conv_problem()
    with pytest.raises(TypeError, match="float64"):
        ops.conv2d(x.to(dtype), cv.to(dtype), layout_c, 3, padding=1, backend="native")


# ------------------------------------------------------------------------------ determinism
@needs_native
def test_threads_give_identical_results(cpu, threads):
    """Every op, bitwise, with 1, 2 and 3 threads (each output reduced by one thread in order)."""
    layout = _layout((256, 384), (32, 32), 0.3)
    values = torch.randn(layout.values_shape())
    cases = _every_op(layout, values, P=200, K=600)
    cl, cv, x = _conv_problem(batch=4, size=(16, 16))
    cases.update(_every_conv(cl, cv, x, stride=1))
    for name, (fn, args) in cases.items():
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(fn(*args))
        assert all(torch.equal(results[0], r) for r in results[1:]), name


@needs_native
@pytest.mark.parametrize("transpose", [False, True])
def test_wide_dense_operands_take_the_cache_blocked_paths(transpose, cpu, threads):
    """dsd with B rows >= 4 KB apart (P = 1100 of a 1300-wide buffer: each 64-column panel is
    packed into scratch first, the last one 12 wide) equals, bitwise, the same product cut
    into 64-column slices (no packing), and float64; dds over many row chunks and sdd over
    several K chunks match float64; all bitwise equal with 1 and 2 threads."""
    layout = _layout((96, 128), (16, 32), 0.4)
    values = torch.randn(layout.values_shape())
    M, N = layout.shape
    inner = M if transpose else N
    b = torch.randn(2, inner, 1300)[:, :, :1100]  # unit column stride, rows 1300 floats apart
    torch.set_num_threads(1)
    y = nb.dsd(values, layout, b, transpose)
    slices = torch.cat([nb.dsd(values, layout, b[:, :, c : c + 64].contiguous(), transpose)
                        for c in range(0, 1100, 64)], dim=2)  # fmt: skip
    assert torch.equal(y, slices)
    assert_close(y, ref.dsd(values.to(F64), layout, b.to(F64), transpose))
    a = torch.randn(1000, N if transpose else M)
    z = nb.dds(a, values, layout, transpose)
    assert_close(z, ref.dds(a.to(F64), values.to(F64), layout, transpose))
    ka, kb = torch.randn(M, 900), torch.randn(900, N)
    v = nb.sdd(ka, kb, layout)
    assert_close(v, ref.sdd(ka.to(F64), kb.to(F64), layout))
    torch.set_num_threads(2)
    assert torch.equal(y, nb.dsd(values, layout, b, transpose))
    assert torch.equal(z, nb.dds(a, values, layout, transpose))
    assert torch.equal(v, nb.sdd(ka, kb, layout))


@needs_native
def test_large_outputs_streamed(cpu, threads):
    """Forward and input-gradient outputs of 8 MB (beyond any per-core L2: written with
    non-temporal stores), and the weight gradient of the same problem: against float64, and
    bitwise equal with 1 and 2 threads. Block density 0.5 of a 64-channel 3x3 layer."""
    layout, values, x = _conv_problem(batch=32, channels=(64, 64), size=(32, 32), block=32, density=0.5)
    for name, (fn, args) in _every_conv(layout, values, x, stride=1).items():
        torch.set_num_threads(1)
        first = fn(*args)
        torch.set_num_threads(2)
        assert torch.equal(first, fn(*args)), name
        expected = getattr(ref, name)(*(t.to(F64) if isinstance(t, torch.Tensor) else t for t in args))
        assert_close(first, expected)


@needs_native
def test_build_has_parallel_backend(cpu, threads):
    """A build check, not a timing: the extension was compiled with torch's parallel backend,
    binds to the OpenMP runtime torch loaded, follows torch.set_num_threads, and one parallel
    region really runs on that many threads. A serial build (no -fopenmp) fails here."""
    info = sparsekernels.native_info()
    assert info["available"] and info["isa"] in ISAS
    if not torch._C.has_openmp:
        pytest.skip("this torch was built without OpenMP: the extension is serial by design")
    assert info["parallel_backend"] == "openmp", info
    torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    runtime = os.path.realpath(str(info["openmp_runtime"]))
    # torch's wheels bundle libgomp; a source build of torch may use the system's, which is
    # then the one torch loaded too (same soname).
    assert runtime.startswith(torch_lib) or "libgomp" in os.path.basename(runtime), runtime
    for n in (1, 2):
        torch.set_num_threads(n)
        info = sparsekernels.native_info()
        assert info["threads"] == n
        assert info["threads_used"] == n, f"{n} threads requested, the parallel region ran on {info['threads_used']}"


def _supported_isas() -> list[str]:
    """The instruction sets this CPU can run (set_isa refuses the others)."""
    if not native_available():
        return []
    nb.isa()  # loads the extension
    native, found = torch.ops.sparsekernels_native, []
    try:
        for name in ISAS:
            try:
                native.set_isa(name)
                found.append(name)
            except ValueError:
                pass
    finally:
        native.set_isa("auto")
    return found


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("block", [(16, 32), (8, 8), (24, 40)])
def test_every_isa_matches(isa, block, cpu):
    """Each kernel table the CPU supports (the default picks the widest), forced at run time,
    agrees with float64 on every op. Blocks of 8 and 24/40 columns leave partial vectors (masked
    loads/stores in the AVX-512 tables, scalar tails elsewhere); P = 40 and K = 70 too."""
    if isa not in _supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    native = torch.ops.sparsekernels_native
    layout = _layout((6 * block[0], 4 * block[1]), block, 0.5)
    values = torch.randn(layout.values_shape())
    cb = block[1]
    cl, cv, x = _conv_problem(channels=(2 * cb, 2 * cb), block=cb, density=0.5)
    cases = {**_every_op(layout, values), **_every_conv(cl, cv, x)}
    cases.update({f"{k}_s1": c for k, c in _every_conv(cl, cv, x, stride=1).items()})
    native.set_isa(isa)
    try:
        assert nb.isa() == isa
        for fn, args in cases.values():
            expected = getattr(ref, fn.__name__)(*(t.to(F64) if isinstance(t, torch.Tensor) else t for t in args))
            assert_close(fn(*args), expected)
    finally:
        native.set_isa("auto")
    with pytest.raises(ValueError, match="isa must be"):
        native.set_isa("sse9")


# ------------------------------------------------------------------------------ layouts
@needs_native
def test_huge_block_indices(cpu):
    """A very wide and a very tall layout, with blocks at the far ends (indices ~ 2**17)."""
    C = 2**17
    mask = torch.zeros(2, C, dtype=torch.bool)
    mask[0, [0, 5, C - 2]] = True
    mask[1, [1, C // 2, C - 1]] = True
    wide = BlockLayout.from_block_mask(mask, 16)  # [32, 2**21]
    tall = BlockLayout.from_block_mask(mask.t().contiguous(), 16)  # [2**21, 32]
    for layout in (wide, tall):
        values = torch.randn(layout.values_shape())
        v64 = values.to(F64)
        M, N = layout.shape
        b = torch.randn(N, 3)
        assert_close(nb.dsd(values, layout, b), ref.dsd(v64, layout, b.to(F64)))
        bt = torch.randn(M, 3)
        assert_close(nb.dsd(values, layout, bt, True), ref.dsd(v64, layout, bt.to(F64), True))
        a = torch.randn(3, M)
        assert_close(nb.dds(a, values, layout), ref.dds(a.to(F64), v64, layout))
        at = torch.randn(3, N)
        assert_close(nb.dds(at, values, layout, True), ref.dds(at.to(F64), v64, layout, True))
        a, b = torch.randn(M, 2), torch.randn(2, N)
        assert_close(nb.sdd(a, b, layout), ref.sdd(a.to(F64), b.to(F64), layout))


def _corrupt(layout: BlockLayout, field: str, index, value) -> BlockLayout:
    fields = {k: v.clone() for k, v in layout.fields().items()}
    fields[field][index] = torch.as_tensor(value, dtype=torch.int32)
    return BlockLayout.from_fields(layout.shape, layout.block_size, fields, check=False)


def _corruptions(layout: BlockLayout):
    """(field named in the error, corrupted layout) pairs: out of range, huge, negative,
    non-monotone offsets, duplicates, and CSR/CSC disagreement."""
    R, C = layout.grid
    nnz = layout.nnz
    yield "col_indices", _corrupt(layout, "col_indices", nnz - 1, C)
    yield "col_indices", _corrupt(layout, "col_indices", 0, 2**31 - 1)
    yield "col_indices", _corrupt(layout, "col_indices", 1, -7)
    yield "row_offsets", _corrupt(layout, "row_offsets", R, nnz + 1)
    yield "row_offsets", _corrupt(layout, "row_offsets", 1, 2**30)
    yield "row_offsets", _corrupt(layout, "row_offsets", 0, -1)
    yield "col_offsets", _corrupt(layout, "col_offsets", C, nnz - 1)
    yield "row_indices_t", _corrupt(layout, "row_indices_t", 0, R)
    yield "block_indices_t", _corrupt(layout, "block_indices_t", 0, nnz)
    yield "block_indices_t", _corrupt(layout, "block_indices_t", 1, -(2**31))
    # A permutation still, but two transposed entries now point at each other's blocks.
    yield "block_indices_t", _corrupt(layout, "block_indices_t", [0, 1], layout.block_indices_t[[1, 0]])
    yield "row_indices", _corrupt(layout, "row_indices", nnz - 1, 0)
    assert int(layout.row_offsets[1]) >= 2  # block-row 0 has two blocks: repeat a column within it
    yield "col_indices", _corrupt(layout, "col_indices", 1, int(layout.col_indices[0]))
    wrong_dtype = {k: v.clone() for k, v in layout.fields().items()}
    wrong_dtype["col_offsets"] = wrong_dtype["col_offsets"].long()
    yield "col_offsets", BlockLayout.from_fields(layout.shape, layout.block_size, wrong_dtype, check=False)


@needs_native
def test_corrupted_layouts_raise(cpu):
    """Every op checks every index before reading: a ValueError naming the field, no crash."""
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, 1] = mask[3, 4] = False
    layout = BlockLayout.from_block_mask(mask, 16)
    values = torch.randn(layout.values_shape())
    conv_mask = torch.ones(9 * 2, 3, dtype=torch.bool)
    conv_mask[4, 2] = False
    conv_layout = BlockLayout.from_block_mask(conv_mask, 16)  # K = 32, C = 48, 3x3
    cv = torch.randn(conv_layout.values_shape())
    x = torch.randn(1, 48, 6, 6)
    for field, bad in _corruptions(layout):
        for fn, args in _every_op(bad, values).values():
            with pytest.raises(ValueError, match=f"layout.{field}"):
                fn(*args)
    for field, bad in _corruptions(conv_layout):
        for fn, args in _every_conv(conv_layout, cv, x, stride=1).values():
            args = tuple(bad if a is conv_layout else a for a in args)
            with pytest.raises(ValueError, match=f"layout.{field}"):
                fn(*args)


@needs_native
@pytest.mark.parametrize("case", ["overflowing-sum", "inf-minus-inf", "nan"])
def test_nonfinite_weight_check_is_exact(case, cpu, monkeypatch):
    """The forward falls back to the reference exactly when a stored weight is NaN/Inf: the
    cheap ``sum`` pre-check must neither miss one (+Inf and -Inf sum to NaN, still caught) nor
    send finite weights whose sum overflows to the slow path."""
    layout = BlockLayout.dense((9 * 16, 16), 16)
    x = torch.randn(1, 16, 4, 4)
    v = torch.randn(layout.values_shape())
    if case == "overflowing-sum":
        v = v.sign() * 3e38  # finite, but the float32 sum overflows
        v[0] = 3e38
    elif case == "inf-minus-inf":
        v[0, 0, 0], v[1, 0, 0] = float("inf"), float("-inf")
    else:
        v[0, 0, 0] = float("nan")
    finite = bool(torch.isfinite(v).all())
    assert not torch.isfinite(v.sum()) or case == "nan"
    used = []
    real = nb._reference
    monkeypatch.setattr(nb, "_reference", lambda: used.append(True) or real())
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    y = nb.conv2d_forward(x, v, layout, *geo)
    assert bool(used) == (not finite)
    if not finite:  # the reference's dense semantics: 0 * NaN/Inf at the padding is NaN
        want = F.conv2d(x, conv_matrix_to_weight(layout.values_to_dense(v), (3, 3)), padding=1)
        assert torch.equal(torch.isnan(y), torch.isnan(want))

"""Block-sparse matmul (sdd, dsd, dds): forward and gradients of every backend against a
float64 dense reference, bad-input errors, and topology changes that must not recompile.

Cases come from :mod:`tests.ops.cases`. On CPU the Triton backend runs under the
interpreter; ``pytest --device cuda`` runs the real kernels and the full GPU sweep.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
import triton

import sparsekernels
import sparsekernels.ops as ops
from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import poisoning, set_poison_outputs
from tests.helpers import assert_close, random_block_mask
from tests.ops.cases import CPU_CASES, GPU_CASES, MatmulCase

BACKENDS = ("reference", "triton", "native")


@pytest.fixture
def poisoned():
    """Fresh outputs start as NaN, so an element a kernel forgets to write fails the test."""
    previous = poisoning()
    set_poison_outputs(True)
    yield
    set_poison_outputs(previous)


def _skip_unavailable(backend: str, device: torch.device) -> None:
    if backend == "native" and (device.type != "cpu" or not sparsekernels.native_available()):
        pytest.skip("native backend not built (or not a CPU run)")


def _matmul_module(name: str):
    """``sparsekernels.ops.matmul.<name>`` (the package re-exports functions of the same names)."""
    return importlib.import_module(f"sparsekernels.ops.matmul.{name}")


def _dense(shape: tuple[int, ...], dtype: torch.dtype, device, transposed: bool) -> torch.Tensor:
    """Fresh random ``shape``; a transposed view of a contiguous tensor when ``transposed``."""
    if not transposed:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=dtype, device=device).transpose(-1, -2)


def _layout(case: MatmulCase, device) -> BlockLayout:
    R, C = case.grid
    return BlockLayout.from_block_mask(random_block_mask(R, C, case.density, device), case.block)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def _grad(t: torch.Tensor) -> torch.Tensor:
    return t.grad if t.grad is not None else torch.zeros_like(t)


def run_case(case: MatmulCase, backend: str, device) -> None:
    """Forward and backward of ``case`` through ``sparsekernels.ops`` vs float64 dense math."""
    layout = _layout(case, device)
    (M, N), (bm, bn), dt, p = layout.shape, layout.block_size, case.dtype, case.p
    if case.op == "sdd":
        inputs = [_leaf(_dense((M, p), dt, device, case.strided)), _leaf(_dense((p, N), dt, device, case.strided))]
        out = ops.sdd(*inputs, layout, backend=backend)
        refs = [_leaf(t.double()) for t in inputs]
        expected = layout.dense_to_values(refs[0] @ refs[1])
    else:
        # Strided values: a transposed view of [nnz, bn, bm] (the kernels take value strides).
        values = _leaf(
            torch.randn(layout.nnz, bn, bm, dtype=dt, device=device).transpose(1, 2)
            if case.strided
            else torch.randn(layout.nnz, bm, bn, dtype=dt, device=device)
        )
        v64 = _leaf(values.double())
        s64 = layout.values_to_dense(v64)
        s64 = s64.t() if case.transpose else s64
        if case.op == "dsd":
            x = _leaf(_dense((*case.lead, s64.shape[1], p), dt, device, case.strided))
            out = ops.dsd(values, layout, x, case.transpose, backend=backend)
            x64 = _leaf(x.double())
            inputs, refs, expected = [values, x], [v64, x64], s64 @ x64
        else:
            x = _leaf(_dense((*case.lead, p, s64.shape[0]), dt, device, case.strided))
            out = ops.dds(x, values, layout, case.transpose, backend=backend)
            x64 = _leaf(x.double())
            inputs, refs, expected = [x, values], [x64, v64], x64 @ s64

    assert out.dtype == dt
    assert_close(out, expected, dt)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    for t, ref in zip(inputs, refs):
        assert _grad(t).dtype == dt
        assert_close(_grad(t), _grad(ref), dt)


@pytest.fixture
def forced_split(monkeypatch):
    """Apply a case's ``split`` to the Triton kernels (forward and backward launches):
    dsd/dds chunk length ``split``, and sdd's reduction cut in two."""

    def apply(case: MatmulCase, backend: str) -> None:
        if backend == "triton" and case.split is not None:
            monkeypatch.setattr(_matmul_module("_common"), "FORCE_SPLIT", case.split)
            monkeypatch.setattr(_matmul_module("_common"), "FORCE_SPLIT_K", 2)

    return apply


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
def test_matmul(case, backend, device, poisoned, forced_split):
    _skip_unavailable(backend, device)
    forced_split(case, backend)
    run_case(case, backend, device)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
def test_matmul_full(case, device, poisoned, forced_split):
    """The full product on the GPU kernels (the CPU run covers every pair of values)."""
    forced_split(case, "triton")
    run_case(case, "triton", device)


# ----------------------------------------------------------------------------- bad inputs
def _operands(op: str, layout: BlockLayout, dtype=torch.float32, p: int = 8):
    """Valid arguments of ``op`` (no transpose) for ``layout``."""
    (M, N), (bm, bn) = layout.shape, layout.block_size
    values = torch.randn(layout.nnz, bm, bn, dtype=dtype)
    return {
        "sdd": (torch.randn(M, p, dtype=dtype), torch.randn(p, N, dtype=dtype), layout),
        "dsd": (values, layout, torch.randn(N, p, dtype=dtype)),
        "dds": (torch.randn(p, M, dtype=dtype), values, layout),
    }[op]


@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_block_size_8_is_rejected(op):
    layout = BlockLayout.random((32, 32), 8, 0.5)
    with pytest.raises(ValueError, match="block_size"):
        getattr(ops, op)(*_operands(op, layout), backend="triton")


@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_float64_is_rejected_by_triton(op):
    layout = BlockLayout.random((32, 32), 16, 0.5)
    with pytest.raises(TypeError, match="float64"):
        getattr(ops, op)(*_operands(op, layout, torch.float64), backend="triton")
    # The kernel module itself (what the backend calls) says the same.
    with pytest.raises(TypeError, match="float64"):
        getattr(_matmul_module(op), op)(*_operands(op, layout, torch.float64))


@pytest.mark.parametrize("op", ["sdd", "dsd", "dds"])
def test_mixed_dtypes_are_rejected(op):
    layout = BlockLayout.random((32, 32), 16, 0.5)
    args = list(_operands(op, layout))
    i = 0 if op != "dsd" else 2  # a dense operand
    args[i] = args[i].to(torch.bfloat16)
    with pytest.raises(TypeError, match="share one dtype"):
        getattr(_matmul_module(op), op)(*args)


@pytest.mark.parametrize(
    "op, index, shape, match",
    [
        ("sdd", 0, (48, 8), "a must have rows"),
        ("sdd", 1, (8, 48), "b must have columns"),
        ("sdd", 1, (9, 32), "b must have rows"),
        ("dsd", 2, (48, 8), "b must have rows"),
        ("dds", 0, (8, 48), "a must have columns"),
    ],
)
def test_shape_mismatch_names_the_operand(op, index, shape, match):
    layout = BlockLayout.random((32, 32), 16, 0.5)
    args = list(_operands(op, layout))
    args[index] = torch.randn(shape)
    with pytest.raises(ValueError, match=match):
        getattr(_matmul_module(op), op)(*args)
    with pytest.raises(ValueError, match=match):
        getattr(ops, op)(*args, backend="triton")


def test_values_shape_mismatch_names_values():
    layout = BlockLayout.random((32, 32), 16, 0.5)
    values, _, b = _operands("dsd", layout)
    with pytest.raises(ValueError, match="values must have shape"):
        _matmul_module("dsd").dsd(values[:-1], layout, b)


def test_bad_forced_split_is_named(monkeypatch):
    monkeypatch.setattr(_matmul_module("_common"), "FORCE_SPLIT", 0)
    layout = BlockLayout.random((32, 32), 16, 0.5)
    with pytest.raises(ValueError, match="FORCE_SPLIT"):
        _matmul_module("dsd").dsd(*_operands("dsd", layout))


# ----------------------------------------------------------------------------- launch policy
def test_tf32_only_when_torch_allows():
    common = _matmul_module("_common")
    matmul_flags = torch.backends.cuda.matmul  # a property object: monkeypatch cannot restore it
    previous = matmul_flags.allow_tf32
    try:
        matmul_flags.allow_tf32 = False
        assert common.dot_flags(torch.float32)["PRECISION"] == "ieee"
        matmul_flags.allow_tf32 = True
        assert common.dot_flags(torch.float32)["PRECISION"] == "tf32"
        assert common.dot_flags(torch.bfloat16)["PRECISION"] == "ieee"
    finally:
        matmul_flags.allow_tf32 = previous


def test_bf16_dot_upcast_only_under_the_interpreter(monkeypatch):
    common = _matmul_module("_common")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert common.dot_flags(torch.bfloat16)["UPCAST"] and not common.dot_flags(torch.float16)["UPCAST"]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not common.dot_flags(torch.bfloat16)["UPCAST"]


def test_split_policy_cuts_only_when_rows_would_finish_last(monkeypatch):
    """A GPU-sized problem has enough programs to hide a long row: nothing is split. A small
    P leaves most SMs idle: long segments are cut, and the workspace stays in budget."""
    common = _matmul_module("_common")
    monkeypatch.setattr(common, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    # bf16 4096^3, block 64, density 0.1: 64 inner blocks, 1638 blocks, 64 P tiles.
    split, n_splits = common.split_plan(cuda, 64, 1638, 64, 4096 * 4096 * 4)
    assert split >= 64 and n_splits == 1
    # Same weight, P = 64: one tile per segment; chunks of SPLIT_MIN blocks.
    split, n_splits = common.split_plan(cuda, 64, 1638, 1, 4096 * 64 * 4)
    assert (split, n_splits) == (common.SPLIT_MIN, 64 // common.SPLIT_MIN)
    # A workspace over budget lengthens the chunks instead.
    split, n_splits = common.split_plan(cuda, 1024, 10_000, 1, common.WORKSPACE_BUDGET_BYTES // 4)
    assert n_splits * common.WORKSPACE_BUDGET_BYTES // 4 <= common.WORKSPACE_BUDGET_BYTES and n_splits > 1
    # CPU: no split unless forced.
    assert common.split_plan(torch.device("cpu"), 64, 1638, 1, 1) == (64, 1)


def test_sdd_split_k_policy_fills_idle_sms(monkeypatch):
    common = _matmul_module("_common")
    monkeypatch.setattr(common, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    # 51 blocks of 128x128 (4096^2 at density 0.05): 8 chunks of 512 (MIN_K_CHUNK bound).
    assert common.sdd_split_k(cuda, 51, 4096, 128) == (8, 512)
    # Enough blocks to fill the GPU, or a short K: no split.
    assert common.sdd_split_k(cuda, 1638, 4096, 128) == (1, 4096)
    assert common.sdd_split_k(cuda, 10, 600, 128) == (1, 600)
    # Chunks are multiples of the granule and never empty.
    monkeypatch.setattr(common, "FORCE_SPLIT_K", 3)
    assert common.sdd_split_k(cuda, 10, 200, 32) == (3, 96)
    assert common.sdd_split_k(torch.device("cpu"), 10, 40, 32) == (2, 32)  # 3 asked, 2 non-empty


# ----------------------------------------------------------------------------- recompilation
_KERNELS = {"sdd": "sdd_kernel", "dsd": "dsd_kernel", "dds": "dds_kernel"}
OP_VARIANTS = [("sdd", False), ("dsd", False), ("dsd", True), ("dds", False), ("dds", True)]


def _jit_function(kernel):
    """The innermost jitted function under autotune/heuristics wrappers."""
    while isinstance(kernel, (triton.runtime.Autotuner, triton.runtime.Heuristics)):
        kernel = kernel.fn
    return kernel


def _record_launches(monkeypatch, kernel) -> list[dict]:
    """Record the named arguments of every launch of an autotuned kernel."""
    calls, run = [], kernel.run

    def recording_run(*args, **kwargs):
        named = dict(zip(kernel.arg_names, args))
        named.update((k, v) for k, v in kwargs.items() if k in kernel.arg_names)
        calls.append(named)
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", recording_run)
    return calls


def _tuning_key(kernel, args: dict) -> tuple:
    """What the autotuner caches its choice under: the key args, then every tensor's dtype."""
    return (*(args[k] for k in kernel.keys), *(str(v.dtype) for v in args.values() if hasattr(v, "dtype")))


def _layouts_same_nnz_and_other_nnz(op: str, transpose: bool, device):
    R = C = 6
    masks = [random_block_mask(R, C, 0.5, device) for _ in range(2)]
    while torch.equal(masks[0], masks[1]):
        masks[1] = random_block_mask(R, C, 0.5, device)
    masks.append(random_block_mask(R, C, 0.25, device))
    return [BlockLayout.from_block_mask(m, 16) for m in masks]


def _launch(op: str, transpose: bool, layout: BlockLayout, device):
    (M, N), (bm, bn) = layout.shape, layout.block_size
    values = torch.randn(layout.nnz, bm, bn, device=device)
    fn = getattr(_matmul_module(op), op)
    if op == "sdd":
        return fn(torch.randn(M, 96, device=device), torch.randn(96, N, device=device), layout)
    if op == "dsd":
        return fn(values, layout, torch.randn(M if transpose else N, 24, device=device), transpose)
    return fn(torch.randn(24, N if transpose else M, device=device), values, layout, transpose)


@pytest.mark.parametrize("op, transpose", OP_VARIANTS)
def test_topology_change_keeps_tuning_and_specialisation(op, transpose, device, monkeypatch):
    """A new mask, with the same or another nnz, must reuse the tuned config and (same nnz)
    the compiled kernel: the autotune key must not move, constexprs must not move, and any
    runtime int that moves must be excluded from specialisation."""
    kernel = getattr(_matmul_module(op), _KERNELS[op])
    jit = _jit_function(kernel)
    assert set(kernel.keys) <= set(kernel.arg_names), "autotune key names a non-argument (triton 3.6 drops it)"
    calls = _record_launches(monkeypatch, kernel)
    layouts = _layouts_same_nnz_and_other_nnz(op, transpose, device)
    assert layouts[0].nnz == layouts[1].nnz != layouts[2].nnz
    for layout, split in zip(layouts, (2, 2, 3)):
        # Chunkings stand in for the GPU policies, which derive them from nnz.
        monkeypatch.setattr(_matmul_module("_common"), "FORCE_SPLIT", split)
        monkeypatch.setattr(_matmul_module("_common"), "FORCE_SPLIT_K", split)
        _launch(op, transpose, layout, device)
    assert len(calls) == 3

    assert _tuning_key(kernel, calls[0]) == _tuning_key(kernel, calls[1]) == _tuning_key(kernel, calls[2])
    constexprs = {p.name for p in inspect.signature(jit.fn).parameters.values() if "constexpr" in str(p.annotation)}
    # JITFunction keeps the list as an attribute; the interpreter's function in its kwargs.
    no_specialise = set(getattr(jit, "do_not_specialize", None) or jit.kwargs.get("do_not_specialize") or ())
    for name in calls[0]:
        values = [c[name] for c in calls]
        if name in constexprs:
            assert values[0] == values[1] == values[2], f"constexpr {name} depends on the topology"
        elif isinstance(values[0], int) and len(set(values)) > 1:
            assert name in no_specialise, f"{name} varies with nnz but is specialised on its value"


def _compiled_count(jit) -> int:
    caches = getattr(jit, "device_caches", {})
    return sum(len(entry[0]) for entry in caches.values())


@pytest.mark.gpu
@pytest.mark.parametrize("op, transpose", OP_VARIANTS)
def test_topology_change_does_not_recompile_on_gpu(op, transpose, device):
    kernel = getattr(_matmul_module(op), _KERNELS[op])
    jit = _jit_function(kernel)
    first, second, _ = _layouts_same_nnz_and_other_nnz(op, transpose, device)
    _launch(op, transpose, first, device)
    torch.cuda.synchronize()
    tuned, compiled = len(kernel.cache), _compiled_count(jit)
    assert compiled > 0, "could not read the JIT cache of this triton version"
    _launch(op, transpose, second, device)
    torch.cuda.synchronize()
    assert len(kernel.cache) == tuned and _compiled_count(jit) == compiled


# ----------------------------------------------------------------------------- benchmark smoke
def test_benchmark_quick_smoke(tmp_path, monkeypatch):
    """``benchmarks/bench_matmul.py --quick`` runs end to end and writes its three outputs."""
    pytest.importorskip("tabulate")
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    bench = importlib.import_module("bench_matmul")
    rows = bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert {r["op"] for r in rows} == set(bench.OPS)
    assert all(r["ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".md", ".png"}


def test_gpu_configs_fit_the_gpu(monkeypatch):
    """The GPU config lists, pruned per launch: nothing overflows shared memory or spills the
    accumulator, big tiles appear where they fit, and small tiles get 4 warps."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    bf16 = torch.empty(1, dtype=torch.bfloat16)
    fp32 = torch.empty(1, dtype=torch.float32)

    def pruned(op: str, ref: torch.Tensor, **meta):
        module = _matmul_module(op)
        kernel = getattr(module, _KERNELS[op])
        ptr = "a_ptr" if op == "sdd" else "values_ptr"
        return kernel.early_config_prune(module._configs(), {ptr: ref}, **meta)

    big = pruned("dsd", bf16, BO=128, BI=128)
    assert big and max(c.kwargs["BLOCK_P"] for c in big) == 128
    assert all(c.num_stages * (128 * 128 + 128 * c.kwargs["BLOCK_P"]) * 2 <= 200 * 1024 for c in big)
    assert max(c.kwargs["BLOCK_P"] for c in pruned("dds", bf16, BO=64, BI=64)) == 256
    assert all(c.num_warps == 4 for c in pruned("sdd", bf16, BM=16, BN=16))
    for op in ("dsd", "dds"):  # 16-bit dots with N = 16: 4 warps (8 kept one load in flight)
        narrow = pruned(op, bf16, BO=16, BI=16)
        assert narrow and all(c.num_warps == 4 for c in narrow)
        assert any(c.num_warps == 8 for c in pruned(op, fp32, BO=16, BI=16))
    sdd_fp32 = pruned("sdd", fp32, BM=128, BN=128)
    assert sdd_fp32 and all(c.num_stages * 256 * c.kwargs["BLOCK_K"] * 4 <= 200 * 1024 for c in sdd_fp32)


@pytest.mark.parametrize("op, transpose", OP_VARIANTS)
def test_strided_operands_are_read_in_place(op, transpose, device, monkeypatch):
    """Transposed views (and dsd's batched ones) reach the kernel as the caller's memory, with
    their strides: no hidden ``.contiguous()`` copy."""
    kernel = getattr(_matmul_module(op), _KERNELS[op])
    calls = _record_launches(monkeypatch, kernel)
    layout = BlockLayout.random((64, 32), 16, 0.5, device=device)
    (M, N), (bm, bn) = layout.shape, layout.block_size
    values = torch.randn(layout.nnz, bn, bm, device=device).transpose(1, 2)
    fn = getattr(_matmul_module(op), op)
    if op == "sdd":
        a, b = torch.randn(8, M, device=device).t(), torch.randn(N, 8, device=device).t()
        fn(a, b, layout)
        dense = {"a_ptr": a, "b_ptr": b}
    elif op == "dsd":
        b = torch.randn(3, 8, M if transpose else N, device=device).transpose(-1, -2)
        fn(values, layout, b, transpose)
        dense = {"b_ptr": b, "values_ptr": values}
    else:
        a = torch.randn(N if transpose else M, 8, device=device).t()
        fn(a, values, layout, transpose)
        dense = {"a_ptr": a, "values_ptr": values}
    for name, t in dense.items():
        passed = calls[0][name]
        assert passed.data_ptr() == t.data_ptr() and passed.stride()[-2:] == t.stride()[-2:], name

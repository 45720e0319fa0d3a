"""Ahead-of-time compile check of the Triton kernels for Hopper (sm_90), on a machine without a GPU.

Nothing in the library imports this module; tests and ``benchmarks/aot_report.py`` do.

How it works. The public launchers (``sparsekernels.ops.triton_backend``: sdd, dsd, dds and the
three convolution pieces) are called on CPU tensors of the headline shapes in a *separate
process* with ``TRITON_INTERPRET=0`` (the test process runs the interpreter, which fixes
triton's mode at import). In that process:

* triton's active driver is a stub that reports an sm_90 target (capability 90, warp size 32:
  what the CUDA driver reports on an H100/H200), so nothing needs a GPU;
* ``kernel[grid](...)`` is intercepted: every launch a launcher issues is recorded (kernel,
  grid, arguments) instead of run, whatever kernels the launcher uses;
* for each recorded launch, the autotuner's own ``prune_configs`` (the kernel module's config
  list and ``early_config_prune``) gives the configs it keeps, heuristics are applied, and each
  kept config is compiled through ``JITFunction.warmup`` (triton's own specialisation and
  compile path, as on the GPU) with ``TRITON_ALWAYS_COMPILE=1`` and ``TRITON_DUMP_PTXAS_LOG=1``.

Each compiled kernel is read for: registers, spill stores/loads and stack frame (the
``ptxas -v`` log of the compile itself), shared memory (the compiled metadata), warpgroup MMA
vs the pre-Hopper MMA (``cuobjdump --dump-sass``: ``HGMMA`` vs ``HMMA``) and the software
pipeline of the loops that hold the dots (TTGIR: multi-buffered shared allocations, async
copies and TMA loads issued per iteration, ``async_wait`` counts).

Launch policies that depend on the device (split workspaces sized from the SM count) take
their CPU branch here, since the tensors are CPU tensors; the kernels' main loops are the same.

Command line (the worker protocol, used by :func:`run_cases`)::

    TRITON_INTERPRET=0 python -m sparsekernels.ops._aot --worker < cases.json > records.jsonl
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# Largest shared memory one block may use on an H100/H200 (cudaDevAttrMaxSharedMemoryPerBlockOptin:
# 227 KiB = 232448 bytes; the SM has 228 KiB, 1 KiB is reserved per block).
SMEM_LIMIT_BYTES = 227 * 1024
# The target the CUDA driver reports on an H100/H200: sm_90, 32 threads per warp.
TARGET = ("cuda", 90, 32)

MATMUL_OPS = ("sdd", "dsd", "dsd_t", "dds", "dds_t")
CONV_OPS = ("conv_fwd", "conv_dx", "conv_dw")
OPS = MATMUL_OPS + CONV_OPS
DTYPES = ("bf16", "fp16", "fp32")
BLOCKS = (16, 32, 64, 128)
# Ops, dtypes and blocks whose dots must lower to warpgroup MMA (issue 12).
WGMMA_DTYPES = ("bf16", "fp16")
WGMMA_BLOCKS = (32, 64, 128)
# Loads a main loop must keep in flight while it waits (issue 12).
MIN_LOADS_IN_FLIGHT = 2

# The matmul headline: 4096^3 at density 0.1 (b and a are [4096, 4096]).
MATMUL_SHAPES = {"4096": (4096, 4096, 4096)}
# ResNet-18 (CIFAR) 3x3 convolutions at batch 256: (N, C, H, W, K, stride). The first is the
# quick headline (128 channels divide every block size). The others cover what changes the
# compiled code: triton specialises int arguments equal to 1 (stride 1) and divisible by 16
# (H, W, channels), and the prunes read the pixel count. 256x8 is 128x16's specialisation.
CONV_SHAPES = {
    "r18-128x16": (256, 128, 16, 16, 128, 1),
    "r18-64x32": (256, 64, 32, 32, 64, 1),
    "r18-128to256s2": (256, 128, 16, 16, 256, 2),
    "r18-512x4": (256, 512, 4, 4, 512, 1),
}
# Every 3x3 convolution of ResNet-18 (CIFAR, batch 256) but the stem: shape -> how many.
RESNET18_CONVS = {
    "r18-64x32": 4,
    "r18-64to128s2": 1,
    "r18-128x16": 3,
    "r18-128to256s2": 1,
    "r18-256x8": 3,
    "r18-256to512s2": 1,
    "r18-512x4": 3,
}
CONV_SHAPE_TABLE = {
    **CONV_SHAPES,
    "r18-64to128s2": (256, 64, 32, 32, 128, 2),
    "r18-256x8": (256, 256, 8, 8, 256, 1),
    "r18-256to512s2": (256, 256, 8, 8, 512, 2),
}
DENSITY = 0.1


@dataclass(frozen=True)
class Case:
    """One launcher call to compile: an op at a dtype, block size and headline shape."""

    op: str
    dtype: str
    block: int
    shape: str
    density: float = 0.1

    @property
    def name(self) -> str:
        tail = "" if self.density == DENSITY else f"-d{self.density:g}"
        return f"{self.op}-{self.dtype}-b{self.block}-{self.shape}{tail}"


def _conv_fits(shape: str, block: int) -> bool:
    _, c, _, _, k, _ = CONV_SHAPE_TABLE[shape]
    return c % block == 0 and k % block == 0


def cases(
    ops: Sequence[str] = OPS,
    dtypes: Sequence[str] = DTYPES,
    blocks: Sequence[int] = BLOCKS,
    conv_shapes: Sequence[str] | None = None,
) -> list[Case]:
    """Every (op, dtype, block, shape) case; conv shapes default to all of :data:`CONV_SHAPES`."""
    out = []
    conv_shapes = list(CONV_SHAPES) if conv_shapes is None else list(conv_shapes)
    for op in ops:
        shapes = list(MATMUL_SHAPES) if op in MATMUL_OPS else conv_shapes
        for dtype in dtypes:
            for block in blocks:
                for shape in shapes:
                    if op in CONV_OPS and not _conv_fits(shape, block):
                        continue
                    out.append(Case(op, dtype, block, shape))
    return out


def quick_cases() -> list[Case]:
    """The CI subset: sdd, dsd, dds, conv fwd/dx/dW (the transposed traversals are in the full
    sweep), bf16, blocks 32/64/128, at the headline shapes."""
    ops = [op for op in OPS if not op.endswith("_t")]
    return cases(ops=ops, dtypes=("bf16",), blocks=WGMMA_BLOCKS, conv_shapes=("r18-128x16",))


def full_cases() -> list[Case]:
    """The full sweep: every op, dtype and block size, every shape of :data:`CONV_SHAPES`."""
    return cases()


# ---------------------------------------------------------------------------------------
# Reading the compiler's output (pure text; no triton needed).

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict:
    """Registers, stack frame and spill bytes from a ``ptxas -v`` log (one kernel).

    Returns ``{"regs", "stack_bytes", "spill_store_bytes", "spill_load_bytes"}`` (None where
    the log does not say)."""
    regs = _PTXAS_REGS.findall(log)
    frame = _PTXAS_FRAME.findall(log)
    out = {"regs": None, "stack_bytes": None, "spill_store_bytes": None, "spill_load_bytes": None}
    if regs:
        out["regs"] = max(int(r) for r in regs)
    if frame:
        out["stack_bytes"] = max(int(f[0]) for f in frame)
        out["spill_store_bytes"] = max(int(f[1]) for f in frame)
        out["spill_load_bytes"] = max(int(f[2]) for f in frame)
    return out


_SASS_OPS = {
    "hgmma": re.compile(r"\bHGMMA\b"),
    "hmma": re.compile(r"\bHMMA\b"),
    "ffma": re.compile(r"\bFFMA\b"),
    "ldl": re.compile(r"\bLDL\b"),
    "stl": re.compile(r"\bSTL\b"),
    "ldgsts": re.compile(r"\bLDGSTS\b"),
    "utmaldg": re.compile(r"\bUTMALDG\b"),
}


def sass_counts(sass: str) -> dict:
    """Instruction counts of interest in a SASS listing: warpgroup MMA (HGMMA), pre-Hopper MMA
    (HMMA), fp32 FMA, local-memory loads/stores (LDL/STL), async copies (LDGSTS), TMA loads."""
    counts = dict.fromkeys(_SASS_OPS, 0)
    for line in sass.splitlines():
        for key, pattern in _SASS_OPS.items():
            if pattern.search(line):
                counts[key] += 1
    return counts


_MEMDESC = re.compile(r"!ttg\.memdesc<([0-9x]+)x([a-z0-9]+),")
_ASYNC_WAIT = re.compile(r"ttg\.async_wait.*\{num = (\d+) : i32\}")
_WGMMA_WAIT = re.compile(r"ttng\.warp_group_dot_wait.*pendings = (\d+)")
_DOT = re.compile(r"= (tt\.dot|ttng\.warp_group_dot|ttng\.tc_gen5_mma|tt\.dot_scaled) ")
_TENSOR_LOAD = re.compile(r"= tt\.(load|descriptor_load) .*: (tensor|!tt\.tensordesc)")


_DOT_SHAPES = re.compile(
    r"= (?:tt\.dot|ttng\.warp_group_dot) .*?: (?:!ttg\.memdesc|tensor)<(\d+)x(\d+)x\w+.*?\* "
    r"(?:!ttg\.memdesc|tensor)<(\d+)x(\d+)x"
)
_PTR_TILE = re.compile(r": tensor<([0-9x]+)x!tt\.ptr<(\w+)>")
_SCALAR_PTR = re.compile(r"= tt\.load %\S+ : !tt\.ptr<(\w+)>")
_DESC_TILE = re.compile(r"(?:memdesc|tensor)<([0-9x]+)x(bf16|f16|f32|i32|i64|i8|f8\w*)[,>]")
_ELEM_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "i32": 4, "i64": 8, "i8": 1, "i1": 1}


def _tile_bytes(dims: str, dtype: str) -> int:
    n = 1
    for d in dims.split("x"):
        n *= int(d)
    return n * _ELEM_BYTES.get(dtype, 1)


def _load_bytes(line: str) -> int:
    """Bytes one global load op of a loop body moves (0 if the line is no load)."""
    if "ttg.async_copy_global_to_local" in line or re.search(r"= tt\.load ", line):
        if m := _PTR_TILE.search(line):
            return _tile_bytes(m.group(1), m.group(2))
        if m := _SCALAR_PTR.search(line):
            return _ELEM_BYTES.get(m.group(1), 4)
    if "async_tma_copy_global_to_local" in line or "tt.descriptor_load" in line:
        if m := _DESC_TILE.search(line.split("->")[-1]):
            return _tile_bytes(m.group(1), m.group(2))
    return 0


def _loop_record(lines: list[str]) -> dict:
    waits = [int(m.group(1)) for line in lines if (m := _ASYNC_WAIT.search(line))]
    dots = [tuple(int(x) for x in m.groups()) for line in lines if (m := _DOT_SHAPES.search(line))]
    return {
        # [M, N, K] of each dot: A is [M, K], B is [K, N].
        "dot_mnk": [[d[0], d[3], d[1]] for d in dots],
        "load_bytes_per_iter": sum(_load_bytes(line) for line in lines),
        "dots": sum(1 for line in lines if _DOT.search(line)),
        "wgmma": sum(1 for line in lines if "ttng.warp_group_dot " in line),
        "async_copies": sum(1 for line in lines if "ttg.async_copy_global_to_local" in line),
        "tma_loads": sum(1 for line in lines if "async_tma_copy_global_to_local" in line),
        "async_waits": waits,
        "wgmma_waits": [int(m.group(1)) for line in lines if (m := _WGMMA_WAIT.search(line))],
        "sync_tile_loads": sum(1 for line in lines if _TENSOR_LOAD.search(line) and "tensor<" in line),
    }


def ttgir_loops(ttgir: str) -> list[dict]:
    """The ``scf.for`` loops of a TTGIR module that hold a dot, innermost loops only.

    Each loop: ``dots``, ``wgmma`` (warpgroup dots), ``async_copies`` / ``tma_loads`` issued in
    its body, ``async_waits`` (the ``num`` of each ``ttg.async_wait``: commit groups left in
    flight), ``wgmma_waits``, ``sync_tile_loads`` (tile loads not turned into async copies),
    ``depth`` (loops around it), and ``loads_in_flight``: the fewest loads the loop keeps in
    flight while it waits (the smallest ``async_wait`` count; for TMA pipelines, the TMA loads
    of the other buffered stages; 0 when its tile loads are not asynchronous).
    """
    buffers = _buffer_counts(ttgir)
    loops: list[dict] = []
    stack: list[list] = []  # [op, body lines, holds a dot loop] of each open region
    for line in ttgir.splitlines():
        stripped = line.strip()
        if stripped.startswith("}"):
            # A closing brace (possibly "} else {", which reopens the same region).
            op, body, holds_dot_loop = stack.pop() if stack else ("", [], False)
            if stripped.endswith("{"):
                stack.append([op, body, holds_dot_loop])
                continue
            if op == "scf.for":
                rec = _loop_record(body)
                if rec["dots"] and not holds_dot_loop:
                    rec["depth"] = sum(1 for entry in stack if entry[0] == "scf.for")
                    loops.append(rec)
                if rec["dots"]:
                    for entry in stack:
                        entry[2] = True
            continue
        for entry in stack:
            entry[1].append(stripped)
        if stripped.endswith("{") and stripped.count("{") > stripped.count("}"):
            m = re.search(r"\b(scf\.for|scf\.if|scf\.while|tt\.func|scf\.execute_region)\b", stripped)
            stack.append([m.group(1) if m else "other", [], False])
    for rec in loops:
        rec["buffers"] = max(buffers) if buffers else 1
        if rec["async_copies"]:
            rec["loads_in_flight"] = min(rec["async_waits"]) if rec["async_waits"] else rec["async_copies"]
        elif rec["tma_loads"]:
            rec["loads_in_flight"] = rec["tma_loads"] * max(rec["buffers"] - 1, 0)
        else:
            rec["loads_in_flight"] = 0
    return loops


def _buffer_counts(ttgir: str) -> list[int]:
    """Leading dimension of each multi-buffered (rank >= 3, mutable) shared allocation."""
    counts = []
    for line in ttgir.splitlines():
        if "ttg.local_alloc" not in line or "mutable" not in line:
            continue
        m = _MEMDESC.search(line)
        if m:
            dims = m.group(1).split("x")
            if len(dims) >= 3:
                counts.append(int(dims[0]))
    return counts


# ---------------------------------------------------------------------------------------
# The worker: runs in a process with TRITON_INTERPRET=0 (see the module docstring).


def _install_stub_driver() -> None:
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _Sm90Driver:
        """Just enough of triton's driver for ``JITFunction.warmup`` to compile for sm_90."""

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget(*TARGET)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_device_interface(self):
            return torch.cuda

        def get_benchmarker(self):
            raise RuntimeError("the sm_90 compile check never benchmarks")

    driver.set_active(_Sm90Driver())


_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _call_launcher(case: Case) -> None:
    """Call the case's public launcher on CPU tensors (contents never read: launches are captured)."""
    import torch

    from sparsekernels.layout import BlockLayout
    from sparsekernels.ops import triton_backend as tb

    dtype = getattr(torch, _TORCH_DTYPES[case.dtype])
    gen = torch.Generator().manual_seed(0)
    blk = case.block
    if case.op in MATMUL_OPS:
        M, N, K = MATMUL_SHAPES[case.shape]
        if case.op == "sdd":
            layout = BlockLayout.random((M, N), blk, case.density, generator=gen)
            tb.sdd(torch.empty(M, K, dtype=dtype), torch.empty(K, N, dtype=dtype), layout)
            return
        layout = BlockLayout.random((M, K), blk, case.density, generator=gen)
        values = torch.empty(layout.values_shape(), dtype=dtype)
        transpose = case.op.endswith("_t")
        if case.op.startswith("dsd"):
            rows = M if transpose else K
            tb.dsd(values, layout, torch.empty(rows, N, dtype=dtype), transpose_sparse=transpose)
        else:
            cols = K if transpose else M
            tb.dds(torch.empty(N, cols, dtype=dtype), values, layout, transpose_sparse=transpose)
        return
    n, c, h, w, k, stride = CONV_SHAPE_TABLE[case.shape]
    ks, st, pad, dil = (3, 3), (stride, stride), (1, 1), (1, 1)
    ho, wo = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    layout = BlockLayout.random((9 * k, c), blk, case.density, generator=gen)
    values = torch.empty(layout.values_shape(), dtype=dtype)
    x = torch.empty(n, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.empty(n, k, ho, wo, dtype=dtype).contiguous(memory_format=torch.channels_last)
    if case.op == "conv_fwd":
        tb.conv2d_forward(x, values, layout, ks, st, pad, dil)
    elif case.op == "conv_dx":
        tb.conv2d_input_grad(dy, values, layout, tuple(x.shape), ks, st, pad, dil)
    else:
        tb.conv2d_weight_grad(x, dy, layout, ks, st, pad, dil)


def _sass(cubin: bytes) -> str:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        res = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "--dump-sass", f.name], capture_output=True, text=True, check=True
        )
        return res.stdout
    finally:
        os.unlink(f.name)


def _config_text(config) -> str:
    if config is None:
        return "(launch kwargs)"
    kw = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kw}{', ' if kw else ''}w{config.num_warps} s{config.num_stages}"


def kept_configs(launch, all_configs: bool = True):
    """For one captured launch ``(kernel, grid, args, kwargs)``: yield ``(jit_fn, kwargs, config,
    (configs listed, configs kept))`` for each config its autotuner keeps (the autotuner's own
    ``prune_configs``), with the config's meta-parameters, pre-hook and heuristics applied. A
    launch without an autotuner yields its own kwargs once (config None)."""
    from triton.runtime.autotuner import Autotuner, Heuristics

    outer, _grid, args, kwargs = launch
    kernel = outer
    configs: list = [None]
    counts = (None, None)
    if isinstance(kernel, Autotuner):
        kernel.nargs = dict(zip(kernel.arg_names, args))
        configs = kernel.prune_configs(dict(kwargs))
        counts = (len(kernel.configs), len(configs))
        if not all_configs:
            configs = configs[:1]
        kernel = kernel.fn
    for config in configs:
        kw = dict(kwargs)
        if config is not None:
            kw.update(config.all_kwargs())
            if config.pre_hook is not None:
                config.pre_hook({**dict(zip(outer.arg_names, args)), **kw})
        fn = kernel
        while isinstance(fn, Heuristics):
            for name, heur in fn.values.items():
                kw[name] = heur({**dict(zip(fn.arg_names, args)), **kw})
            fn = fn.fn
        yield fn, kw, config, counts


def capture_launches(call) -> list:
    """Run ``call()`` with every ``kernel[grid](...)`` recorded instead of launched; returns the
    records ``(kernel, grid, args, kwargs)``. Outputs the launchers return are left unwritten."""
    from triton.runtime.jit import KernelInterface

    launches: list = []
    saved = KernelInterface.__getitem__

    def getitem(self, grid):
        return lambda *args, **kwargs: launches.append((self, grid, args, kwargs))

    KernelInterface.__getitem__ = getitem
    try:
        call()
    finally:
        KernelInterface.__getitem__ = saved
    return launches


def _compile_launch(launch, all_configs: bool, keep_asm: Path | None, case: Case, index: int) -> Iterable[dict]:
    """Compile one captured launch at each config its autotuner keeps; yield one record each."""
    _outer, _grid, args, _kwargs = launch
    for fn, kw, config, (n_configs, n_kept) in kept_configs(launch, all_configs):
        name = getattr(fn, "__name__", None) or fn.fn.__name__
        try:
            grid = _grid(dict(zip(fn.arg_names, args)) | kw) if callable(_grid) else _grid
            programs = 1
            for g in grid:
                programs *= int(g)
        except Exception:  # noqa: BLE001 - a grid the harness cannot evaluate is left out
            programs = None
        rec = {
            "case": case.name,
            "op": case.op,
            "dtype": case.dtype,
            "block": case.block,
            "shape": case.shape,
            "density": case.density,
            "launch": index,
            "kernel": f"{fn.fn.__module__}.{name}",
            "config": _config_text(config),
            "configs_total": n_configs,
            "configs_kept": n_kept,
            "num_warps": kw.get("num_warps", 4),
            "num_stages": kw.get("num_stages"),
            "programs": programs,
            "compiled": False,
        }
        # A specialisation an earlier case of this process compiled (same dtypes, int
        # divisibility and constexprs: e.g. two conv shapes whose sizes are all multiples of
        # 16) would come from triton's in-process kernel cache, without a ptxas log: drop it, so
        # every record comes from a compile of its own.
        for caches in getattr(fn, "device_caches", {}).values():
            caches[0].clear()
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                compiled = fn.warmup(*args, grid=(1,), **kw)
        except Exception as exc:  # noqa: BLE001 - a compile failure is a result, recorded
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            rec["seconds"] = round(time.perf_counter() - start, 2)
            yield rec
            continue
        rec["seconds"] = round(time.perf_counter() - start, 2)
        rec["compiled"] = True
        rec.update(parse_ptxas_log(log.getvalue()))
        rec["shared_bytes"] = int(compiled.metadata.shared)
        sass = _sass(compiled.asm["cubin"])
        rec["sass"] = sass_counts(sass)
        loops = ttgir_loops(compiled.asm["ttgir"])
        rec["loops"] = loops
        rec["has_dot"] = bool(loops) or rec["sass"]["hgmma"] + rec["sass"]["hmma"] > 0
        rec["loads_in_flight"] = min((lp["loads_in_flight"] for lp in loops), default=None)
        if keep_asm is not None:
            stem = keep_asm / f"{case.name}-{index}-{name}-{len(os.listdir(keep_asm))}"
            Path(f"{stem}.ttgir").write_text(compiled.asm["ttgir"])
            Path(f"{stem}.sass").write_text(sass)
            Path(f"{stem}.ptxas.log").write_text(log.getvalue())
        yield rec


def worker(case_dicts: list[dict], all_configs: bool, keep_asm: str | None, out=sys.stdout) -> None:
    """Compile every case; write one JSON record per (launch, config) line to ``out``."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the sm_90 compile worker needs TRITON_INTERPRET=0 (set before triton is imported)")
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # the ptxas log comes from a fresh compile
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    _install_stub_driver()
    asm_dir = Path(keep_asm) if keep_asm else None
    if asm_dir is not None:
        asm_dir.mkdir(parents=True, exist_ok=True)
    for cd in case_dicts:
        case = Case(**cd)
        print(json.dumps({"case_start": case.name}), file=out)
        try:
            launches = capture_launches(lambda case=case: _call_launcher(case))
        except Exception as exc:  # noqa: BLE001
            print(json.dumps({"case": case.name, **cd, "compiled": False, "error": f"launcher: {exc!r}"}), file=out)
            print(json.dumps({"case_done": case.name}), file=out)
            out.flush()
            continue
        if not launches:
            print(json.dumps({"case": case.name, **cd, "compiled": False, "error": "no kernel launch"}), file=out)
        for index, launch in enumerate(launches):
            for rec in _compile_launch(launch, all_configs, asm_dir, case, index):
                print(json.dumps(rec), file=out)
                out.flush()
        # The parent's cache keeps a case only once this marker says all its records came.
        print(json.dumps({"case_done": case.name}), file=out)
        out.flush()


# ---------------------------------------------------------------------------------------
# The parent side: run workers, check records.


# What a record holds and how it is read off the compile; bump it when this harness changes
# the fields it records or the way it parses them (cached records of another format are not
# reused: it is part of every case's key).
RECORD_FORMAT = 1


def _feature(value) -> object:
    """What triton's specialisation (and this harness's record) can depend on in one launch
    argument: a tensor's dtype and 16-byte alignment (the kernel gets a pointer), a scalar's
    value, anything else's repr."""
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return ("tensor", str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def launch_key(launches: list, all_configs: bool) -> str:
    """The cache key of one case: everything its compiles are made from. Per captured launch and
    kept config: the JIT function's own ``cache_key`` (triton's hash of its source and of the
    JIT functions and globals it uses), the arguments' features, the meta-parameters after the
    config and heuristics, the grid and the config counts; then :data:`RECORD_FORMAT` and the
    triton and ptxas versions. An edit that does not change what is compiled (argument checks,
    docs, the CPU backend) keeps the key; any that does changes it."""
    import hashlib

    import triton

    h = hashlib.sha256()
    for index, launch in enumerate(launches):
        _outer, grid, args, _kwargs = launch
        for fn, kw, config, counts in kept_configs(launch, all_configs):
            named = dict(zip(fn.arg_names, args)) | kw
            try:
                programs = [int(g) for g in (grid(named) if callable(grid) else grid)]
            except Exception:  # noqa: BLE001 - as in the record: a grid the harness cannot evaluate
                programs = None
            part = (
                index,
                fn.cache_key,
                [_feature(a) for a in args],
                sorted((k, _feature(v)) for k, v in kw.items()),
                _config_text(config),
                programs,
                counts,
            )
            h.update(repr(part).encode())
    h.update(f"record-format-{RECORD_FORMAT} all-configs-{all_configs}".encode())
    h.update(triton.__version__.encode())
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        h.update(str(get_ptxas(90).version).encode())
    except Exception:  # noqa: BLE001 - no NVIDIA backend: nothing compiles anyway
        pass
    return h.hexdigest()[:16]


def key_worker(case_dicts: list[dict], all_configs: bool, out=sys.stdout) -> None:
    """Capture every case's launches (no compile) and write ``{"case", "key"}`` per line."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the sm_90 key worker needs TRITON_INTERPRET=0 (set before triton is imported)")
    _install_stub_driver()
    for cd in case_dicts:
        case = Case(**cd)
        try:
            key = launch_key(capture_launches(lambda case=case: _call_launcher(case)), all_configs)
        except Exception as exc:  # noqa: BLE001 - no key: the case is compiled (and fails there)
            key = f"error: {exc!r}"
        print(json.dumps({"case": case.name, "key": key}), file=out)


def case_keys(case_list: Sequence[Case], all_configs: bool, pythonpath: str | None = None) -> dict[str, str]:
    """:func:`launch_key` of every case, computed in a subprocess of the checkout ``pythonpath``
    (default: this module's) in a few seconds: launches are captured, nothing is compiled."""
    root = pythonpath or str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--keys"]
    if all_configs:
        cmd.append("--all-configs")
    res = subprocess.run(
        cmd, input=json.dumps([asdict(c) for c in case_list]), capture_output=True, text=True, env=env, check=False
    )
    keys = {}
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            keys[rec["case"]] = rec["key"]
    return keys


def default_cache(mode: str) -> Path:
    """Where a sweep's records are cached between runs: ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/sparsekernels/sm90-<mode>-triton<version>.jsonl``."""
    import triton

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparsekernels" / f"sm90-{mode}-triton{triton.__version__}.jsonl"


def _read_cache(cache: Path, digests: dict[str, str]) -> dict[str, list[dict]]:
    """Records of the finished cases in ``cache`` (a JSON-lines file), by case name. A case
    counts only if its end marker carries ``digests[case]`` (its :func:`launch_key` now):
    records of other kernels, configs, launch arguments or another triton are never reused."""
    if not cache.exists():
        return {}
    pending: dict[str, list[dict]] = {}
    done: dict[str, list[dict]] = {}
    for line in cache.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short when the sweep was killed
        if "case_start" in rec:  # a case compiled again after a stopped attempt starts afresh
            pending.pop(rec["case_start"], None)
        elif "case_done" in rec:
            name = rec["case_done"]
            recs = pending.pop(name, [])
            # A compile without its ptxas log (an in-process cache hit of an older harness) is
            # incomplete: the case is compiled again.
            complete = all(not r.get("compiled") or r.get("regs") is not None for r in recs)
            if complete and name in digests and rec.get("digest") == digests[name]:
                done[name] = recs
        elif "case" in rec:
            pending.setdefault(rec["case"], []).append(rec)
    return done


def run_cases(
    case_list: Sequence[Case],
    all_configs: bool = True,
    jobs: int = 1,
    timeout: float | None = None,
    keep_asm: str | Path | None = None,
    pythonpath: str | None = None,
    cache: str | Path | None = None,
) -> list[dict]:
    """Compile ``case_list`` for sm_90 in ``jobs`` worker processes; one record per
    (case, launch, kept config). ``pythonpath`` selects the checkout to import (default: the
    one this module comes from). A worker that dies leaves an ``error`` record per case it
    did not finish.

    ``cache``: a JSON-lines file the records are appended to as they come; cases it already
    holds in full are not compiled again, so a sweep that was stopped resumes where it was.
    Each case is stamped with its :func:`launch_key` (computed from the checkout compiled)."""
    root = pythonpath or str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    cached: dict[str, list[dict]] = {}
    digests: dict[str, str] = {}
    cache_file = None
    lock = threading.Lock()
    if cache is not None:
        cache = Path(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        digests = case_keys(case_list, all_configs, pythonpath)
        cached = _read_cache(cache, digests)
        cache_file = cache.open("a")
    todo = [c for c in case_list if c.name not in cached]
    chunks = [list(todo[i::jobs]) for i in range(max(jobs, 1))]
    # This file runs as a script, so the checkout under test (``pythonpath``) need not have it.
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    if all_configs:
        cmd.append("--all-configs")
    if keep_asm:
        cmd += ["--keep-asm", str(keep_asm)]
    payloads = [(chunk, json.dumps([asdict(c) for c in chunk])) for chunk in chunks if chunk]
    results: list[tuple[list[Case], list[str], str, int | None]] = [None] * len(payloads)  # type: ignore[list-item]

    def run_one(i: int) -> None:
        chunk, payload = payloads[i]
        p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer:
            timer.start()
        err: list[str] = []
        drain = threading.Thread(target=lambda: err.append(p.stderr.read()))  # a full pipe would block
        drain.start()
        p.stdin.write(payload)
        p.stdin.close()
        lines = []
        for line in p.stdout:
            if not line.startswith("{"):
                continue
            lines.append(line)
            if cache_file is not None:
                if line.startswith('{"case_done"'):  # the parent stamps the sources it compiled
                    done = json.loads(line)["case_done"]
                    line = json.dumps({"case_done": done, "digest": digests.get(done)}) + "\n"
                with lock:
                    cache_file.write(line)
                    cache_file.flush()
        code = p.wait()
        drain.join()
        stderr = "".join(err)
        if timer:
            timer.cancel()
            if code == -9:
                stderr = f"timed out after {timeout} s\n{stderr}"
        results[i] = (chunk, lines, stderr, code)

    threads = [threading.Thread(target=run_one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if cache_file is not None:
        cache_file.close()
    fresh: dict[str, list[dict]] = {}
    for chunk, lines, stderr, code in results:
        got = [json.loads(line) for line in lines]
        done = {r["case_done"] for r in got if "case_done" in r}
        for r in got:
            if "case" in r:
                fresh.setdefault(r["case"], []).append(r)
        for c in chunk:
            if c.name not in done:
                err = f"worker exit {code}: {stderr[-3000:]}"
                fresh.setdefault(c.name, []).append({"case": c.name, **asdict(c), "compiled": False, "error": err})
    records: list[dict] = []
    for c in case_list:  # in the order asked for, cached or not
        records += cached.get(c.name) or fresh.get(c.name, [])
    return records


def check(record: dict) -> dict[str, str | None]:
    """The issue-12 assertions on one record: ``{check: None if it passes, else why}``.

    Checks: ``compiles``; ``no_spills`` (zero spill bytes); ``shared_memory`` (within
    :data:`SMEM_LIMIT_BYTES`); ``wgmma`` (bf16/fp16 dots at blocks 32/64/128 lower to HGMMA,
    no HMMA); ``loads_in_flight`` (each dot loop keeps >= :data:`MIN_LOADS_IN_FLIGHT` loads in
    flight). The last two apply only to kernels with a dot."""
    res: dict[str, str | None] = {}
    if not record.get("compiled"):
        res["compiles"] = record.get("error", "not compiled")
        return res
    res["compiles"] = None
    spills = (record.get("spill_store_bytes"), record.get("spill_load_bytes"))
    if None in spills:
        res["no_spills"] = "no ptxas -v log"
    else:
        res["no_spills"] = None if spills == (0, 0) else f"spill stores {spills[0]} B, loads {spills[1]} B"
    smem = record["shared_bytes"]
    res["shared_memory"] = None if smem <= SMEM_LIMIT_BYTES else f"{smem} B > {SMEM_LIMIT_BYTES} B"
    if record.get("has_dot"):
        if record["dtype"] in WGMMA_DTYPES and record["block"] in WGMMA_BLOCKS:
            s = record["sass"]
            ok = s["hgmma"] > 0 and s["hmma"] == 0
            res["wgmma"] = None if ok else f"HGMMA {s['hgmma']}, HMMA {s['hmma']}"
        lif = record.get("loads_in_flight")
        res["loads_in_flight"] = (
            None if lif is not None and lif >= MIN_LOADS_IN_FLIGHT else f"{lif} loads in flight in a dot loop"
        )
    return res


def failures(records: Iterable[dict]) -> list[tuple[str, str, str, str]]:
    """``(case, kernel+config, check, why)`` of every failed check."""
    out = []
    for r in records:
        for name, why in check(r).items():
            if why is not None:
                out.append((r["case"], f"{r.get('kernel', '?').rsplit('.', 1)[-1]} [{r.get('config', '')}]", name, why))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="sm_90 compile worker (reads a JSON case list on stdin)")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--all-configs", action="store_true", help="every kept config, not only the first")
    parser.add_argument("--keep-asm", default=None, help="folder for the TTGIR, SASS and ptxas logs")
    parser.add_argument("--keys", action="store_true", help="print each case's cache key instead of compiling")
    args = parser.parse_args(argv)
    if args.keys:
        key_worker(json.load(sys.stdin), args.all_configs)
    else:
        worker(json.load(sys.stdin), args.all_configs, args.keep_asm)
    return 0


if __name__ == "__main__":
    # Run as a script: drop this file's folder from the path (its modules are not top-level).
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.exit(main())

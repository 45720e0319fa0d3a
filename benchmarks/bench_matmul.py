"""Block-sparse matmul (sdd, dsd, dds, and a sparse linear layer's forward + backward) against
dense ``torch.matmul`` and torch's BSR sparse tensors, on the same data in the same run.

The sparse weight ``W`` is ``[size, size]`` (out x in features) with square blocks; the dense
operand has ``p`` rows (tokens). Per case:

* ``sdd``: ``dW = dyᵀ @ x`` at W's blocks (dense: the full ``dyᵀ @ x``; BSR: no sampled product).
* ``dsd``: ``W @ b`` with ``b: [size, p]`` (BSR: ``W_bsr @ b``).
* ``dds``: ``x @ Wᵀ`` with ``x: [p, size]``, the layer's forward (BSR: ``(W_bsr @ xᵀ)ᵀ``).
* ``linear``: ``y = dds(x, W, transpose_sparse=True)``, ``dx = dds(dy, W)``, ``dW = sdd(dyᵀ, x)``
  (dense: three matmuls; BSR: ``W_bsr`` / ``W_bsrᵀ`` products for ``y`` and ``dx`` plus the
  dense ``dyᵀ @ x`` for ``dW``, as torch has no sampled BSR product).
* ``skewed`` cases put one fully dense block-row and block-column into a random layout: the
  long segment that load balancing (row splitting in ``dsd``/``dds``) exists for. On GPU they
  also time ``triton-nosplit`` (splitting disabled) to show what splitting buys.

Reported: median time (ms), TFLOP/s of useful work (``2*nnz*bm*bn*p`` per sparse product;
the dense baseline counts its own ``2*size*size*p``), speedup over dense, and efficiency =
speedup / (1/density) (1.0: exactly ``1/density`` times faster than dense).

* GPU: Triton kernels, ``triton.testing.do_bench`` (median, L2 flushed). Default sweep: sizes
  1024-8192 (``p = size``), blocks 16/32/64/128, densities 0.01-0.5, bf16/fp16/fp32, plus
  skewed cases at ``p = size`` and ``p = 256``.
* CPU: ``reference`` and, when built, ``native`` backends, ``torch.utils.benchmark`` median;
  default 2048x2048 weight, ``p = 256``, fp32, block 32, densities 0.05/0.1/0.3 (Triton's
  interpreter is not timed).

Results: ``benchmarks/results/<device>/matmul.{json,md}`` and one ``matmul_<dtype>_<size>x<p>.png``
(speedup vs density, one line per backend and block size, dense = 1) per dtype and shape.

    python benchmarks/bench_matmul.py                 # full sweep on CUDA, reduced set on CPU
    python benchmarks/bench_matmul.py --quick         # tiny smoke run (CI)
    python benchmarks/bench_matmul.py --sizes 4096 --blocks 64 --densities 0.1 --dtypes bf16
    python benchmarks/bench_matmul.py --device cpu --p 256 2048 8192 --blocks 16 32 --densities 0.1
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from _common import environment, plot_lines, results_dir, time_ms, write_json, write_table

from sparsekernels.layout import BlockLayout
from sparsekernels.ops import backends

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPS = ("sdd", "dsd", "dds", "linear")
# Sparse products per op (what "useful work" counts).
PRODUCTS = {"sdd": 1, "dsd": 1, "dds": 1, "linear": 3}


@dataclass(frozen=True)
class Case:
    """One timed problem: weight ``[size, size]`` in ``block`` x ``block`` blocks, ``p`` tokens."""

    op: str
    size: int
    p: int
    block: int
    density: float
    dtype: str
    skewed: bool = False


@dataclass(frozen=True)
class Problem:
    """The tensors of a case (built once, shared by every implementation)."""

    layout: BlockLayout
    values: torch.Tensor  # [nnz, block, block]
    weight: torch.Tensor  # dense W with zeros outside the blocks, [size, size]
    x: torch.Tensor  # [p, size]
    dy: torch.Tensor  # [p, size]


def make_layout(case: Case, device: torch.device, generator: torch.Generator) -> BlockLayout:
    """Random blocks at ``case.density``; skewed cases add a dense block-row and block-column."""
    R = case.size // case.block
    nnz = max(1, round(case.density * R * R))
    scores = torch.rand(R * R, generator=generator)
    mask = torch.zeros(R * R, dtype=torch.bool)
    mask[torch.topk(scores, nnz).indices] = True
    mask = mask.reshape(R, R)
    if case.skewed:
        mask[0, :] = True
        mask[:, 0] = True
    return BlockLayout.from_block_mask(mask.to(device), case.block)


def make_problem(case: Case, device: torch.device) -> Problem:
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[case.dtype]
    layout = make_layout(case, device, gen)
    values = torch.randn(layout.nnz, case.block, case.block, generator=gen).to(device, dtype)
    x = torch.randn(case.p, case.size, generator=gen).to(device, dtype)
    dy = torch.randn(case.p, case.size, generator=gen).to(device, dtype)
    return Problem(layout, values, layout.values_to_dense(values), x, dy)


def sparse_fn(case: Case, backend: str, pr: Problem) -> Callable[[], object]:
    """The op of ``case`` on one backend, as a no-argument callable."""
    impl = backends.module(backend)
    L, V, x, dy, dyt = pr.layout, pr.values, pr.x, pr.dy, pr.dy.t()
    b = x.t()  # [size, p]: dsd's dense operand, a transposed view (kernels take strides)
    return {
        "sdd": lambda: impl.sdd(dyt, x, L),
        "dsd": lambda: impl.dsd(V, L, b),
        "dds": lambda: impl.dds(x, V, L, True),
        "linear": lambda: (impl.dds(x, V, L, True), impl.dds(dy, V, L), impl.sdd(dyt, x, L)),
    }[case.op]


def dense_fn(case: Case, pr: Problem) -> Callable[[], object]:
    W, x, dy = pr.weight, pr.x, pr.dy
    b = x.t()
    return {
        "sdd": lambda: dy.t() @ x,
        "dsd": lambda: W @ b,
        "dds": lambda: x @ W.t(),
        "linear": lambda: (x @ W.t(), dy @ W, dy.t() @ x),
    }[case.op]


def bsr_fn(case: Case, pr: Problem) -> Callable[[], object] | None:
    """torch BSR products (conversion done once, outside the timing), or None where torch
    has no BSR equivalent or does not support the dtype on this device."""
    if case.op == "sdd":
        return None
    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
    try:
        w_bsr = pr.weight.to_sparse_bsr((case.block, case.block))
        wt_bsr = pr.weight.t().contiguous().to_sparse_bsr((case.block, case.block))
        x, dy = pr.x, pr.dy
        fn = {
            "dsd": lambda: w_bsr @ x.t(),
            "dds": lambda: (w_bsr @ x.t()).t(),
            "linear": lambda: ((w_bsr @ x.t()).t(), (wt_bsr @ dy.t()).t(), dy.t() @ x),
        }[case.op]
        fn()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None  # e.g. a dtype torch's BSR kernels lack on this device
    return fn


def useful_flops(case: Case, layout: BlockLayout) -> float:
    bm, bn = layout.block_size
    return PRODUCTS[case.op] * 2.0 * layout.nnz * bm * bn * case.p


def run_case(case: Case, impls: list[str], device: torch.device, min_run_time: float) -> list[dict]:
    """Time every implementation of ``case``; one row each, dense first."""
    pr = make_problem(case, device)
    density = pr.layout.density
    dense_flops = PRODUCTS[case.op] * 2.0 * case.size * case.size * case.p
    t_dense = time_ms(dense_fn(case, pr), device, min_run_time)
    rows = [dict(asdict(case), impl="dense", density_actual=density, ms=t_dense)]
    rows[0]["tflops"] = dense_flops / t_dense / 1e9
    for impl in impls:
        if impl == "bsr":
            fn = bsr_fn(case, pr)
            if fn is None:
                continue
            t = time_ms(fn, device, min_run_time)
        elif impl == "triton-nosplit":
            if not case.skewed or case.op == "sdd":
                continue
            common = importlib.import_module("sparsekernels.ops.matmul._common")
            common.FORCE_SPLIT = 1 << 30  # longer than any segment: one program per segment
            try:
                t = time_ms(sparse_fn(case, "triton", pr), device, min_run_time)
            finally:
                common.FORCE_SPLIT = None
        else:
            t = time_ms(sparse_fn(case, impl, pr), device, min_run_time)
        rows.append(
            dict(asdict(case), impl=impl, density_actual=density, ms=t, tflops=useful_flops(case, pr.layout) / t / 1e9)
        )
    for row in rows:
        row["speedup"] = t_dense / row["ms"]
        row["efficiency"] = row["speedup"] * density
    del pr
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def build_cases(args) -> list[Case]:
    ps = args.p or [None]  # None: p = size
    cases = [
        Case(op, size, p or size, block, density, dtype)
        for p, dtype, size, block, density, op in itertools.product(
            ps, args.dtypes, args.sizes, args.blocks, args.densities, args.ops
        )
        if size % block == 0
    ]
    # Skewed layouts: the middle block size and density, the ops with segments to balance.
    block = args.blocks[len(args.blocks) // 2]
    density = args.densities[len(args.densities) // 2]
    p_values = list(args.p) if args.p else ([None, 256] if args.skew_small_p else [None])
    for dtype, size, p in itertools.product(args.dtypes[:1], args.sizes, p_values):
        for op in ("dsd", "linear"):
            if op in args.ops and size % block == 0:
                cases.append(Case(op, size, p or size, block, density, dtype, skewed=True))
    return cases


def plot(rows: list[dict], out_dir, device_label: str, stem: str) -> list[str]:
    """One PNG per (dtype, size, p): a panel per op, speedup vs density per impl and block."""
    written = []
    shapes = sorted({(r["dtype"], r["size"], r["p"]) for r in rows if not r["skewed"]})
    for dtype, size, p in shapes:
        panels = {}
        for op in OPS:
            series = {}
            for r in rows:
                if (r["dtype"], r["size"], r["p"], r["op"], r["skewed"]) != (dtype, size, p, op, False):
                    continue
                if r["impl"] == "dense":
                    continue
                xs, ys = series.setdefault(f"{r['impl']} b{r['block']}", ([], []))
                xs.append(r["density_actual"])
                ys.append(r["speedup"])
            if series:
                panels[op] = series
        if panels:
            name = f"{stem}_{dtype}_{size}x{p}.png"
            plot_lines(
                out_dir / name,
                panels,
                xlabel="block density",
                ylabel="speedup over dense",
                title=f"block-sparse matmul, {dtype}, W {size}x{size}, p={p} ({device_label})",
            )
            written.append(name)
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--ops", nargs="+", choices=OPS)
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument(
        "--p", type=int, nargs="+", help="dense rows (tokens), one or more; default: size on GPU, 256 on CPU"
    )
    parser.add_argument("--blocks", nargs="+", type=int)
    parser.add_argument("--densities", nargs="+", type=float)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES)
    parser.add_argument(
        "--backends",
        nargs="+",
        help="sparse backends to time (default: triton on GPU; reference and native, when built, on CPU)",
    )
    parser.add_argument("--no-bsr", action="store_true", help="skip torch's BSR baseline")
    parser.add_argument("--out", help="results folder (default benchmarks/results/<device>)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.quick:
        defaults = dict(
            ops=list(OPS),
            sizes=[1024 if gpu else 256],
            p=None if gpu else [64],
            blocks=[64 if gpu else 32],
            densities=[0.1],
            dtypes=["bf16" if gpu else "fp32"],
        )
    elif gpu:
        defaults = dict(
            ops=list(OPS),
            sizes=[1024, 2048, 4096, 8192],
            p=None,
            blocks=[16, 32, 64, 128],
            densities=[0.01, 0.05, 0.1, 0.2, 0.5],
            dtypes=["bf16", "fp16", "fp32"],
        )
    else:
        defaults = dict(ops=list(OPS), sizes=[2048], p=[256], blocks=[32], densities=[0.05, 0.1, 0.3], dtypes=["fp32"])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.skew_small_p = gpu and not args.quick
    if args.backends is None:
        args.backends = (
            ["triton", "triton-nosplit"] if gpu else ["reference"] + (["native"] if backends.native_available() else [])
        )
    if not args.no_bsr:
        args.backends = [*args.backends, "bsr"]
    args.min_run_time = 0.05 if args.quick else 0.5
    return args, device


def main(argv=None) -> list[dict]:
    args, device = parse_args(argv)
    if device.type == "cpu" and any(b.startswith("triton") for b in args.backends):
        raise SystemExit("Triton on CPU runs under the interpreter, which is not worth timing")
    torch.manual_seed(0)
    rows = []
    cases = build_cases(args)
    for i, case in enumerate(cases):
        case_rows = run_case(case, args.backends, device, args.min_run_time)
        rows.extend(case_rows)
        best = min(case_rows[1:], key=lambda r: r["ms"], default=case_rows[0])
        print(
            f"[{i + 1}/{len(cases)}] {case}: dense {case_rows[0]['ms']:.3f} ms, "
            f"best {best['impl']} {best['ms']:.3f} ms ({best['speedup']:.2f}x)",
            flush=True,
        )

    out_dir = results_dir(device, args.out)
    stem = "matmul_quick" if args.quick else "matmul"  # a smoke run never overwrites real results
    env = environment(device)
    columns = [
        "op",
        "size",
        "p",
        "block",
        "density_actual",
        "dtype",
        "skewed",
        "impl",
        "ms",
        "tflops",
        "speedup",
        "efficiency",
    ]
    table = write_table(out_dir / f"{stem}.md", rows, columns)
    print(table)
    plots = plot(rows, out_dir, env["device"], stem)
    record = {
        **env,
        "benchmark": "matmul",
        "quick": args.quick,
        "config": {k: v for k, v in vars(args).items()},
        "plots": plots,
        "rows": rows,
    }
    write_json(out_dir / f"{stem}.json", record)
    print(f"wrote {out_dir}/{stem}.json, {stem}.md, {', '.join(plots)}")
    return rows


if __name__ == "__main__":
    main()

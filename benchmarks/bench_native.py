"""The native CPU backend on its target cases, against dense torch and torch's BSR, in one run.

Targets (fp32, block 32, all threads torch uses):

* ``matmul``: sparse weight ``[2048, 2048]`` times dense ``[2048, 256]`` (``dsd``): at density
  0.1 at least 5x faster than dense ``torch.matmul`` (ideal 10x), faster than dense at 0.3.
  Second baseline: torch's BSR tensor (``W.to_sparse_bsr(32) @ b``).
* ``conv``: the 3x3 convolution of CIFAR ResNet-18 stages (64/128/256/512 channels at 32x32 /
  16x16 / 8x8 / 4x4, batch 64, stride 1, padding 1, channels-last): forward + input gradient +
  weight gradient at density 0.1 at least 4x faster than dense ``F.conv2d`` forward +
  backward.

Sparse products run through the public ops (``sparsekernels.ops.dsd`` / ``conv2d`` with
``backend="native"``), so Python dispatch and the autograd plumbing are inside the times;
the conv rows also give each piece (the backend functions called directly). Dense conv
backward is timed with ``torch.autograd.grad`` (both gradients), its pieces with
``torch.nn.grad``. Times are ``torch.utils.benchmark`` medians; every implementation is timed
once per round, ``--rounds`` rounds interleaved, and the median over rounds is kept, so a
burst of load from other processes on a shared machine skews one round, not one column.

Results: ``benchmarks/results/<cpu>/native.{json,md}``.

    python benchmarks/bench_native.py              # the target cases
    python benchmarks/bench_native.py --quick      # small shapes, one round (smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import environment, results_dir, time_ms, write_json
from tabulate import tabulate

import sparsekernels
from sparsekernels import ops
from sparsekernels.conv_layout import conv_matrix_to_weight
from sparsekernels.layout import BlockLayout
from sparsekernels.ops import native_backend

CPU = torch.device("cpu")
BLOCK = 32


def _timed_rounds(fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float) -> dict[str, float]:
    """Median over ``rounds`` interleaved rounds of each function's median time (ms)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_ms(fn, CPU, min_run_time))
    return {name: statistics.median(ts) for name, ts in times.items()}


# ------------------------------------------------------------------------------ matmul
def _matmul_fns(weight, weight_bsr, values, layout, b) -> dict[str, Callable[[], object]]:
    """``S @ b`` three ways: the dense matrix, torch's BSR tensor, the native backend."""
    return {
        "dense": lambda: torch.matmul(weight, b),
        "bsr": lambda: weight_bsr @ b,
        "native": lambda: ops.dsd(values, layout, b, backend="native"),
    }


def matmul_rows(size: int, p: int, densities, rounds: int, min_run_time: float) -> list[dict]:
    rows = []
    b = torch.randn(size, p)
    for density in densities:
        gen = torch.Generator().manual_seed(0)
        layout = BlockLayout.random((size, size), BLOCK, density, generator=gen)
        values = torch.randn(layout.values_shape())
        weight = layout.values_to_dense(values)  # the same matrix, dense (zeros outside blocks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse BSR support is in beta"
            weight_bsr = weight.to_sparse_bsr((BLOCK, BLOCK))
        fns = _matmul_fns(weight, weight_bsr, values, layout, b)
        ms = _timed_rounds(fns, rounds, min_run_time)
        flop = 2 * layout.nnz * BLOCK * BLOCK * p
        row = {
            "case": "dsd",
            "shape": f"{size}x{size} @ {size}x{p}",
            "density": round(layout.density, 4),
            "dense_ms": ms["dense"],
            "bsr_ms": ms["bsr"],
            "native_ms": ms["native"],
            "native_gflops": flop / ms["native"] / 1e6,
            "speedup_vs_dense": ms["dense"] / ms["native"],
            "speedup_vs_bsr": ms["bsr"] / ms["native"],
        }
        rows.append(row)
        print(
            f"dsd {row['shape']} d={density}: dense {ms['dense']:.2f} ms, bsr {ms['bsr']:.2f} ms, "
            f"native {ms['native']:.2f} ms -> x{row['speedup_vs_dense']:.2f} vs dense, "
            f"x{row['speedup_vs_bsr']:.2f} vs BSR",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------ conv
GEOMETRY = ((3, 3), (1, 1), (1, 1), (1, 1))  # kernel, stride, padding, dilation


def _dense_conv_fns(x, weight, dy) -> dict[str, Callable[[], object]]:
    """Dense 3x3 conv pieces (``torch.nn.grad``) and forward + backward through autograd."""
    xg, wg = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    return {
        "dense_fwd": lambda: F.conv2d(x, weight, None, 1, 1),
        "dense_dx": lambda: torch.nn.grad.conv2d_input(x.shape, weight, dy, 1, 1),
        "dense_dw": lambda: torch.nn.grad.conv2d_weight(x, weight.shape, dy, 1, 1),
        "dense_total": lambda: torch.autograd.grad(F.conv2d(xg, wg, None, 1, 1), (xg, wg), dy),
    }


def _native_conv_fns(x, values, layout, dy) -> dict[str, Callable[[], object]]:
    """Native backend pieces (called directly) and ``ops.conv2d`` forward + backward."""
    xg, vg = x.clone().requires_grad_(True), values.clone().requires_grad_(True)
    return {
        "native_fwd": lambda: native_backend.conv2d_forward(x, values, layout, *GEOMETRY),
        "native_dx": lambda: native_backend.conv2d_input_grad(dy, values, layout, tuple(x.shape), *GEOMETRY),
        "native_dw": lambda: native_backend.conv2d_weight_grad(x, dy, layout, *GEOMETRY),
        "native_total": lambda: torch.autograd.grad(
            ops.conv2d(xg, vg, layout, 3, 1, 1, backend="native"), (xg, vg), dy
        ),
    }


def conv_rows(layers, densities, rounds: int, min_run_time: float) -> list[dict]:
    rows = []
    cl = torch.channels_last
    for name, batch, channels, size in layers:
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=cl)
        dy = torch.randn(batch, channels, size, size).contiguous(memory_format=cl)
        weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=cl)
        dense = _dense_conv_fns(x, weight, dy)
        for density in densities:
            gen = torch.Generator().manual_seed(0)
            layout = BlockLayout.random((9 * channels, channels), BLOCK, density, generator=gen)
            values = torch.randn(layout.values_shape())
            native = _native_conv_fns(x, values, layout, dy)
            ms = _timed_rounds({**dense, **native}, rounds, min_run_time)
            row = {
                "case": name,
                "shape": f"{batch}x{channels}x{size}x{size}",
                "density": round(layout.density, 4),
                **{f"{k}_ms": v for k, v in ms.items()},
                "speedup_fwd": ms["dense_fwd"] / ms["native_fwd"],
                "speedup_dx": ms["dense_dx"] / ms["native_dx"],
                "speedup_dw": ms["dense_dw"] / ms["native_dw"],
                "speedup_total": ms["dense_total"] / ms["native_total"],
            }
            rows.append(row)
            print(
                f"{name} {row['shape']} d={density}: dense fwd+bwd {ms['dense_total']:.1f} ms, native "
                f"{ms['native_total']:.1f} ms -> x{row['speedup_total']:.2f} (fwd x{row['speedup_fwd']:.1f}, "
                f"dx x{row['speedup_dx']:.1f}, dw x{row['speedup_dw']:.1f})",
                flush=True,
            )
    # Sanity: the timed native conv matches the dense one on the last case (cheap, same data).
    ref = F.conv2d(x.double(), conv_matrix_to_weight(layout.values_to_dense(values.double()), 3), None, 1, 1)
    err = (native_backend.conv2d_forward(x, values, layout, *GEOMETRY).double() - ref).norm() / ref.norm()
    assert err < 1e-5, f"native conv disagrees with the dense reference (relative error {err:.2e})"
    return rows


MATMUL_COLUMNS = [
    "threads",
    "case",
    "shape",
    "density",
    "dense_ms",
    "bsr_ms",
    "native_ms",
    "native_gflops",
    "speedup_vs_dense",
    "speedup_vs_bsr",
]
CONV_COLUMNS = [
    "threads",
    "case",
    "shape",
    "density",
    "dense_total_ms",
    "native_total_ms",
    "speedup_total",
    "dense_fwd_ms",
    "native_fwd_ms",
    "speedup_fwd",
    "dense_dx_ms",
    "native_dx_ms",
    "speedup_dx",
    "dense_dw_ms",
    "native_dw_ms",
    "speedup_dw",
]


def _table(rows: list[dict], columns: list[str]) -> str:
    return tabulate([[r[c] for c in columns] for r in rows], headers=columns, tablefmt="github", floatfmt=".3f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, one round (smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median kept)")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per blocked_autorange")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch thread counts to run with, e.g. 2 1 (default: torch's current count)",
    )
    parser.add_argument("--skip-conv", action="store_true", help="matmul cases only")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<cpu>)")
    parser.add_argument("--note", default=None, help="free text stored in the JSON record")
    args = parser.parse_args()
    if not sparsekernels.native_available():
        raise SystemExit("the native extension is not built: pip install --no-build-isolation -e .")
    if args.quick:
        args.rounds, args.min_run_time = 1, 0.05
    matmul, conv = [], []
    default_threads = torch.get_num_threads()
    thread_counts = args.threads or [default_threads]
    for threads in thread_counts:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        if args.quick:
            m = matmul_rows(512, 64, (0.1,), args.rounds, args.min_run_time)
            c = conv_rows([("quick.conv3x3", 4, 64, 8)], (0.1,), args.rounds, args.min_run_time)
        else:
            m = matmul_rows(2048, 256, (0.05, 0.1, 0.3), args.rounds, args.min_run_time)
            # The CIFAR ResNet-18 3x3 layers at the training batch of bench_train_step.
            layers = [
                ("resnet18.s1.conv3x3", 64, 64, 32),
                ("resnet18.s2.conv3x3", 64, 128, 16),
                ("resnet18.s3.conv3x3", 64, 256, 8),
                ("resnet18.s4.conv3x3", 64, 512, 4),
            ]
            c = [] if args.skip_conv else conv_rows(layers, (0.1, 0.3), args.rounds, args.min_run_time)
        matmul += [{"threads": threads, **row} for row in m]
        conv += [{"threads": threads, **row} for row in c]

    torch.set_num_threads(default_threads)
    out = results_dir(CPU, args.out)
    record = {
        "benchmark": "native",
        **environment(CPU),
        "thread_counts": thread_counts,
        "native_isa": native_backend.isa(),
        "config": {"block": BLOCK, "dtype": "fp32", "rounds": args.rounds, "min_run_time": args.min_run_time},
        "note": args.note,
        "matmul": matmul,
        "conv": conv,
    }
    stem = "native_quick" if args.quick else "native"
    write_json(out / f"{stem}.json", record)
    header = (
        f"# native backend: {record['device']}, ISA {record['native_isa']}, torch {record['torch']}, "
        f"{record['date']}, load average at the end {record['load_average_1min']:.2f}\n\n"
        f"fp32, block 32, median of {args.rounds} interleaved rounds of `blocked_autorange` medians.\n\n"
    )
    text = header + "## matmul: sparse [2048, 2048] @ dense [2048, 256] (dsd)\n\n" + _table(matmul, MATMUL_COLUMNS)
    if conv:
        text += "\n\n## conv 3x3, stride 1, padding 1 (fwd + dx + dW)\n\n" + _table(conv, CONV_COLUMNS)
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()

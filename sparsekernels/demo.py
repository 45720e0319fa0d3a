"""``python -m sparsekernels.demo``: every op through every available backend, checked.

Builds layouts from random masks, runs sdd / dsd / dds (both transposes) and the
convolution forward and backward on each backend that can run here (reference always;
Triton on CUDA, or under its CPU interpreter when no GPU is present; native when the C++
extension was built), compares outputs and gradients with a float64 dense computation,
and prints a table. Then trains a small block-sparse network with a dynamic topology for a
few steps, to show the whole loop working and what it buys: dense vs RigL ResNet-18 on CIFAR-10 when
the data is found
(``--data-dir`` or ``$SPARSEKERNELS_DATA``), else on synthetic CIFAR-shaped data, said loudly.
Exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsekernels import BlockLayout, ops
from sparsekernels.conv_layout import conv_matrix_to_weight
from sparsekernels.ops import backends

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable  # (backend, dtype, device) -> (sparse outputs, dense float64 outputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _random_layout(shape, block, density, device) -> BlockLayout:
    return BlockLayout.random(shape, block, density, device=device)


def _matmul_case(op: str, transpose: bool, shape=(64, 96), block=32, P=48, density=0.4) -> Case:
    def run(backend, dtype, device):
        layout = _random_layout(shape, block, density, device)
        values = torch.randn(layout.nnz, block, block, device=device, dtype=dtype, requires_grad=True)
        M, N = shape
        S = lambda v: layout.values_to_dense(v)  # noqa: E731 - the float64 oracle's dense S
        if op == "sdd":
            a = torch.randn(M, P, device=device, dtype=dtype, requires_grad=True)
            b = torch.randn(P, N, device=device, dtype=dtype, requires_grad=True)
            out = ops.sdd(a, b, layout, backend=backend)
            a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
            ref = layout.dense_to_values(a64 @ b64)
            inputs, inputs64 = (a, b), (a64, b64)
        elif op == "dsd":
            b = torch.randn(N if not transpose else M, P, device=device, dtype=dtype, requires_grad=True)
            out = ops.dsd(values, layout, b, transpose, backend=backend)
            v64, b64 = (t.detach().double().requires_grad_() for t in (values, b))
            ref = (S(v64).t() if transpose else S(v64)) @ b64
            inputs, inputs64 = (values, b), (v64, b64)
        else:
            a = torch.randn(P, M if not transpose else N, device=device, dtype=dtype, requires_grad=True)
            out = ops.dds(a, values, layout, transpose, backend=backend)
            a64, v64 = (t.detach().double().requires_grad_() for t in (a, values))
            ref = a64 @ (S(v64).t() if transpose else S(v64))
            inputs, inputs64 = (a, values), (a64, v64)
        grad = torch.randn_like(ref)
        grads = torch.autograd.grad(out, inputs, grad.to(out.dtype))
        grads64 = torch.autograd.grad(ref, inputs64, grad)
        return [out, *grads], [ref, *grads64]

    return Case(f"{op}{'ᵀ' if transpose else ''} {shape[0]}x{shape[1]} b{block}", run)


def _conv_case(stride=1, block=16, C=32, K=32, hw=8, density=0.4) -> Case:
    def run(backend, dtype, device):
        grid = torch.rand(9 * K // block, C // block, device=device) < density
        layout = BlockLayout.from_block_mask(grid, block)
        values = torch.randn(layout.nnz, block, block, device=device, dtype=dtype, requires_grad=True)
        x = torch.randn(2, C, hw, hw, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        out = ops.conv2d(x, values, layout, 3, stride, 1, backend=backend)
        x64, v64 = (t.detach().double().requires_grad_() for t in (x, values))
        ref = F.conv2d(x64, conv_matrix_to_weight(layout.values_to_dense(v64), 3), None, stride, 1)
        grad = torch.randn_like(ref)
        grads = torch.autograd.grad(out, (x, values), grad.to(out.dtype))
        grads64 = torch.autograd.grad(ref, (x64, v64), grad)
        return [out, *grads], [ref, *grads64]

    return Case(f"conv3x3 s{stride} {C}->{K} b{block}", run)


def available_backends(device: torch.device) -> list[str]:
    names = ["reference"]
    if backends.triton_available() and (device.type == "cuda" or not torch.cuda.is_available()):
        names.append("triton")
    if device.type == "cpu" and backends.native_available():
        names.append("native")
    return names


def backend_label(backend: str, device: torch.device) -> str:
    """How the demo names a backend: on a CPU, Triton is its interpreter, checked for
    correctness only (its timings say nothing about Triton's speed on a GPU)."""
    if backend == "triton" and device.type == "cpu":
        return "triton: Triton interpreter (correctness only, not speed)"
    return {"reference": "reference: plain PyTorch", "native": "native: C++ CPU kernels"}.get(backend, backend)


def check_ops(device: torch.device, quick: bool) -> bool:
    cases = [_matmul_case(op, t) for op in ("sdd", "dsd", "dds") for t in ((False,) if op == "sdd" else (False, True))]
    cases += [_conv_case(1), _conv_case(2)]
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    ok = True
    # Each row is printed when its check finishes: the interpreter takes a while per case.
    print(f"{'op':<24} {'backend':<10} {'dtype':<9} {'fwd err':>9} {'grad errs':>19} {'seconds':>8}  check")
    for backend in available_backends(device):
        for dtype in dtypes:
            if backend == "native" and dtype != torch.float32:
                continue
            for case in cases:
                start = time.perf_counter()
                outs, refs = case.run(backend, dtype, device)
                seconds = time.perf_counter() - start
                errors = [_rel(o, r) for o, r in zip(outs, refs)]
                passed = max(errors) <= TOLERANCE[dtype]
                ok &= passed
                grads = " ".join(f"{e:.1e}" for e in errors[1:])
                print(
                    f"{case.name:<24} {backend:<10} {str(dtype).replace('torch.', ''):<9} {errors[0]:>9.1e} "
                    f"{grads:>19} {seconds:>8.2f}  {'ok' if passed else 'FAIL'}",
                    flush=True,
                )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="float32 only")
    parser.add_argument("--train-steps", type=int, default=24, help="steps of the training demo (0: skip)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 location (default: $SPARSEKERNELS_DATA)")
    parser.add_argument("--out", default="runs/demo", help="where the training demo writes its records")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"sparsekernels demo on {device} (torch {torch.__version__}); backends:")
    for backend in available_backends(device):
        print(f"  {backend_label(backend, device)}")
    ops_ok = check_ops(device, args.quick)
    print("all op checks passed" if ops_ok else "SOME OP CHECKS FAILED", flush=True)
    train_ok = True
    if args.train_steps > 0:
        train_ok = train_briefly(device, args.train_steps, args.data_dir, args.out) == 0
    ok = ops_ok and train_ok
    parts = [f"op checks {'passed' if ops_ok else 'FAILED'}"]
    if args.train_steps > 0:
        parts.append(f"training run {'completed' if train_ok else 'FAILED'}")
    print(f"\ndemo: {'PASS' if ok else 'FAIL'} ({', '.join(parts)})", flush=True)
    return 0 if ok else 1


# The training comparison: a net big enough that its convolutions dominate the step (ResNet-18,
# 64-512 channels), 32-blocks (the native kernels' sweet spot), 90 % of every sparsified
# layer's weights removed, RigL updates rare enough to amortise their dense gradient.
DEMO_MODEL = ["--model", "resnet18", "--block-size", "32", "--density", "0.1", "--distribution", "uniform"]
DEMO_BATCH = 64


def train_briefly(device: torch.device, steps: int, data_dir: str | None, out: str) -> int:
    """Dense vs dynamically sparse (RigL, 90 % of the weights of the sparsified layers pruned,
    block 32) CIFAR ResNet-18, ``steps`` optimizer steps each, then a one-line verdict."""
    from sparsekernels import train
    from sparsekernels.data import find_cifar10

    real = find_cifar10(data_dir) is not None
    print(
        f"\ntraining a CIFAR ResNet-18 dense and 90%-sparse (RigL, block 32) for {steps} steps each, "
        f"batch {DEMO_BATCH}, {torch.get_num_threads()} threads"
    )
    # On synthetic data two short epochs: throughput is taken from the second (steady) one.
    per_epoch = max(1, steps // 2)
    argv = [*DEMO_MODEL, "--compare", "dense,rigl", "--update-every", str(per_epoch)]
    argv += ["--batch-size", str(DEMO_BATCH), "--epochs", "2", "--max-steps", str(steps)]
    argv += ["--device", str(device), "--out", out, "--channels-last", "--seed", "0"]
    if real:
        argv += ["--data-dir", data_dir] if data_dir else []
    else:
        argv += ["--synthetic", "--synthetic-size", str(per_epoch * DEMO_BATCH)]
    code = train.main(argv)
    if code == 0:
        print(verdict(Path(out) / "compare.json", real))
    return code


def verdict(compare_json: Path, real_data: bool) -> str:
    """``sparse training step 3.1x faster than dense; test accuracy ...`` from a compare record."""
    runs = {r["label"]: r for r in json.loads(compare_json.read_text())["runs"]}
    dense, sparse = runs["dense"], runs["rigl"]
    speedup = sparse["steady_images_per_second"] / dense["steady_images_per_second"]
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "n/a"
    accuracy = (
        f"test accuracy after {dense['steps_done']} steps: dense {100 * dense['final_test_acc']:.1f} %, "
        f"sparse {100 * sparse['final_test_acc']:.1f} % (a smoke run, not converged)"
        if real_data
        else "accuracy not meaningful (synthetic data)"
    )
    return (
        f"verdict: sparse training step {speedup:.1f}x {'faster' if speedup >= 1 else 'SLOWER'} than dense "
        f"(same run, {torch.get_num_threads()} threads, load {load}); {accuracy}"
    )


if __name__ == "__main__":
    sys.exit(main())

"""The whole GPU proof in one command (issue 12, point 4): at most 8 minutes on one H200.

    python benchmarks/gpu_proof.py                 # on the GPU machine (default budget 450 s)
    python benchmarks/gpu_proof.py --smoke         # the same script on the CPU, interpreter, tiny sizes

Sections, in order (each in try/except: an error is written into the JSON and the next section
runs; a section that would start too close to the budget is skipped, and results are written
after every section, so a run killed at its time limit still leaves them):

0. ``compile``     — every kernel x kept autotune config the sections need, compiled up front in
   parallel threads (triton's AsyncCompileMode), so that compiling fits the budget.
1. ``ceilings``    — bf16 dense matmul TFLOP/s, HBM copy and L2-resident copy bandwidth.
2. ``correctness`` — ~20 cases, every kernel (sdd, dsd, dsd^T, dds, dds^T, conv fwd/dx/dW) and the
   two layers' forward + gradients, fp32/fp16/bf16, against float64 references; NaN-poisoned outputs.
3. ``matmul``      — sdd/dsd/dds bf16 4096^3, blocks 32/64, densities 0.05-0.5 vs cuBLAS and torch BSR.
4. ``conv``        — ResNet-18 CIFAR 3x3 layers (batch 256, channels-last, bf16) fwd/dx/dW at density
   0.1, blocks 32/64, vs cuDNN.
5. ``layout``      — topology rebuild of every ResNet-18 sparse layer: time, and no host sync under
   ``torch.cuda.set_sync_debug_mode("error")``.
6. ``train``       — one ResNet-18 training step (batch 256, bf16 autocast, channels-last), dense vs
   90 %-sparse (block 32): median step time.
7. ``graph``       — whether a step with a topology update can be captured in a CUDA graph.

Writes ``benchmarks/results/cuda-<gpu>-<date>/proof.json`` and ``proof.md`` (device, versions, every
figure beside its MODEL prediction from ``benchmarks/results/model-h200/roofline.json`` where one
exists) and prints a summary. Kernels autotune in-process (autotune results cached on disk:
``TRITON_CACHE_AUTOTUNING=1``), so a rerun in the same lease skips compile and tuning.

On this workplace's lent H200 (device tool; nothing to carry, nothing to install), one call:

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/gpu_proof.py --out $OUT/proof 2>&1 | tee $OUT/proof.log",
        timeout_s=500)

then copy ``proof.json``/``proof.md`` from the returned files into
``benchmarks/results/cuda-nvidia-h200-<date>/`` and commit them. A rerun of only what failed:
``--only matmul conv`` (the machine keeps its triton cache while warm). ``--compile-threads 0``
turns the parallel up-front compile off (then each section compiles as it autotunes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

START = time.perf_counter()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")

import torch  # noqa: E402

# Per-dtype tolerances of the relative error of norms against float64 (tests/helpers.py's table;
# fp32 without TF32).
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Proof:
    """Sections run under a global time budget; the record is rewritten after each one."""

    def __init__(self, out: Path, budget_s: float, smoke: bool, device: torch.device):
        self.out, self.budget_s, self.smoke, self.device = out, budget_s, smoke, device
        self.record: dict = {"proof": "sparsekernels GPU proof (issue 12)", "smoke": smoke, "sections": {}}
        self.model = _load_model()
        self.compile_threads = os.cpu_count() or 4

    def elapsed(self) -> float:
        return time.perf_counter() - START

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def run(self, name: str, fn, needs_s: float) -> None:
        sec: dict = {"status": "skipped", "started_at_s": round(self.elapsed(), 1)}
        self.record["sections"][name] = sec
        if self.left() < needs_s:
            sec["reason"] = f"{self.left():.0f} s left of the {self.budget_s:.0f} s budget, needs ~{needs_s:.0f} s"
            print(f"[{self.elapsed():6.1f}s] {name}: SKIPPED ({sec['reason']})", flush=True)
            self.write()
            return
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            sec["results"] = fn(self)
            sec["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed section is a result; the next one runs
            sec["status"] = "error"
            sec["error"] = f"{type(exc).__name__}: {exc}"
            sec["traceback"] = traceback.format_exc()[-4000:]
            print(f"  ERROR {sec['error']}", flush=True)
        finally:
            if self.device.type == "cuda":
                try:
                    torch.cuda.synchronize()
                except Exception as exc:  # noqa: BLE001
                    sec["sync_error"] = repr(exc)
            sec["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"[{self.elapsed():6.1f}s] {name}: {sec['status']} in {sec['seconds']} s", flush=True)
            self.write()

    def write(self) -> None:
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "proof.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        tmp.replace(self.out / "proof.json")
        (self.out / "proof.md").write_text(markdown(self.record))

    def predicted(self, case: str) -> dict:
        """The MODEL's prediction for a case name of benchmarks/roofline.py, if it has one."""
        if not self.model:
            return {}
        row = next((r for r in self.model.get("rows", []) if r["case"] == case), None)
        if not row:
            return {}
        return {"model_us": row["predicted_us"], "model_speedup": row["predicted_speedup"]}


def _load_model() -> dict | None:
    try:
        return json.loads((HERE / "results" / "model-h200" / "roofline.json").read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- timing


def bench_ms(fn, proof: Proof) -> float:
    """Median ms of ``fn`` (CUDA: do_bench, after a warm-up call that also autotunes; CPU
    smoke: one timed call after the warm-up: the figure only proves the code path runs)."""
    fn()
    if proof.device.type == "cuda":
        import triton.testing

        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.isfinite(a).all():
        return math.inf
    denom = e.norm()
    return float((a - e).norm() / denom) if denom > 0 else float((a - e).norm())


# --------------------------------------------------------------------------- sections


def section_ceilings(proof: Proof) -> dict:
    dev = proof.device
    n = 1024 if proof.smoke else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    b = torch.randn_like(a)
    ms = bench_ms(lambda: a @ b, proof)
    out = {"matmul_n": n, "matmul_dtype": str(a.dtype), "matmul_tflops": 2 * n**3 / ms / 1e9}
    for label, nbytes in (("hbm_copy", 2 << 30), ("l2_copy", 16 << 20)):
        nbytes = nbytes // 64 if proof.smoke else nbytes
        src = torch.randn(nbytes // 4, device=dev)
        dst = torch.empty_like(src)
        ms = bench_ms(lambda s=src, d=dst: d.copy_(s), proof)
        out[f"{label}_bytes"] = nbytes
        out[f"{label}_tb_per_s"] = 2 * nbytes / ms / 1e9  # read + write
        del src, dst
    return out


def _layout(shape, block, density, device, seed):
    from sparsekernels import BlockLayout

    gen = torch.Generator().manual_seed(seed)
    return BlockLayout.random(shape, block, density, generator=gen).to(device)


def _correctness_cases(smoke: bool) -> list[dict]:
    """~20 cases: every kernel at several dtypes and block sizes, and the two layers."""
    big = 128 if smoke else 512
    cases = []
    for op, dtype, block in [
        ("sdd", "fp32", 16), ("sdd", "bf16", 32), ("sdd", "fp16", 64),
        ("dsd", "fp32", 32), ("dsd", "bf16", 64), ("dsd_t", "fp16", 32), ("dsd_t", "bf16", 128),
        ("dds", "fp32", 64), ("dds", "bf16", 32), ("dds_t", "fp16", 16), ("dds_t", "bf16", 64),
        ("conv_fwd", "fp32", 16), ("conv_fwd", "bf16", 32), ("conv_dx", "fp16", 32), ("conv_dx", "bf16", 64),
        ("conv_dw", "fp32", 32), ("conv_dw", "bf16", 16), ("conv_dw", "fp16", 64),
        ("linear_layer", "bf16", 32), ("conv_layer", "bf16", 32),
    ]:  # fmt: skip
        block = min(block, big // 2)
        cases.append({"op": op, "dtype": dtype, "block": block, "size": big})
    return cases


def _check_op(case: dict, device: torch.device, smoke: bool) -> float:
    from sparsekernels.ops import reference as ref
    from sparsekernels.ops import triton_backend as tb

    dtype, blk, n = DTYPES[case["dtype"]], case["block"], case["size"]
    op = case["op"]
    seed = abs(hash((op, case["dtype"], blk))) % 1000

    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    def d64(t):
        return t.detach().double().cpu()

    if op in ("sdd", "dsd", "dsd_t", "dds", "dds_t"):
        layout = _layout((n, n), blk, 0.25, device, seed)
        lay64 = layout.to("cpu")
        values = rnd(*layout.values_shape())
        p = 64 if smoke else 256
        if op == "sdd":
            a, b = rnd(n, n), rnd(n, n)
            return rel_error(tb.sdd(a, b, layout), ref.sdd(d64(a), d64(b), lay64))
        t = op.endswith("_t")
        if op.startswith("dsd"):
            b = rnd(n, p)
            return rel_error(tb.dsd(values, layout, b, t), ref.dsd(d64(values), lay64, d64(b), t))
        a = rnd(p, n)
        return rel_error(tb.dds(a, values, layout, t), ref.dds(d64(a), d64(values), lay64, t))
    if op.startswith("conv_"):
        c = k = max(2 * blk, 32)
        # < 1024 output pixels: the conv prunes keep one config, so correctness adds few compiles.
        nb, hw = (2, 8) if smoke else (2, 16)
        layout = _layout((9 * k, c), blk, 0.3, device, seed)
        lay64 = layout.to("cpu")
        values = rnd(*layout.values_shape())
        x = rnd(nb, c, hw, hw).contiguous(memory_format=torch.channels_last)
        dy = rnd(nb, k, hw, hw).contiguous(memory_format=torch.channels_last)
        args = ((3, 3), (1, 1), (1, 1), (1, 1))
        if op == "conv_fwd":
            return rel_error(
                tb.conv2d_forward(x, values, layout, *args), ref.conv2d_forward(d64(x), d64(values), lay64, *args)
            )
        if op == "conv_dx":
            got = tb.conv2d_input_grad(dy, values, layout, tuple(x.shape), *args)
            return rel_error(got, ref.conv2d_input_grad(d64(dy), d64(values), lay64, tuple(x.shape), *args))
        got = tb.conv2d_weight_grad(x, dy, layout, *args)
        return rel_error(got, ref.conv2d_weight_grad(d64(x), d64(dy), lay64, *args))
    return _check_layer(case, device, smoke)


def _check_layer(case: dict, device: torch.device, smoke: bool) -> float:
    """Forward + input and weight gradients of a sparse layer vs its float64 dense twin (max error)."""
    from sparsekernels import SparseConv2d, SparseLinear

    dtype, blk = DTYPES[case["dtype"]], case["block"]
    torch.manual_seed(1)
    if case["op"] == "linear_layer":
        dense = torch.nn.Linear(4 * blk, 2 * blk)
        layer = SparseLinear.from_dense(dense, density=0.3, block_size=blk)
        x = torch.randn(16 if smoke else 256, 4 * blk)
    else:
        dense = torch.nn.Conv2d(2 * blk, 2 * blk, 3, padding=1)
        layer = SparseConv2d.from_dense(dense, density=0.3, block_size=blk)
        x = torch.randn(2, 2 * blk, 8, 8).contiguous(memory_format=torch.channels_last)
    layer.backend = "triton"
    twin = layer.to_dense().double()
    layer = layer.to(device=device, dtype=dtype)
    xs = x.to(device=device, dtype=dtype).requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    y, y64 = layer(xs), twin(x64)
    g = torch.randn_like(y64)
    y.backward(g.to(device=device, dtype=dtype))
    y64.backward(g)
    errs = [rel_error(y, y64), rel_error(xs.grad, x64.grad)]
    # The sparse layer's weight gradient lives on its values: the twin's dense one at the active blocks.
    want = layer.layout.to("cpu").dense_to_values(_as_matrix(twin.weight.grad, case["op"]))
    errs.append(rel_error(layer.weight_values.grad, want))
    return max(errs)


def _as_matrix(w: torch.Tensor, op: str) -> torch.Tensor:
    if op == "linear_layer":
        return w
    from sparsekernels.conv_layout import conv_weight_to_matrix

    return conv_weight_to_matrix(w)


def section_correctness(proof: Proof) -> dict:
    from sparsekernels.ops._alloc import set_poison_outputs

    set_poison_outputs(True)
    rows = []
    try:
        for case in _correctness_cases(proof.smoke):
            if proof.left() < 5:
                rows.append({**case, "status": "skipped (budget)"})
                continue
            t0 = time.perf_counter()
            try:
                err = _check_op(case, proof.device, proof.smoke)
                # Layers: the worst of three products, the gradients reducing over the batch.
                tol = RTOL[DTYPES[case["dtype"]]] * (2 if case["op"].endswith("layer") else 1)
                rows.append({**case, "rel_error": err, "tol": tol, "passed": bool(err <= tol)})
            except Exception as exc:  # noqa: BLE001
                rows.append({**case, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
            rows[-1]["seconds"] = round(time.perf_counter() - t0, 2)
    finally:
        set_poison_outputs(False)
    done = [r for r in rows if "passed" in r]
    return {"cases": rows, "passed": sum(r["passed"] for r in done), "total": len(rows)}


def _bsr_matmul(values, layout, b):
    """torch's BSR times dense (the library baseline), or None if torch cannot here."""
    dense = layout.values_to_dense(values)
    bsr = dense.to_sparse_bsr(layout.block_size)
    return lambda: bsr @ b


def section_matmul(proof: Proof) -> dict:
    from sparsekernels.ops import triton_backend as tb

    dev = proof.device
    n = 128 if proof.smoke else 4096
    blocks = (32,) if proof.smoke else (32, 64)
    densities = (0.1,) if proof.smoke else (0.05, 0.1, 0.2, 0.5)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float16
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    dense_ms = bench_ms(lambda: a @ b, proof)
    rows = []
    for block in blocks:
        for density in densities:
            layout = _layout((n, n), block, density, dev, 0)
            values = torch.randn(*layout.values_shape(), device=dev, dtype=dt)
            fns = {
                "sdd": partial(tb.sdd, a, b, layout),
                "dsd": partial(tb.dsd, values, layout, b),
                "dds": partial(tb.dds, a, values, layout),
            }
            for op, fn in fns.items():
                if proof.left() < 20:
                    rows.append({"op": op, "block": block, "density": density, "status": "skipped (budget)"})
                    continue
                row = {"op": op, "block": block, "density": density}
                try:
                    ms = bench_ms(fn, proof)
                    row.update(ms=ms, dense_ms=dense_ms, speedup=dense_ms / ms)
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                tail = "" if density == 0.1 else f"-d{density:g}"
                row.update(proof.predicted(f"{op}-bf16-b{block}-4096{tail}"))
                rows.append(row)
            if proof.left() > 20:
                try:
                    bsr_ms = bench_ms(_bsr_matmul(values, layout, b), proof)
                    rows.append({"op": "torch_bsr@dense", "block": block, "density": density, "ms": bsr_ms,
                                 "dense_ms": dense_ms, "speedup": dense_ms / bsr_ms})  # fmt: skip
                except Exception as exc:  # noqa: BLE001
                    rows.append({"op": "torch_bsr@dense", "block": block, "density": density,
                                 "error": f"{type(exc).__name__}: {exc}"[:300]})  # fmt: skip
    return {"n": n, "dtype": str(dt), "dense_ms": dense_ms, "rows": rows}


# ResNet-18 CIFAR 3x3 layers at batch 256: name -> (C, H, K, stride); count = layers of that shape.
R18_CONVS = {
    "r18-64x32": (64, 32, 64, 1, 4),
    "r18-64to128s2": (64, 32, 128, 2, 1),
    "r18-128x16": (128, 16, 128, 1, 3),
    "r18-128to256s2": (128, 16, 256, 2, 1),
    "r18-256x8": (256, 8, 256, 1, 3),
    "r18-256to512s2": (256, 8, 512, 2, 1),
    "r18-512x4": (512, 4, 512, 1, 3),
}


def section_conv(proof: Proof) -> dict:
    import torch.nn.functional as F

    from sparsekernels.ops import triton_backend as tb

    dev = proof.device
    batch = 2 if proof.smoke else 256
    blocks = (16,) if proof.smoke else (32, 64)
    shapes = dict(list(R18_CONVS.items())[:2]) if proof.smoke else R18_CONVS
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float16
    rows = []
    totals = {b: {"sparse_ms": 0.0, "dense_ms": 0.0, "complete": True} for b in blocks}
    for name, (c, hw, k, stride, count) in shapes.items():
        if proof.smoke:
            c, k, hw = min(c, 32), min(k, 32), min(hw, 8)
        x = torch.randn(batch, c, hw, hw, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
        w = torch.randn(k, c, 3, 3, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, w, stride=stride, padding=1)
        dy = torch.randn_like(y)
        dense = {
            "conv_fwd": bench_ms(partial(F.conv2d, x, w, stride=stride, padding=1), proof),
            "conv_dx": bench_ms(partial(torch.nn.grad.conv2d_input, x.shape, w, dy, stride=stride, padding=1), proof),
            "conv_dw": bench_ms(partial(torch.nn.grad.conv2d_weight, x, w.shape, dy, stride=stride, padding=1), proof),
        }
        args = ((3, 3), (stride, stride), (1, 1), (1, 1))
        for block in blocks:
            layout = _layout((9 * k, c), block, 0.1, dev, 0)
            values = torch.randn(*layout.values_shape(), device=dev, dtype=dt)
            fns = {
                "conv_fwd": partial(tb.conv2d_forward, x, values, layout, *args),
                "conv_dx": partial(tb.conv2d_input_grad, dy, values, layout, tuple(x.shape), *args),
                "conv_dw": partial(tb.conv2d_weight_grad, x, dy, layout, *args),
            }
            for op, fn in fns.items():
                row = {"layer": name, "count": count, "op": op, "block": block, "nnz": layout.nnz}
                if proof.left() < 15:
                    row["status"] = "skipped (budget)"
                    totals[block]["complete"] = False
                    rows.append(row)
                    continue
                try:
                    ms = bench_ms(fn, proof)
                    row.update(ms=ms, cudnn_ms=dense[op], speedup=dense[op] / ms)
                    totals[block]["sparse_ms"] += count * ms
                    totals[block]["dense_ms"] += count * dense[op]
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    totals[block]["complete"] = False
                row.update(proof.predicted(f"{op}-bf16-b{block}-{name}"))
                rows.append(row)
    for block, t in totals.items():
        t["speedup"] = t["dense_ms"] / t["sparse_ms"] if t["sparse_ms"] else None
        model = next((m for m in (proof.model or {}).get("conv_totals", []) if m["block"] == block), None)
        if model:
            t["model_speedup"] = model["predicted_speedup"]
    return {"batch": batch, "dtype": str(dt), "rows": rows, "fwd_dx_dw_totals": totals}


def _sparse_resnet18(proof: Proof, sparse: bool):
    import sparsekernels
    from sparsekernels.models import build_model

    width = 0.25 if proof.smoke else 1.0
    model = build_model("resnet18", num_classes=10, width=width)
    if sparse:
        sparsekernels.sparsify(model, density=0.1, block_size=16 if proof.smoke else 32, backend="triton")
    return model.to(proof.device, memory_format=torch.channels_last)


def section_layout(proof: Proof) -> dict:
    from bench_layout import check_no_sync, time_layer

    from sparsekernels.nn._block_sparse import BlockSparseWeight

    model = _sparse_resnet18(proof, sparse=True)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BlockSparseWeight)]
    gen = torch.Generator(device=proof.device).manual_seed(0)
    rows = []
    for name, layer in layers:
        seconds = time_layer(layer, 0.3, gen, proof.device, 3 if proof.smoke else 10)
        rows.append({"layer": name, "nnz": layer.nnz, "median_ms": seconds * 1e3})
    sync = check_no_sync([m for _, m in layers], 0.3, gen) if proof.device.type == "cuda" else "n/a (CPU)"
    return {"layers": rows, "total_ms": sum(r["median_ms"] for r in rows), "sync_check": sync}


def _step_fn(model, proof: Proof, batch: int):
    dev = proof.device
    hw = 8 if proof.smoke else 32
    x = torch.randn(batch, 3, hw, hw, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    amp = torch.bfloat16 if dev.type == "cuda" else torch.float16
    enabled = dev.type == "cuda"

    def step():
        with torch.autocast(dev.type, dtype=amp, enabled=enabled):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss

    return step, opt


def _median_step_ms(step, proof: Proof, n: int) -> float:
    step()
    samples = []
    for _ in range(n):
        if proof.device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            torch.cuda.synchronize()
            samples.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def section_train(proof: Proof) -> dict:
    batch = 2 if proof.smoke else 256
    n = 1 if proof.smoke else 20
    amp = "bf16" if proof.device.type == "cuda" else "none (CPU smoke)"
    out = {"batch": batch, "model": "resnet18", "amp": amp, "channels_last": True, "steps_timed": n}
    for label, sparse in (("dense", False), ("sparse_d0.1_b32", True)):
        if proof.left() < 20:
            out[label] = "skipped (budget)"
            continue
        model = _sparse_resnet18(proof, sparse).train()
        step, _ = _step_fn(model, proof, batch)
        out[f"{label}_median_ms"] = _median_step_ms(step, proof, n)
        del model, step
    if isinstance(out.get("dense_median_ms"), float) and isinstance(out.get("sparse_d0.1_b32_median_ms"), float):
        out["speedup"] = out["dense_median_ms"] / out["sparse_d0.1_b32_median_ms"]
    return out


def section_graph(proof: Proof) -> dict:
    """Capture forward + backward + SGD step + a topology update of every sparse layer."""
    from bench_layout import update

    from sparsekernels.nn._block_sparse import BlockSparseWeight

    if proof.device.type != "cuda":
        return {"captured": None, "note": "CUDA graphs need a GPU: not attempted on the CPU"}
    batch = 256
    model = _sparse_resnet18(proof, sparse=True).train()
    step, _ = _step_fn(model, proof, batch)
    layers = [m for m in model.modules() if isinstance(m, BlockSparseWeight)]
    gen = torch.Generator(device=proof.device).manual_seed(0)

    def step_with_update():
        loss = step()
        for layer in layers:
            update(layer, 0.3, gen)
        return loss

    result: dict = {}
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs requires
            step_with_update()
    torch.cuda.current_stream().wait_stream(side)
    for label, fn in (("step", step), ("step_with_topology_update", step_with_update)):
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            result[label] = {"captured": True}
        except Exception as exc:  # noqa: BLE001 - the answer may be "no": record why
            result[label] = {"captured": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
            torch.cuda.synchronize()
    return result


def _proof_launchers(proof: Proof) -> list:
    """Closures calling every launcher the later sections call, at their shapes (autotune keys)."""
    from sparsekernels.ops import triton_backend as tb

    dev, calls = proof.device, []
    for case in _correctness_cases(proof.smoke):
        calls.append(partial(_check_op, case, dev, proof.smoke))
    n = 128 if proof.smoke else 4096
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float16
    a = torch.randn(n, n, device=dev, dtype=dt)
    for block in (32,) if proof.smoke else (32, 64):
        layout = _layout((n, n), block, 0.1, dev, 0)
        values = torch.randn(*layout.values_shape(), device=dev, dtype=dt)
        calls += [partial(tb.sdd, a, a, layout), partial(tb.dsd, values, layout, a), partial(tb.dds, a, values, layout)]
    batch = 2 if proof.smoke else 256
    for c, hw, k, stride, _ in list(R18_CONVS.values())[: 2 if proof.smoke else None]:
        if proof.smoke:
            c, k, hw = min(c, 32), min(k, 32), min(hw, 8)
        x = torch.randn(batch, c, hw, hw, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
        ho = (hw - 1) // stride + 1
        dy = torch.randn(batch, k, ho, ho, device=dev, dtype=dt).contiguous(memory_format=torch.channels_last)
        args = ((3, 3), (stride, stride), (1, 1), (1, 1))
        for block in (16,) if proof.smoke else (32, 64):
            layout = _layout((9 * k, c), block, 0.1, dev, 0)
            values = torch.randn(*layout.values_shape(), device=dev, dtype=dt)
            calls += [
                partial(tb.conv2d_forward, x, values, layout, *args),
                partial(tb.conv2d_input_grad, dy, values, layout, tuple(x.shape), *args),
                partial(tb.conv2d_weight_grad, x, dy, layout, *args),
            ]
    return calls


def section_compile(proof: Proof) -> dict:
    """Compile every kernel x kept config the proof will autotune, in parallel threads up front
    (triton's AsyncCompileMode), so the sections find them in the kernels' caches. On the CPU
    smoke the launches are only captured and counted (the interpreter compiles nothing)."""
    from concurrent.futures import ThreadPoolExecutor

    from sparsekernels.ops import _aot

    launches = []
    for call in _proof_launchers(proof):
        try:
            launches += _aot.capture_launches(call)
        except Exception as exc:  # noqa: BLE001 - a launcher the sections will report on
            print(f"  capture: {type(exc).__name__}: {exc}", flush=True)
    jobs = [(fn, launch[2], kw) for launch in launches for fn, kw, _c, _n in _aot.kept_configs(launch)]
    out = {"launches": len(launches), "kernel_configs": len(jobs)}
    if proof.device.type != "cuda":
        out["note"] = "CPU smoke: launches captured, nothing compiled (interpreter)"
        return out
    import triton

    workers = proof.compile_threads or 0
    if workers <= 0:
        out["note"] = "parallel compile off (--compile-threads 0): sections compile as they autotune"
        return out
    t0 = time.perf_counter()
    with triton.AsyncCompileMode(ThreadPoolExecutor(workers), ignore_errors=True):
        for fn, args, kw in jobs:
            try:
                fn.warmup(*args, grid=(1,), **kw)
            except Exception as exc:  # noqa: BLE001
                out.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}"[:300])
    out.update(threads=workers, compile_s=round(time.perf_counter() - t0, 1))
    return out


def _fast_autotune_benchmarks() -> None:
    """Autotuning times each kept config with do_bench's defaults (25 ms warm-up, 100 ms of
    repeats); 5/20 ms ranks configs as well at these sizes and saves most of a minute."""
    import triton
    from triton.runtime import driver

    drv = driver.active
    drv.get_benchmarker = lambda: partial(triton.testing.do_bench, warmup=5, rep=20)


SECTIONS = [
    ("compile", section_compile, 30),
    ("ceilings", section_ceilings, 10),
    ("correctness", section_correctness, 30),
    ("matmul", section_matmul, 40),
    ("conv", section_conv, 40),
    ("layout", section_layout, 15),
    ("train", section_train, 45),
    ("graph", section_graph, 30),
]


# --------------------------------------------------------------------------- report


def _fmt(v, nd=3) -> str:
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return "" if v is None else str(v)


def markdown(record: dict) -> str:
    meta = record.get("meta", {})
    lines = [
        f"# GPU proof: {meta.get('device', '?')} ({meta.get('date', '')})",
        "",
        "Measured figures; `model_*` columns are the MODEL's predictions (benchmarks/roofline.py), not measurements.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
        f"; budget {record.get('budget_s')} s, elapsed {record.get('elapsed_s')} s"
        + (" (SMOKE: CPU interpreter, tiny sizes)" if record.get("smoke") else ""),
        "",
        "| section | status | seconds | note |",
        "|---|---|---|---|",
    ]  # fmt: skip
    for name, sec in record["sections"].items():
        note = sec.get("error") or sec.get("reason") or ""
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', '')} | {note[:200]} |")
    for name, sec in record["sections"].items():
        res = sec.get("results")
        if not res:
            continue
        lines += ["", f"## {name}", ""]
        table = res.get("rows") or res.get("cases") or res.get("layers")
        if table:
            cols = list(dict.fromkeys(k for r in table for k in r))
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in table]
        rest = {k: v for k, v in res.items() if k not in ("rows", "cases", "layers")}
        if rest:
            lines.append("")
            lines.append("`" + json.dumps(rest, default=str)[:2000] + "`")
    return "\n".join(lines) + "\n"


def summary_lines(record: dict) -> list[str]:
    out = []
    secs = record["sections"]
    for name, sec in secs.items():
        out.append(
            f"{name:<12} {sec['status']:<8} {sec.get('seconds', ''):>6} s  "
            f"{sec.get('error', sec.get('reason', ''))[:100]}"
        )
    res = secs.get("correctness", {}).get("results")
    if res:
        out.append(f"correctness: {res['passed']}/{res['total']} passed")
    res = secs.get("matmul", {}).get("results")
    if res:
        for r in res["rows"]:
            if "speedup" in r and r["density"] == 0.1:
                out.append(f"  {r['op']:<16} b{r['block']} d0.1: {r['ms']:.3f} ms, {r['speedup']:.2f}x dense"
                           f" (model {r.get('model_speedup')})")  # fmt: skip
    res = secs.get("conv", {}).get("results")
    if res:
        for b, t in res["fwd_dx_dw_totals"].items():
            out.append(f"  ResNet-18 3x3 fwd+dx+dW b{b}: {_fmt(t['speedup'])}x cuDNN (model {t.get('model_speedup')})")
    res = secs.get("train", {}).get("results")
    if res:
        out.append(
            f"  train step: dense {_fmt(res.get('dense_median_ms'))} ms, "
            f"sparse {_fmt(res.get('sparse_d0.1_b32_median_ms'))} ms, speedup {_fmt(res.get('speedup'))}"
        )
    res = secs.get("graph", {}).get("results")
    if res:
        out.append(f"  graph capture: {json.dumps(res)[:300]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny sizes (CI)")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default 450 on GPU, 600 smoke)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/cuda-<gpu>-<date>)")
    parser.add_argument("--only", nargs="+", choices=[s[0] for s in SECTIONS], default=None)
    parser.add_argument("--compile-threads", type=int, default=os.cpu_count() or 4, help="0: no up-front compile")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke on a CPU")
    else:
        device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 checks vs float64
    from _common import device_slug, environment

    date = datetime.now(timezone.utc).strftime("%Y%m%d")
    out = Path(args.out) if args.out else HERE / "results" / f"{device_slug(device)}-{date}"
    budget = args.budget or (600.0 if args.smoke else 450.0)
    proof = Proof(out, budget, args.smoke, device)
    proof.compile_threads = args.compile_threads
    env = environment(device)
    import numpy
    import triton

    env["versions"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "numpy": numpy.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["sms"] = props.multi_processor_count
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    proof.record["meta"] = env
    proof.record["budget_s"] = budget
    proof.record["model_available"] = proof.model is not None
    if device.type == "cuda":
        _fast_autotune_benchmarks()
    proof.write()
    for name, fn, needs in SECTIONS:
        if args.only and name not in args.only:
            continue
        proof.run(name, fn, needs)
    proof.write()
    print(
        f"\n=== GPU proof summary ({'SMOKE, CPU' if args.smoke else env['device']}), {proof.elapsed():.0f} s -> {out}"
    )
    for line in summary_lines(proof.record):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

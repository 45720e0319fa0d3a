"""Fused BatchNorm + ReLU on the CPU: the layers alone and the ResNet training step, on and off.

Two measurements, one thread each (the science runs' setting), fp32, channels-last:

* ``layer``: training-mode ``relu(bn(x))`` and ``relu(bn(x) + residual)`` forward + backward at
  the three stage shapes of ResNet-20 width 2 at batch 128 (32 channels at 32x32, 64 at 16x16,
  128 at 8x8), ATen's modules against :func:`sparsekernels.nn.batch_norm_relu`.
* ``step``: one training step (forward, backward, SGD Nesterov momentum 0.9) of ResNet-20
  width 2 at batch 128, dense and sparse (``sparsify``: ERK density 0.1, block 16, native
  backend: the conv comparison's network), with ``fused_bn_relu`` off and on.

Cases are timed in rounds, alternating off/on inside each round, so each ratio comes from the
same minutes; medians over rounds are reported with the highest 1-minute load average seen
(``/proc/loadavg``) beside them. Results: ``bn_relu.{json,md}`` in the results folder.

    python benchmarks/bench_bn_relu.py                 # 5 rounds
    python benchmarks/bench_bn_relu.py --smoke --out /tmp/x   # tiny shapes, one round (a test)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sparsekernels.models import resnet20  # noqa: E402
from sparsekernels.nn import batch_norm_relu, sparsify  # noqa: E402
from sparsekernels.ops.batchnorm import fused_batch_norm_available  # noqa: E402


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def layer_cases(batch: int, width: float) -> list[tuple[str, tuple[int, ...], bool]]:
    shapes = [(round(16 * width * 2**i), 32 // 2**i) for i in range(3)]
    return [
        (f"C{c} {hw}x{hw}{' +res' if res else ''}", (batch, c, hw, hw), res)
        for c, hw in shapes
        for res in (False, True)
    ]


def time_layer(shape: tuple[int, ...], residual: bool, fused: bool, repeats: int) -> float:
    """ms of forward + backward of relu(bn(x) [+ r]) (fresh module, training mode)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    r = (
        torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
        if residual
        else None
    )
    grad = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    bn = nn.BatchNorm2d(shape[1])

    def step():
        if fused:
            y = batch_norm_relu(bn, x, r)
        else:
            y = bn(x)
            y = torch.relu(y + r if residual else y)
        y.backward(grad)

    step()  # warm-up: allocator, first-touch pages
    return median_ms(step, repeats)


def build_step(sparse: bool, batch: int, width: float, image: int):
    torch.manual_seed(0)
    model = resnet20(width=width)
    if sparse:
        sparsify(model, density=0.1, block_size=16, distribution="erk", backend="native")
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, image, image).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()

    return model, step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--layer-repeats", type=int, default=5, help="timed calls per layer case per round")
    p.add_argument("--step-repeats", type=int, default=3, help="timed steps per step case per round")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one round (a functional test, no figures)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-amd-epyc")
    args = p.parse_args(argv)
    if not fused_batch_norm_available():
        print("the native extension has no fused BatchNorm (build it: python setup.py build_ext --inplace)")
        return 1
    torch.set_num_threads(1)
    batch, width, image = (8, 0.5, 16) if args.smoke else (128, 2.0, 32)
    rounds = 1 if args.smoke else args.rounds

    layers = layer_cases(batch, width)
    steps = {name: build_step(name == "sparse", batch, width, image) for name in ("dense", "sparse")}
    samples: dict[tuple[str, str, bool], list[float]] = {}
    loads: list[float] = []
    for r in range(rounds):
        loads.append(load1())
        for name, shape, residual in layers:
            for fused in (r % 2 == 1, r % 2 == 0):  # alternate which goes first
                samples.setdefault(("layer", name, fused), []).append(
                    time_layer(shape, residual, fused, args.layer_repeats)
                )
        for name, (model, step) in steps.items():
            for fused in (r % 2 == 1, r % 2 == 0):
                model.set_fused_bn_relu(fused)
                step()  # one untimed step after the switch
                samples.setdefault(("step", name, fused), []).append(median_ms(step, args.step_repeats))
        print(f"round {r + 1}/{rounds} done, load {loads[-1]:.2f}", flush=True)

    rows = []
    for kind, name in dict.fromkeys((k, n) for k, n, _ in samples):
        aten, fused = (statistics.median(samples[(kind, name, f)]) for f in (False, True))
        rows.append({"kind": kind, "case": name, "aten_ms": aten, "fused_ms": fused, "speedup": aten / fused})
    step_ms = {
        (r["case"], f): r[f"{'fused' if f else 'aten'}_ms"] for r in rows if r["kind"] == "step" for f in (False, True)
    }
    result = {
        "rounds": rounds,
        "max_load1": max(loads),
        "threads": 1,
        "smoke": args.smoke,
        "batch": batch,
        "width": width,
        "rows": rows,
        "sparse_vs_dense": {
            "aten": step_ms[("dense", False)] / step_ms[("sparse", False)],
            "fused": step_ms[("dense", True)] / step_ms[("sparse", True)],
        },
    }
    lines = [
        "# Fused BatchNorm + ReLU on the CPU (`benchmarks/bench_bn_relu.py`)",
        "",
        f"One thread, fp32, channels-last, batch {batch}; median of {rounds} rounds (off/on alternating inside",
        f"each round); highest 1-minute load seen: {max(loads):.2f} on the shared 2-core AMD EPYC.",
        "layer: training-mode forward + backward of `relu(bn(x) [+ residual])` at the stage shapes of ResNet-20",
        f"width {width:g}. step: a ResNet-20 width {width:g} training step (SGD Nesterov), dense and sparse (ERK 0.1,",
        "block 16, native backend). aten: `nn.BatchNorm2d` + add + ReLU; fused: `fused_bn_relu=True`.",
        "",
        "| kind | case | ATen ms | fused ms | speed-up |",
        "|---|---|---|---|---|",
        *(
            f"| {r['kind']} | {r['case']} | {r['aten_ms']:.2f} | {r['fused_ms']:.2f} | {r['speedup']:.2f}× |"
            for r in rows
        ),
        "",
        f"Sparse vs dense step: {result['sparse_vs_dense']['aten']:.2f}× with ATen's BatchNorm + ReLU, "
        f"{result['sparse_vs_dense']['fused']:.2f}× with both fused.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bn_relu.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "bn_relu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

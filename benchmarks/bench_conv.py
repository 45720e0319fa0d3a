"""Block-sparse convolution per layer: forward, input gradient and weight gradient against dense.

For every convolution of a CIFAR ResNet-18 (batch 256, 32x32 input; the 3x3 convs of each
stage and the 1x1 downsample convs) and of an ImageNet ResNet-50 (batch 64, 224x224 input;
the stem, whose 3 input channels no block size divides, is left out), at block densities
0.05/0.1/0.2/0.5 and block sizes 16/32/64, this times the three pieces of a training step of
the sparse convolution and of the dense one on the same data:

* GPU: Triton kernels against cuDNN (``F.conv2d`` and ``torch.nn.grad.conv2d_input`` /
  ``conv2d_weight``, channels-last, same dtype, ``cudnn.benchmark = True``), with
  ``triton.testing.do_bench``.
* CPU: the ``reference`` backend and, when built, the ``native`` one, against the dense
  torch convolution, with ``torch.utils.benchmark``. The reduced default runs CIFAR-sized
  layers at batch 16 with 64-256 channels, fp32, block 32, densities 0.1 and 0.3 (Triton's
  interpreter is not timed).

Per case: time of each piece and their sum, speedup over dense, and efficiency = speedup /
(1/density) (1.0: the sparse layer is exactly ``1/density`` times faster). Results go to
``benchmarks/results/<device>/conv.{json,md,png}``.

    python benchmarks/bench_conv.py                          # the full sweep on CUDA, reduced on CPU
    python benchmarks/bench_conv.py --quick                  # a tiny smoke run
    python benchmarks/bench_conv.py --models resnet18 --densities 0.1 --blocks 32 --dtype bf16
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from _common import environment, plot_lines, results_dir, time_ms, write_json, write_table

from sparsekernels.layout import BlockLayout
from sparsekernels.ops import backends

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of a network: x ``[batch, in_channels, size, size]``, square kernel."""

    model: str
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int
    padding: int

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def dense_gflop(self) -> float:
        """Forward multiply-adds x 2 of the dense layer, in GFLOP."""
        return 2 * self.batch * self.out_size**2 * self.out_channels * self.in_channels * self.kernel**2 / 1e9


@dataclass(frozen=True)
class Setting:
    """How the sparse layer is run: block density, square block size, dtype, backend."""

    density: float
    block: int
    dtype: str
    backend: str


def resnet18_cifar(batch: int = 256, widths=(64, 128, 256, 512), size: int = 32) -> list[ConvLayer]:
    """The distinct 3x3 convs of each stage and the 1x1 downsample convs of a CIFAR ResNet-18."""
    layers = []
    for i, c in enumerate(widths):
        s = size >> i
        if i == 0:
            layers.append(ConvLayer("resnet18", f"s{i + 1}.conv3x3", batch, c, c, s, 3, 1, 1))
            continue
        prev = widths[i - 1]
        layers += [
            ConvLayer("resnet18", f"s{i + 1}.conv3x3.stride2", batch, prev, c, 2 * s, 3, 2, 1),
            ConvLayer("resnet18", f"s{i + 1}.conv3x3", batch, c, c, s, 3, 1, 1),
            ConvLayer("resnet18", f"s{i + 1}.downsample1x1", batch, prev, c, 2 * s, 1, 2, 0),
        ]
    return layers


def resnet50_imagenet(batch: int = 64) -> list[ConvLayer]:
    """The distinct convs of an ImageNet ResNet-50 (torchvision v1.5: stride on the 3x3)."""
    layers = []
    in_c, size = 64, 56
    for i, (mid, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        out_c, stride = 4 * mid, 1 if i == 0 else 2
        s = size // stride
        st = f"s{i + 1}"
        layers += [
            ConvLayer("resnet50", f"{st}.b1.conv1x1a", batch, in_c, mid, size, 1, 1, 0),
            ConvLayer("resnet50", f"{st}.b1.conv3x3", batch, mid, mid, size, 3, stride, 1),
            ConvLayer("resnet50", f"{st}.conv1x1b", batch, mid, out_c, s, 1, 1, 0),
            ConvLayer("resnet50", f"{st}.downsample1x1", batch, in_c, out_c, size, 1, stride, 0),
        ]
        if blocks > 1:
            layers += [
                ConvLayer("resnet50", f"{st}.conv1x1a", batch, out_c, mid, s, 1, 1, 0),
                ConvLayer("resnet50", f"{st}.conv3x3", batch, mid, mid, s, 3, 1, 1),
            ]
        in_c, size = out_c, s
    return layers


def cpu_layers(batch: int = 16) -> list[ConvLayer]:
    """The reduced CPU default: CIFAR ResNet-18-shaped layers with 64-256 channels."""
    return [
        ConvLayer("resnet18-cpu", "s1.conv3x3", batch, 64, 64, 32, 3, 1, 1),
        ConvLayer("resnet18-cpu", "s2.conv3x3.stride2", batch, 64, 128, 32, 3, 2, 1),
        ConvLayer("resnet18-cpu", "s2.conv3x3", batch, 128, 128, 16, 3, 1, 1),
        ConvLayer("resnet18-cpu", "s2.downsample1x1", batch, 64, 128, 32, 1, 2, 0),
        ConvLayer("resnet18-cpu", "s3.conv3x3", batch, 256, 256, 8, 3, 1, 1),
    ]


def quick_layers() -> list[ConvLayer]:
    return [ConvLayer("quick", "conv3x3", 4, 64, 64, 16, 3, 1, 1)]


# ------------------------------------------------------------------------------ timing
def dense_pieces(layer: ConvLayer, x, weight, dy) -> dict[str, Callable[[], object]]:
    st, pd = layer.stride, layer.padding
    return {
        "fwd": lambda: F.conv2d(x, weight, None, st, pd),
        "dx": lambda: torch.nn.grad.conv2d_input(x.shape, weight, dy, st, pd),
        "dw": lambda: torch.nn.grad.conv2d_weight(x, weight.shape, dy, st, pd),
    }


def sparse_pieces(layer: ConvLayer, backend: str, x, values, layout, dy) -> dict[str, Callable[[], object]]:
    impl = backends.module(backends.resolve(backend, x.device))
    args = ((layer.kernel,) * 2, (layer.stride,) * 2, (layer.padding,) * 2, (1, 1))
    return {
        "fwd": lambda: impl.conv2d_forward(x, values, layout, *args),
        "dx": lambda: impl.conv2d_input_grad(dy, values, layout, tuple(x.shape), *args),
        "dw": lambda: impl.conv2d_weight_grad(x, dy, layout, *args),
    }


def make_inputs(layer: ConvLayer, dtype: torch.dtype, device: torch.device):
    cl = torch.channels_last
    x = torch.randn(layer.batch, layer.in_channels, layer.size, layer.size, device=device, dtype=dtype)
    dy = torch.randn(layer.batch, layer.out_channels, layer.out_size, layer.out_size, device=device, dtype=dtype)
    return x.contiguous(memory_format=cl), dy.contiguous(memory_format=cl)


def run(layers, settings, device, min_run_time: float) -> list[dict]:
    rows = []
    for layer in layers:
        dense_ms: dict[str, dict[str, float]] = {}
        for setting in settings:
            dtype = DTYPES[setting.dtype]
            x, dy = make_inputs(layer, dtype, device)
            if setting.dtype not in dense_ms:
                weight = torch.randn(
                    layer.out_channels, layer.in_channels, layer.kernel, layer.kernel, device=device, dtype=dtype
                ).contiguous(memory_format=torch.channels_last)
                dense = dense_pieces(layer, x, weight, dy)
                dense_ms[setting.dtype] = {k: time_ms(fn, device, min_run_time) for k, fn in dense.items()}
            shape = (layer.kernel**2 * layer.out_channels, layer.in_channels)
            gen = torch.Generator().manual_seed(0)
            layout = BlockLayout.random(shape, setting.block, setting.density, generator=gen).to(device)
            values = torch.randn(layout.nnz, setting.block, setting.block, device=device, dtype=dtype)
            sparse = sparse_pieces(layer, setting.backend, x, values, layout, dy)
            sparse_ms = {k: time_ms(fn, device, min_run_time) for k, fn in sparse.items()}
            d, s = dense_ms[setting.dtype], sparse_ms
            total, dense_total = sum(s.values()), sum(d.values())
            rows.append(
                {
                    **asdict(layer),
                    **asdict(setting),
                    "density_actual": layout.density,
                    **{f"{k}_ms": v for k, v in s.items()},
                    "total_ms": total,
                    **{f"dense_{k}_ms": v for k, v in d.items()},
                    "dense_total_ms": dense_total,
                    **{f"speedup_{k}": d[k] / s[k] for k in s},
                    "speedup": dense_total / total,
                    "efficiency": dense_total / total * layout.density,
                }
            )
            r = rows[-1]
            print(
                f"{layer.model:>12} {layer.name:<22} {setting.backend:>9} b{setting.block:<3} d{setting.density:<5} "
                f"fwd {r['fwd_ms']:8.3f} dx {r['dx_ms']:8.3f} dw {r['dw_ms']:8.3f} ms | dense {dense_total:8.3f} ms "
                f"| x{r['speedup']:.2f} eff {r['efficiency']:.2f}",
                flush=True,
            )
    return rows


def _network_speedup(rows: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Per model: sum of dense time over sum of sparse time across layers, per (block, backend)."""
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        series = {}
        keys = dict.fromkeys((r["block"], r["backend"], r["dtype"]) for r in rows if r["model"] == model)
        for block, backend, dtype in keys:
            key = (model, block, backend, dtype)
            sel = [r for r in rows if (r["model"], r["block"], r["backend"], r["dtype"]) == key]
            densities = sorted({r["density"] for r in sel})
            speedups = [
                sum(r["dense_total_ms"] for r in sel if r["density"] == dd)
                / sum(r["total_ms"] for r in sel if r["density"] == dd)
                for dd in densities
            ]
            series[f"{backend} block {block} {dtype}"] = (densities, speedups)
        all_densities = sorted({r["density"] for r in rows if r["model"] == model})
        series["ideal (1/density)"] = (all_densities, [1 / d for d in all_densities])
        panels[model] = series
    return panels


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=None, help="resnet18 resnet50 (GPU default: both)")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size of every layer")
    parser.add_argument("--densities", type=float, nargs="+", default=None)
    parser.add_argument("--blocks", type=int, nargs="+", default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds per timing")
    parser.add_argument("--quick", action="store_true", help="one small layer, one setting: a smoke run")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device>)")
    parser.add_argument("--note", default="", help="free text stored with the results (conditions, caveats)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True

    if args.quick:
        layers = quick_layers()
        densities, blocks = args.densities or [0.1], args.blocks or [32]
        args.min_run_time = min(args.min_run_time, 0.05)
    elif gpu or args.models:
        models = args.models or ["resnet18", "resnet50"]
        builders = {"resnet18": resnet18_cifar, "resnet50": resnet50_imagenet}
        layers = [layer for m in models for layer in builders[m]()]
        densities, blocks = args.densities or [0.05, 0.1, 0.2, 0.5], args.blocks or [16, 32, 64]
    else:
        layers = cpu_layers()
        densities, blocks = args.densities or [0.1, 0.3], args.blocks or [32]
    if args.batch:
        layers = [ConvLayer(**{**asdict(layer), "batch": args.batch}) for layer in layers]
    dtype = args.dtype or ("bf16" if gpu else "fp32")
    cpu_backends = ["reference"] + (["native"] if backends.native_available() else [])
    names = args.backends or (["triton"] if gpu else cpu_backends)
    settings = [Setting(d, b, dtype, name) for name in names for b in blocks for d in densities]

    rows = run(layers, settings, device, args.min_run_time)

    out = results_dir(device, args.out)
    stem = "conv_quick" if args.quick else "conv"
    columns = [
        "model", "name", "batch", "in_channels", "out_channels", "size", "kernel", "stride", "backend", "block",
        "density", "fwd_ms", "dx_ms", "dw_ms", "total_ms", "dense_total_ms", "speedup_fwd", "speedup_dx",
        "speedup_dw", "speedup", "efficiency",
    ]  # fmt: skip
    table = write_table(out / f"{stem}.md", rows, columns)
    print(table)
    config = {k: v for k, v in vars(args).items()}
    config.update(dtype=dtype, backends=names, densities=densities, blocks=blocks)
    write_json(out / f"{stem}.json", {"benchmark": "conv", **environment(device), "config": config, "rows": rows})
    panels = _network_speedup(rows)
    plot_lines(
        out / f"{stem}.png",
        panels,
        xlabel="block density",
        ylabel="speedup over dense (fwd + dx + dW, all layers)",
        title=f"block-sparse conv, {dtype}, {environment(device)['device']}",
        logx=len(densities) > 1 and math.log10(max(densities) / min(densities)) > 0.5,
    )
    print(f"wrote {out}/{stem}.{{json,md,png}}")
    return rows


if __name__ == "__main__":
    main()

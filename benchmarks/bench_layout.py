"""Topology-update cost: rebuild the layout, remap, set_layout, for every sparse layer of a model.

A dynamic sparse training step that changes the topology must not stall the GPU. For each
sparse layer of a sparsified CIFAR ResNet-18 this times one update as the DST engine does it
(swap a fraction of the active blocks for inactive ones on the device, build the new
``BlockLayout`` with a known ``nnz``, ``remap`` and ``set_layout``) and, on CUDA, runs the
same path under ``torch.cuda.set_sync_debug_mode("error")`` to prove it never synchronises.

    python benchmarks/bench_layout.py [--device cuda] [--density 0.1] [--block-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import environment, results_dir, write_json

import sparsekernels
from sparsekernels import BlockLayout
from sparsekernels.models import build_model
from sparsekernels.nn._block_sparse import BlockSparseWeight


def swap_blocks(layer: BlockSparseWeight, fraction: float, generator: torch.Generator) -> BlockLayout:
    """A new layout with ``int(fraction * nnz)`` active blocks swapped for random inactive ones."""
    mask = layer.to_block_mask().reshape(-1)
    nnz = layer.nnz
    k = min(int(fraction * nnz), mask.numel() - nnz)
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    prune = torch.topk(torch.where(mask, noise, 2.0), k, largest=False).indices
    grow = torch.topk(torch.where(mask, -1.0, noise), k).indices
    new = mask.clone()
    new[prune] = False
    new[grow] = True
    return BlockLayout.from_block_mask(new.reshape(layer.layout.grid), layer.block_size, nnz)


def update(layer: BlockSparseWeight, fraction: float, generator: torch.Generator) -> None:
    layer.set_layout(swap_blocks(layer, fraction, generator))


def time_layer(layer, fraction, generator, device, repeats: int) -> float:
    """Median seconds of one update (CUDA events on GPU, wall clock on CPU)."""
    for _ in range(3):
        update(layer, fraction, generator)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            update(layer, fraction, generator)
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            update(layer, fraction, generator)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def check_no_sync(layers, fraction, generator) -> str:
    """Run one update of every layer with CUDA's sync debug mode set to error."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for layer in layers:
            update(layer, fraction, generator)
    except RuntimeError as err:
        return f"SYNC: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "no host sync"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device>)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = build_model(args.model, num_classes=10, width=args.width).to(device)
    sparsekernels.sparsify(model, density=args.density, block_size=args.block_size)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BlockSparseWeight)]
    generator = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, layer in layers:
        seconds = time_layer(layer, args.fraction, generator, device, args.repeats)
        rows.append({"layer": name, "grid": list(layer.layout.grid), "nnz": layer.nnz, "median_ms": seconds * 1e3})
    sync = check_no_sync([m for _, m in layers], args.fraction, generator) if device.type == "cuda" else "n/a (CPU)"
    total_ms = sum(r["median_ms"] for r in rows)
    print(f"{'layer':<28} {'grid':>10} {'nnz':>6} {'median ms':>10}")
    for r in rows:
        print(f"{r['layer']:<28} {str(tuple(r['grid'])):>10} {r['nnz']:>6} {r['median_ms']:>10.3f}")
    print(f"all {len(rows)} layers: {total_ms:.2f} ms per topology update; host sync check: {sync}")
    record = {
        "benchmark": "layout_rebuild",
        **environment(device),
        "config": vars(args),
        "rows": rows,
        "total_ms": total_ms,
        "sync_check": sync,
    }
    write_json(results_dir(device, args.out) / "layout_rebuild.json", record)
    return record


if __name__ == "__main__":
    main()

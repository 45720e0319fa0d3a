"""pytest-benchmark timings of the convolution pieces at one CPU-sized layer.

    pytest benchmarks/test_bench_conv.py --benchmark-enable [--benchmark-group-by=group]

Times forward, input gradient and weight gradient of a ResNet-18-shaped 3x3 layer (batch 8,
64 channels, 16x16, block 32, density 0.1) for the dense torch convolution and every CPU
backend that is available (Triton's interpreter is not timed). Without
``--benchmark-enable`` (the repo default) each case runs once, as a smoke test.
"""

from __future__ import annotations

import pytest
import torch
from bench_conv import ConvLayer, dense_pieces, make_inputs, sparse_pieces

from sparsekernels import native_available
from sparsekernels.layout import BlockLayout

LAYER = ConvLayer("cpu", "conv3x3", 8, 64, 64, 16, 3, 1, 1)
DENSITY, BLOCK = 0.1, 32
IMPLS = [
    "dense",
    "reference",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="native extension not built")),
]


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    x, dy = make_inputs(LAYER, torch.float32, torch.device("cpu"))
    weight = torch.randn(LAYER.out_channels, LAYER.in_channels, 3, 3).contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    layout = BlockLayout.random((9 * LAYER.out_channels, LAYER.in_channels), BLOCK, DENSITY, generator=gen)
    values = torch.randn(layout.nnz, BLOCK, BLOCK)
    return x, dy, weight, layout, values


@pytest.mark.parametrize("piece", ["fwd", "dx", "dw"])
@pytest.mark.parametrize("impl", IMPLS)
def test_conv_piece(benchmark, problem, impl, piece):
    x, dy, weight, layout, values = problem
    if impl == "dense":
        pieces = dense_pieces(LAYER, x, weight, dy)
    else:
        pieces = sparse_pieces(LAYER, impl, x, values, layout, dy)
    benchmark.group = f"conv3x3 {piece}"
    benchmark.extra_info.update(density=DENSITY, block=BLOCK, batch=LAYER.batch, channels=LAYER.in_channels)
    out = benchmark(pieces[piece])
    assert torch.isfinite(out).all()

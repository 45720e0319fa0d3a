"""pytest-benchmark timings of the block-sparse matmul ops at CPU-sized shapes.

    pytest benchmarks/test_bench_matmul.py --benchmark-enable [--benchmark-group-by=group]

A 1024x1024 weight in 32x32 blocks at density 0.1 and 128 tokens, fp32: ``dds`` (the layer's
forward, ``x @ Wᵀ``), ``dsd`` (``W @ b``) and the sparse linear layer's forward + backward,
for dense ``torch.matmul`` and every CPU backend that is available (Triton's interpreter is
not timed). Without ``--benchmark-enable`` (the repo default) each case runs once, as a
smoke test of the benchmark code.
"""

from __future__ import annotations

import pytest
import torch
from bench_matmul import Case, dense_fn, make_problem, sparse_fn

from sparsekernels import native_available

IMPLS = [
    "dense",
    "reference",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="native extension not built")),
]


@pytest.mark.parametrize("op", ["dds", "dsd", "linear"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matmul_op(benchmark, impl, op):
    case = Case(op, size=1024, p=128, block=32, density=0.1, dtype="fp32")
    problem = make_problem(case, torch.device("cpu"))
    fn = dense_fn(case, problem) if impl == "dense" else sparse_fn(case, impl, problem)
    benchmark.group = f"{op} 1024x1024 p128 b32 d0.1"
    benchmark.extra_info.update(density=problem.layout.density, block=case.block, nnz=problem.layout.nnz)
    out = benchmark(fn)
    for t in out if isinstance(out, tuple) else (out,):
        assert torch.isfinite(t).all()

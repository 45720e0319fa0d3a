"""Every op on every backend for every zero-size dimension: batch, rows, columns, block rows,
block columns, the inner (reduction) dimension and nnz = 0. The exact answer is always an
empty tensor or all zeros of the right shape and dtype; outputs are checked for both, and the
public ops' gradients through autograd too."""

from __future__ import annotations

import pytest
import torch

from sparsekernels import ops
from sparsekernels.layout import BlockLayout
from sparsekernels.ops import backends
from sparsekernels.ops import reference as ref

BS = 16


def _backends():
    out = [pytest.param("reference", id="reference"), pytest.param("triton", id="triton")]
    out.append(
        pytest.param(
            "native", id="native", marks=pytest.mark.skipif(not backends.native_available(), reason="not built")
        )
    )
    return out


BACKENDS = _backends()


def impl(name: str):
    return backends.module(name)


def layout(R: int, C: int, nnz: int, device) -> BlockLayout:
    mask = torch.zeros(R * C, dtype=torch.bool)
    mask[torch.randperm(R * C)[:nnz]] = True
    return BlockLayout.from_block_mask(mask.reshape(R, C).to(device), BS)


def check_zero(out: torch.Tensor, shape, dtype) -> None:
    assert tuple(out.shape) == tuple(shape), f"shape {tuple(out.shape)}, expected {tuple(shape)}"
    assert out.dtype == dtype
    assert bool((out == 0).all()), "a zero-size reduction must give exact zeros (no NaN, no garbage)"


# (R, C, nnz): block rows 0, block columns 0, nnz 0 on a non-empty grid, and a normal grid
GRIDS = [(0, 3, 0), (2, 0, 0), (2, 3, 0), (2, 3, 3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"R{g[0]}C{g[1]}nnz{g[2]}")
def test_matmul_zero_sizes(backend, grid, device):
    L = layout(*grid, device)
    M, N = L.shape
    fn = impl(backend)
    v = torch.randn(L.values_shape(), device=device)
    for P in (0, 5):
        for lead in ((), (0,), (2,)):
            if M * N and P and 0 not in lead and L.nnz:
                continue  # nothing empty: the ordinary tests' business
            b = torch.randn(*lead, N, P, device=device)
            check_zero(fn.dsd(v, L, b), (*lead, M, P), v.dtype)
            bt = torch.randn(*lead, M, P, device=device)
            check_zero(fn.dsd(v, L, bt, True), (*lead, N, P), v.dtype)
            a = torch.randn(*lead, P, M, device=device)
            check_zero(fn.dds(a, v, L), (*lead, P, N), v.dtype)
            at = torch.randn(*lead, P, N, device=device)
            check_zero(fn.dds(at, v, L, True), (*lead, P, M), v.dtype)
    for K in (0, 4):
        if K and L.nnz:
            continue
        check_zero(
            fn.sdd(torch.randn(M, K, device=device), torch.randn(K, N, device=device), L), L.values_shape(), v.dtype
        )


def test_nonempty_results_beside_empty_dims_are_right(device):
    """Empty reductions on a non-empty output give zeros; nnz 0 with a real inner dim too; and
    where the grid is non-empty but the batch is, shapes carry through (checked against the
    float64 reference on the same data)."""
    L = layout(2, 3, 4, device)
    v = torch.randn(L.values_shape(), device=device)
    b = torch.randn(L.shape[1], 7, device=device)
    for name in ("triton", "native") if backends.native_available() else ("triton",):
        got = impl(name).dsd(v, L, b)
        want = ref.dsd(v.double(), L, b.double())
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4)


CONV_CASES = [
    # (N, K, C, H, W, kernel, padding, nnz): batch 0, K 0, C 0, nnz 0, H 0 with padding
    pytest.param(0, 32, 16, 5, 5, 3, 1, 3, id="batch0"),
    pytest.param(2, 0, 16, 5, 5, 3, 1, 0, id="K0"),
    pytest.param(2, 32, 0, 5, 5, 3, 1, 0, id="C0"),
    pytest.param(2, 32, 16, 5, 5, 3, 1, 0, id="nnz0"),
    pytest.param(2, 16, 16, 0, 4, 1, 1, 1, id="H0-padded"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N, K, C, H, W, k, pad, nnz", CONV_CASES)
def test_conv_zero_sizes(backend, N, K, C, H, W, k, pad, nnz, device):
    L = layout(k * k * K // BS, C // BS, nnz, device)
    fn = impl(backend)
    x = torch.randn(N, C, H, W, device=device)
    v = torch.randn(L.values_shape(), device=device)
    geo = ((k, k), (1, 1), (pad, pad), (1, 1))
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    y = fn.conv2d_forward(x, v, L, *geo)
    check_zero(y, (N, K, Ho, Wo), x.dtype)
    dy = torch.randn(N, K, Ho, Wo, device=device)
    check_zero(fn.conv2d_input_grad(dy, v, L, (N, C, H, W), *geo), (N, C, H, W), x.dtype)
    check_zero(fn.conv2d_weight_grad(x, dy, L, *geo), L.values_shape(), x.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_ops_backward_with_zero_sizes(backend, device):
    """Autograd through the custom ops: empty batch and nnz = 0 give zero gradients of the right shapes."""
    for L, P in ((layout(2, 3, 2, device), 0), (layout(2, 3, 0, device), 4)):
        M, N = L.shape
        v = torch.randn(L.values_shape(), device=device, requires_grad=True)
        x = torch.randn(P, N, device=device, requires_grad=True)
        y = ops.dds(x, v, L, True, backend=backend)
        assert y.shape == (P, M)
        y.sum().backward()
        check_zero(v.grad, L.values_shape(), v.dtype)
        check_zero(x.grad, (P, N), x.dtype)
        b = torch.randn(N, P, device=device, requires_grad=True)
        y = ops.dsd(v, L, b, backend=backend)
        y.sum().backward()
        assert b.grad.shape == (N, P)
        a, bb = torch.randn(M, P, device=device), torch.randn(P, N, device=device)
        check_zero(ops.sdd(a, bb, L, backend=backend), L.values_shape(), a.dtype)

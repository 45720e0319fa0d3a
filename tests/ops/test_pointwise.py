"""The fused SReLU and dropout (csrc/pointwise.cpp via sparsekernels.ops.pointwise) against
their ATen expressions and float64 autograd."""

from __future__ import annotations

import pytest
import torch

from sparsekernels.ops import pointwise
from tests.helpers import assert_baseline_and_avx2_agree, assert_close, poison

pytestmark = pytest.mark.skipif(not pointwise.fused_available(), reason="native extension without pointwise ops")
OPS = torch.ops.sparsekernels_native if pointwise.fused_available() else None


def srelu_params(features: int, generator: torch.Generator) -> list[torch.Tensor]:
    """t_left, t_right (= r), a_left, a_right with every piece of SReLU in reach of randn inputs;
    some r exactly 0 (t_r = t_l, and d|r|/dr = 0 there)."""
    t_left = 0.5 * torch.randn(features, generator=generator)
    r = torch.randn(features, generator=generator)
    r[::7] = 0.0
    a_left = torch.rand(features, generator=generator)
    a_right = 2 * torch.rand(features, generator=generator)
    return [t_left, r, a_left, a_right]


def inputs(
    shape: tuple[int, ...], params: list[torch.Tensor], generator: torch.Generator, ties: bool = False
) -> torch.Tensor:
    """randn inputs; with ``ties``, the first rows exactly at t_l and at t_r (float32 values)."""
    x = 1.5 * torch.randn(shape, generator=generator, dtype=params[0].dtype)
    if ties:
        flat = x.view(-1, shape[-1])
        flat[0] = params[0]  # exactly at t_l: the middle piece (x < t_l is false)
        flat[min(1, len(flat) - 1)] = params[0] + params[1].abs()  # exactly at t_r
    return x


@pytest.mark.parametrize("shape", [(7, 300), (3, 5, 64), (1, 1), (130, 4000)])
def test_srelu_forward_is_bitwise_the_aten_expression(shape):
    g = torch.Generator().manual_seed(sum(shape))
    params = srelu_params(shape[-1], g)
    x = inputs(shape, params, g, ties=True)
    out = pointwise.srelu(x, *params)
    assert out.shape == x.shape and torch.equal(out, pointwise.srelu_reference(x, *params))
    assert_close(out, pointwise.srelu_reference(x.double(), *[p.double() for p in params]))


@pytest.mark.parametrize("shape", [(7, 300), (3, 5, 64), (200, 130), (100, 4000)])
def test_srelu_backward_matches_float64_autograd(shape):
    g = torch.Generator().manual_seed(1 + sum(shape))
    params = srelu_params(shape[-1], g)
    x = inputs(shape, params, g)
    grad = torch.randn(shape, generator=g)
    fused = [t.clone().requires_grad_() for t in (x, *params)]
    exact = [t.double().requires_grad_() for t in (x, *params)]
    pointwise.srelu(*fused).backward(grad)
    pointwise.srelu_reference(*exact).backward(grad.double())
    for name, a, e in zip(("x", "t_left", "t_right", "a_left", "a_right"), fused, exact):
        assert a.grad.dtype == torch.float32 and a.grad.shape == a.shape, name
        assert_close(a.grad, e.grad)
    assert (fused[2].grad[::7] == 0).all()  # r = 0: no gradient through |r|


def test_srelu_backward_at_the_thresholds_takes_the_forward_pieces():
    """x exactly at t_l or t_r (in float32) is in the middle piece, as in the ATen expression."""
    g = torch.Generator().manual_seed(2)
    params = srelu_params(96, g)
    x = inputs((8, 96), params, g, ties=True)
    grad = torch.randn(8, 96, generator=g)
    fused = [t.clone().requires_grad_() for t in (x, *params)]
    aten = [t.clone().requires_grad_() for t in (x, *params)]
    pointwise.srelu(*fused).backward(grad)
    pointwise.srelu_reference(*aten).backward(grad)
    assert torch.equal(fused[0].grad[:2], grad[:2])  # slope 1 at both thresholds
    for a, e in zip(fused, aten):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-5)


def test_srelu_ops_write_every_output_element():
    g = torch.Generator().manual_seed(3)
    params = srelu_params(260, g)
    x = inputs((33, 260), params, g)
    grad = torch.randn(33, 260, generator=g)
    out, grad_x, grad_params = poison(torch.empty_like(x)), poison(torch.empty_like(x)), poison(torch.empty(4, 260))
    OPS.srelu_forward(x, *params, out)
    OPS.srelu_backward(grad, x, *params, grad_x, grad_params)
    assert torch.isfinite(out).all() and torch.isfinite(grad_x).all() and torch.isfinite(grad_params).all()


def _fused_results(threads: int) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(4)
    params = srelu_params(4000, g)
    x = inputs((256, 4000), params, g)
    grad = torch.randn(256, 4000, generator=g)
    out, grad_x, grad_params = torch.empty_like(x), torch.empty_like(x), torch.empty(4, 4000)
    OPS.srelu_forward(x, *params, out)
    OPS.srelu_backward(grad, x, *params, grad_x, grad_params)
    dropped = torch.empty_like(x)
    OPS.dropout_apply(x, 12345, 0.3, dropped)
    return [out, grad_x, grad_params, dropped]


def test_results_do_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    try:
        one, two = _fused_results(1), _fused_results(2)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_set_isa_selects_the_pointwise_loops_too():
    """set_isa("baseline") switches the pointwise ops to their portable loops as it does the
    matmul kernels (same bits), and set_isa("auto") back."""
    native = torch.ops.sparsekernels_native
    simd = _fused_results(1)
    try:
        native.set_isa("baseline")
        assert native.pointwise_isa() == "baseline"
        assert all(torch.equal(a, b) for a, b in zip(simd, _fused_results(1)))
    finally:
        native.set_isa("auto")
    assert native.pointwise_isa() == ("baseline" if native.isa() == "baseline" else "avx2")


def test_baseline_and_avx2_copies_agree_bitwise():
    """SPARSEKERNELS_NATIVE_ISA=baseline selects the portable loops: same bits as the AVX2 ones."""
    assert_baseline_and_avx2_agree("tests.ops.test_pointwise:_fused_results")


def test_dropout_keeps_a_fraction_1_minus_p_scaled_and_its_backward_uses_the_same_mask():
    x = (torch.rand(300, 1000) + 0.5).requires_grad_()
    torch.manual_seed(0)
    y = pointwise.dropout(x, 0.3)
    kept = y != 0
    n = kept.numel()
    # Binomial(n, 0.7): 6 standard deviations.
    assert abs(kept.sum().item() - 0.7 * n) < 6 * (n * 0.21) ** 0.5
    assert torch.equal(y[kept], x.detach()[kept] * torch.tensor(1 / 0.7))
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad != 0, kept) and torch.equal(x.grad[kept], torch.full_like(x.grad[kept], 2.0 / 0.7))
    # Reproducible from torch's generator; another draw gives another mask.
    torch.manual_seed(0)
    again = pointwise.dropout(x.detach(), 0.3)
    assert torch.equal(again, y.detach())
    other = pointwise.dropout(x.detach(), 0.3)
    assert not torch.equal(other != 0, kept)
    # Neighbouring elements are not correlated (the hash of consecutive counters).
    flat = kept.flatten().float()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(corr) < 0.02


def test_dropout_edge_values_and_nan():
    x = torch.randn(50, 40)
    assert pointwise.dropout(x, 0.0) is x
    x[0, :] = float("nan")
    y = pointwise.dropout(x, 0.5)
    assert torch.isnan(y[0]).all()  # x * 0 keeps NaN, as x * mask does
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p must be in"):
            pointwise.dropout(x, p)
    assert pointwise.dropout(torch.empty(0, 4), 0.3).shape == (0, 4)


def test_other_dtypes_use_the_aten_expression():
    g = torch.Generator().manual_seed(5)
    params = [p.double() for p in srelu_params(16, g)]
    x = inputs((4, 16), params, g).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: pointwise.srelu(x, *p), (x, *[p.requires_grad_() for p in params]))
    y = pointwise.dropout(torch.ones(64, 64, dtype=torch.float64), 0.5)
    assert y.dtype == torch.float64 and set(y.unique().tolist()) <= {0.0, 2.0}


def test_bad_arguments_name_the_parameter():
    x = torch.randn(4, 16)
    params = srelu_params(16, torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match=r"a_right must have shape \[16\]"):
        pointwise.srelu(x, *params[:3], torch.ones(15))
    with pytest.raises(ValueError, match="x must be float32"):
        OPS.srelu_forward(x.double(), *params, torch.empty(4, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="out must have shape"):
        OPS.srelu_forward(x, *params, torch.empty(4, 15))
    with pytest.raises(ValueError, match="t_left must have shape"):
        OPS.srelu_forward(x, torch.ones(3), *params[1:], torch.empty(4, 16))
    with pytest.raises(ValueError, match="grad_params must have shape"):
        OPS.srelu_backward(x, x, *params, torch.empty_like(x), torch.empty(3, 16))
    with pytest.raises(ValueError, match="out must be contiguous"):
        OPS.dropout_apply(x, 1, 0.3, torch.empty(16, 4).t())
    with pytest.raises(ValueError, match="p must be in"):
        OPS.dropout_apply(x, 1, 1.0, torch.empty_like(x))


def test_fused_ops_can_be_switched_off():
    g = torch.Generator().manual_seed(7)
    params = srelu_params(32, g)
    x = inputs((4, 32), params, g).requires_grad_()
    try:
        pointwise.set_fused_enabled(False)
        assert pointwise.srelu(x, *params).grad_fn.name() != "_SReLUBackward"
        assert pointwise.dropout(x, 0.3).grad_fn.name() != "_DropoutBackward"
    finally:
        pointwise.set_fused_enabled(True)
    assert pointwise.srelu(x, *params).grad_fn.name() == "_SReLUBackward"

"""The fused training-mode BatchNorm + ReLU (csrc/batchnorm.cpp via sparsekernels.ops.batchnorm
and sparsekernels.nn.batch_norm_relu) against float64 autograd and nn.BatchNorm2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekernels.nn import batch_norm_relu
from sparsekernels.ops import batchnorm
from tests.helpers import assert_baseline_and_avx2_agree, assert_close, poison

pytestmark = pytest.mark.skipif(
    not batchnorm.fused_batch_norm_available(), reason="native extension without the fused BatchNorm"
)
OPS = torch.ops.sparsekernels_native if batchnorm.fused_batch_norm_available() else None


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def case(shape: tuple[int, ...], residual: bool, seed: int):
    """x (mean 4, std 3: the shifted statistics must not cancel), weight, bias, residual, grad."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = nhwc(3 * torch.randn(shape, generator=g) + 4)
    w, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    r = nhwc(torch.randn(shape, generator=g)) if residual else None
    grad = nhwc(torch.randn(shape, generator=g))
    return x, w, b, r, grad


SHAPES = [(8, 32, 9, 7), (3, 64, 4, 4), (2, 5, 3, 3), (37, 13), (1100, 16)]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_float64_autograd(shape, residual):
    x, w, b, r, grad = case(shape, residual, seed=sum(shape) + residual)
    assert batchnorm.fused_batch_norm_applies(x, r)
    leaves = [t.clone().requires_grad_() for t in (x, w, b) + ((r,) if residual else ())]
    exact = [t.detach().double().requires_grad_() for t in leaves]
    y, mean, var = batchnorm.batch_norm_relu_train(*leaves[:3], 1e-5, leaves[3] if residual else None)
    y64, mean64, var64 = batchnorm.batch_norm_relu_reference(*exact[:3], 1e-5, exact[3] if residual else None)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) if x.dim() == 4 else y.is_contiguous()
    assert (y == 0).any() and (y > 0).any()  # both sides of the ReLU are exercised
    assert_close(y, y64)
    assert_close(mean, mean64)
    assert_close(var, var64)
    y.backward(grad)
    y64.backward(grad.double())
    for name, a, e in zip(("x", "weight", "bias", "residual"), leaves, exact):
        assert a.grad.dtype == torch.float32 and a.grad.shape == a.shape, name
        assert_close(a.grad, e.grad)


def test_relu_mask_of_the_backward_is_the_forwards():
    """Gradient flows exactly where the output is positive (the backward recomputes the
    pre-activation with the forward's arithmetic), including inputs that land on 0."""
    x, w, b, r, grad = case((4, 16, 5, 5), True, seed=7)
    b.zero_()
    x = x.clone()
    x[:, :, 0, 0] = x.mean(dim=(0, 2, 3)).view(1, -1)  # pre-activation near 0 before the residual
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    y, _, _ = batchnorm.batch_norm_relu_train(*leaves[:3], 1e-5, leaves[3])
    y.backward(torch.ones_like(y))
    assert torch.equal(leaves[3].grad, (y > 0).float())


def test_ops_write_every_output_element():
    x, w, b, r, grad = case((3, 24, 6, 5), True, seed=3)
    rows = x.permute(0, 2, 3, 1).reshape(-1, 24)
    r_rows, g_rows = r.permute(0, 2, 3, 1).reshape(-1, 24), grad.permute(0, 2, 3, 1).reshape(-1, 24)
    out, mean, invstd, var = poison(torch.empty_like(rows)), *(poison(torch.empty(24)) for _ in range(3))
    OPS.bn_relu_forward(rows, w, b, r_rows, 1e-5, out, mean, invstd, var)
    dx, dp, dr = poison(torch.empty_like(rows)), poison(torch.empty(2, 24)), poison(torch.empty_like(rows))
    OPS.bn_relu_backward(g_rows, rows, r_rows, w, b, mean, invstd, dx, dp, dr)
    for t in (out, mean, invstd, var, dx, dp, dr):
        assert torch.isfinite(t).all()


def test_bad_arguments_name_the_parameter():
    x = torch.randn(10, 8)
    w, b = torch.ones(8), torch.zeros(8)
    out, stats = torch.empty(10, 8), [torch.empty(8) for _ in range(3)]
    with pytest.raises(ValueError, match="weight must have shape \\[8\\]"):
        OPS.bn_relu_forward(x, torch.ones(7), b, None, 1e-5, out, *stats)
    with pytest.raises(ValueError, match="residual must have shape"):
        OPS.bn_relu_forward(x, w, b, torch.randn(9, 8), 1e-5, out, *stats)
    with pytest.raises(ValueError, match="x must be float32"):
        OPS.bn_relu_forward(x.double(), w, b, None, 1e-5, out, *stats)
    with pytest.raises(ValueError, match="out must be contiguous"):
        OPS.bn_relu_forward(x, w, b, None, 1e-5, torch.empty(8, 10).t(), *stats)
    with pytest.raises(ValueError, match="grad_residual must be given exactly when residual is"):
        OPS.bn_relu_backward(x, x, x, w, b, *stats[:2], torch.empty(10, 8), torch.empty(2, 8), None)
    with pytest.raises(ValueError, match="weight must have shape \\[4\\]"):
        batchnorm.batch_norm_relu_train(torch.randn(3, 4, 2, 2), torch.ones(5), torch.zeros(4), 1e-5)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        batchnorm.batch_norm_relu_train(x, w, b, 1e-5, torch.randn(10, 9))


def test_other_inputs_take_the_aten_ops():
    """NCHW memory, float64, a single value per channel: not fused, same results as ATen."""
    x = torch.randn(4, 6, 5, 5)  # NCHW
    assert not batchnorm.fused_batch_norm_applies(x)
    assert not batchnorm.fused_batch_norm_applies(nhwc(x).double())
    assert not batchnorm.fused_batch_norm_applies(nhwc(x), x)  # residual in another memory format
    assert not batchnorm.fused_batch_norm_applies(torch.randn(1, 6))
    bn = nn.BatchNorm2d(6)
    torch.testing.assert_close(batch_norm_relu(bn, x), torch.relu(nn.BatchNorm2d(6)(x)))


def _fused_results(threads: int) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    x, w, b, r, grad = case((16, 32, 12, 12), True, seed=11)  # 2304 rows: three row groups
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    y, mean, var = batchnorm.batch_norm_relu_train(*leaves[:3], 1e-5, leaves[3])
    y.backward(grad)
    leaves2 = [t.clone().requires_grad_() for t in (x, w, b)]
    y2, _, _ = batchnorm.batch_norm_relu_train(*leaves2, 1e-5)
    y2.backward(grad)
    return [y, mean, var, *(t.grad for t in leaves), y2, *(t.grad for t in leaves2)]


def test_results_do_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    try:
        one, two, three = _fused_results(1), _fused_results(2), _fused_results(3)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, two, three))


def test_baseline_and_avx2_copies_agree_bitwise():
    """SPARSEKERNELS_NATIVE_ISA=baseline selects the portable loops: same bits as the AVX2 ones."""
    assert_baseline_and_avx2_agree("tests.ops.test_batchnorm:_fused_results")


def test_second_derivative_raises_instead_of_being_wrong():
    x, w, b, _, grad = case((4, 8, 3, 3), False, seed=9)
    x = x.clone().requires_grad_()
    y, _, _ = batchnorm.batch_norm_relu_train(x, w, b, 1e-5)
    grad = grad.requires_grad_()  # a gradient penalty's graph: the backward's inputs require grad
    (gx,) = torch.autograd.grad(y, x, grad, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()

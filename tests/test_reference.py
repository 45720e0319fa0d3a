"""The reference ops against dense PyTorch on masked dense operands, in float64, with gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsekernels import BlockLayout, ops
from sparsekernels.conv_layout import conv_layout_from_mask, conv_matrix_to_weight, conv_weight_to_matrix
from sparsekernels.ops import reference as ref
from tests.helpers import assert_close, random_block_mask

F64 = torch.float64


def _layout(R, C, block, density, device):
    return BlockLayout.from_block_mask(random_block_mask(R, C, density, device=device), block)


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("block", [(2, 2), (3, 5)])
def test_sdd(density, block, device):
    layout = _layout(4, 3, block, density, device)
    M, N = layout.shape
    a = torch.randn(M, 7, dtype=F64, device=device)
    b = torch.randn(N, 7, dtype=F64, device=device).t()  # non-contiguous
    assert_close(ref.sdd(a, b, layout), layout.dense_to_values(a @ b))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
def test_dsd(transpose, density, lead, device):
    layout = _layout(3, 4, (2, 3), density, device)
    values = torch.randn(layout.nnz, 2, 3, dtype=F64, device=device)
    S = layout.values_to_dense(values)
    S = S.t() if transpose else S
    b = torch.randn(*lead, 5, S.shape[1], dtype=F64, device=device).transpose(-1, -2)
    assert_close(ref.dsd(values, layout, b, transpose), S @ b)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
def test_dds(transpose, density, lead, device):
    layout = _layout(3, 4, (2, 3), density, device)
    values = torch.randn(layout.nnz, 2, 3, dtype=F64, device=device)
    S = layout.values_to_dense(values)
    S = S.t() if transpose else S
    a = torch.randn(*lead, S.shape[0], 5, dtype=F64, device=device).transpose(-1, -2)
    assert_close(ref.dds(a, values, layout, transpose), a @ S)


@pytest.mark.parametrize("transpose", [False, True])
def test_gradcheck_matmul_ops(transpose, device):
    layout = _layout(3, 2, (2, 3), 0.5, device)
    M, N = layout.shape
    values = torch.randn(layout.nnz, 2, 3, dtype=F64, device=device, requires_grad=True)
    inner_dsd, inner_dds = (M, N) if transpose else (N, M)
    b = torch.randn(2, inner_dsd, 3, dtype=F64, device=device, requires_grad=True)
    a = torch.randn(2, 3, inner_dds, dtype=F64, device=device, requires_grad=True)
    for backend_fn in (ref, _Public):
        assert torch.autograd.gradcheck(lambda v, b, fn=backend_fn: fn.dsd(v, layout, b, transpose), (values, b))
        assert torch.autograd.gradcheck(lambda a, v, fn=backend_fn: fn.dds(a, v, layout, transpose), (a, values))
    x = torch.randn(M, 4, dtype=F64, device=device, requires_grad=True)
    y = torch.randn(4, N, dtype=F64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ref.sdd(x, y, layout), (x, y))
    assert torch.autograd.gradcheck(lambda x, y: ops.sdd(x, y, layout, backend="reference"), (x, y))


class _Public:
    """The public ops with the reference backend (custom op + registered autograd)."""

    @staticmethod
    def dsd(values, layout, b, transpose):
        return ops.dsd(values, layout, b, transpose, backend="reference")

    @staticmethod
    def dds(a, values, layout, transpose):
        return ops.dds(a, values, layout, transpose, backend="reference")


def test_empty_layout_gives_zeros_and_zero_grads(device):
    layout = _layout(3, 3, 2, 0.0, device)
    values = torch.randn(0, 2, 2, dtype=F64, device=device, requires_grad=True)
    b = torch.randn(6, 4, dtype=F64, device=device, requires_grad=True)
    y = ops.dsd(values, layout, b, backend="reference")
    assert torch.equal(y, torch.zeros(6, 4, dtype=F64, device=device))
    y.sum().backward()
    assert torch.equal(b.grad, torch.zeros_like(b))
    assert values.grad.shape == (0, 2, 2)


def _conv_case(K, C, R, S, block, density, device):
    grid_mask = random_block_mask(R * S * K // block, C // block, density, device=device)
    layout = BlockLayout.from_block_mask(grid_mask, block)
    values = torch.randn(layout.nnz, block, block, dtype=F64, device=device)
    weight = conv_matrix_to_weight(layout.values_to_dense(values), (R, S))
    return layout, values, weight


def test_conv_matrix_round_trip(device):
    w = torch.randn(6, 4, 3, 2, device=device)
    assert torch.equal(conv_matrix_to_weight(conv_weight_to_matrix(w), (3, 2)), w)
    m = conv_weight_to_matrix(w)
    # Wm[t*K + k, c] = W[k, c, t // S, t % S]
    assert m[4 * 6 + 5, 3] == w[5, 3, 2, 0]


def test_conv_layout_from_mask_marks_tap_blocks(device):
    mask = torch.zeros(4, 6, 3, 3, dtype=torch.bool, device=device)
    mask[3, 5, 1, 2] = True  # tap 5, k-block 1, c-block 2 with blocks of 2
    layout = conv_layout_from_mask(mask, 2)
    assert layout.shape == (36, 6) and layout.nnz == 1
    tap_masks = layout.to_block_mask().reshape(9, 2, 3)
    assert tap_masks[5, 1, 2] and int(tap_masks.sum()) == 1


@pytest.mark.parametrize(
    "kernel,stride,padding,hw",
    [(1, 1, 0, (5, 6)), (3, 1, 1, (7, 7)), (3, 2, 1, (7, 6)), (7, 2, 3, (9, 9)), (3, 2, 0, (8, 5))],
)
@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_conv2d_against_dense(kernel, stride, padding, hw, density, device):
    layout, values, weight = _conv_case(4, 6, kernel, kernel, 2, density, device)
    x = torch.randn(2, 6, *hw, dtype=F64, device=device)
    bias = torch.randn(4, dtype=F64, device=device)
    expected = F.conv2d(x, weight, bias, stride, padding)
    assert_close(ref.conv2d(x, values, layout, kernel, stride, padding, 1, bias), expected)
    y = ops.conv2d(x, values, layout, kernel, stride, padding, bias=bias, backend="reference")
    assert_close(y, expected)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_conv2d_gradients(stride, padding, dilation, device):
    layout, values, _ = _conv_case(4, 2, 3, 3, 2, 0.5, device)
    values.requires_grad_(True)
    x = torch.randn(1, 2, 5, 5, dtype=F64, device=device, requires_grad=True)

    def run(x, v):
        return ops.conv2d(x, v, layout, 3, stride, padding, dilation, backend="reference")

    assert torch.autograd.gradcheck(run, (x, values))


def test_conv_pieces_match_autograd(device):
    layout, values, weight = _conv_case(4, 6, 3, 3, 2, 0.5, device)
    x = torch.randn(2, 6, 7, 7, dtype=F64, device=device, requires_grad=True)
    w = weight.clone().requires_grad_(True)
    y = F.conv2d(x, w, None, 2, 1)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    assert_close(ref.conv2d_input_grad(dy, values, layout, x.shape, (3, 3), (2, 2), (1, 1), (1, 1)), dx)
    dvalues = ref.conv2d_weight_grad(x.detach(), dy, layout, (3, 3), (2, 2), (1, 1), (1, 1))
    assert_close(dvalues, layout.dense_to_values(conv_weight_to_matrix(dw)))


def test_reference_accepts_any_block_size_and_dtype(device):
    layout = _layout(2, 3, (5, 7), 0.5, device)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        values = torch.randn(layout.nnz, 5, 7, device=device).to(dtype)
        b = torch.randn(21, 3, device=device).to(dtype)
        expected = layout.values_to_dense(values.double()) @ b.double()
        assert_close(ops.dsd(values, layout, b, backend="reference"), expected, scale=2.0)


def test_op_errors(device):
    layout = _layout(2, 2, 4, 0.5, device)
    values = torch.randn(layout.nnz, 4, 4, device=device)
    with pytest.raises(ValueError, match=r"b must have rows \(the sparse operand's inner dimension\) = 8"):
        ops.dsd(values, layout, torch.randn(7, 3, device=device))
    with pytest.raises(TypeError, match="operands must share one dtype"):
        ops.dsd(values, layout, torch.randn(8, 3, dtype=F64, device=device))
    with pytest.raises(ValueError, match="values must have shape"):
        ops.dds(torch.randn(3, 8, device=device), values[:, :2], layout)
    with pytest.raises(ValueError, match=r"a must have columns"):
        ops.dds(torch.randn(3, 9, device=device), values, layout)
    with pytest.raises(ValueError, match=r"a must have rows \(layout.shape\[0\]\) = 8"):
        ops.sdd(torch.randn(9, 3, device=device), torch.randn(3, 8, device=device), layout)
    with pytest.raises(TypeError, match="layout must be a BlockLayout"):
        ops.sdd(torch.randn(8, 3, device=device), torch.randn(3, 8, device=device), None)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ops.dsd(values, layout, torch.randn(8, 3, device=device), backend="cuda")
    conv_layout, conv_values, _ = _conv_case(4, 2, 3, 3, 2, 0.5, device)
    conv_values = conv_values.float()
    with pytest.raises(ValueError, match="x must have 2 input channels"):
        ops.conv2d(torch.randn(1, 3, 5, 5, device=device), conv_values, conv_layout, 3)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv2d(torch.randn(2, 5, 5, device=device), conv_values, conv_layout, 3)
    with pytest.raises(ValueError, match="multiple of R\\*S"):
        ops.conv2d(torch.randn(1, 2, 5, 5, device=device), conv_values, conv_layout, 5)

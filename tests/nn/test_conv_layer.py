"""SparseConv2d against nn.Conv2d with masked weights, in a residual block; errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekernels import BlockLayout, SparseConv2d
from sparsekernels.conv_layout import conv_layout_from_mask
from tests.helpers import assert_close, random_block_mask

BACKENDS = ["reference", "triton"]


class Block(nn.Module):
    """A pre-activation-free basic residual block: conv-bn-relu-conv-bn + shortcut."""

    def __init__(self, conv1, conv2, shortcut):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = conv1, conv2, shortcut
        self.bn1, self.bn2 = nn.BatchNorm2d(conv1.out_channels), nn.BatchNorm2d(conv2.out_channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_block_matches_dense(backend, device):
    torch.manual_seed(3)
    c1 = SparseConv2d(16, 32, 3, stride=2, padding=1, bias=False, density=0.5, block_size=16, device=device)
    c2 = SparseConv2d(32, 32, 3, padding=1, bias=False, density=0.5, block_size=16, device=device)
    sc = SparseConv2d(16, 32, 1, stride=2, bias=False, density=0.5, block_size=16, device=device)
    for layer in (c1, c2, sc):
        layer.backend = backend
    sparse_block = Block(c1, c2, sc).to(device)
    dense_block = Block(c1.to_dense(), c2.to_dense(), sc.to_dense()).to(device).double()
    dense_block.load_state_dict({k: v for k, v in dense_block.state_dict().items()}, strict=True)
    x = torch.randn(2, 16, 9, 9, device=device).to(memory_format=torch.channels_last).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    y, y64 = sparse_block(x), dense_block(x64)
    assert_close(y, y64, scale=3.0)
    g = torch.randn_like(y)
    y.backward(g)
    y64.backward(g.double())
    assert_close(x.grad, x64.grad, scale=3.0)
    for sparse, dense in ((c1, dense_block.conv1), (c2, dense_block.conv2), (sc, dense_block.shortcut)):
        from sparsekernels.conv_layout import conv_weight_to_matrix

        expected = sparse.layout.dense_to_values(conv_weight_to_matrix(dense.weight.grad))
        assert_close(sparse.weight_values.grad, expected, scale=3.0)


def test_from_dense_to_dense_and_mask(device):
    conv = nn.Conv2d(32, 16, 3, padding=1, device=device)
    sparse = SparseConv2d.from_dense(conv, density=0.25, block_size=16)
    assert sparse.nnz == round(0.25 * 9 * 1 * 2)
    back = sparse.to_dense()
    mask = sparse.dense_weight() != 0
    assert torch.equal(back.weight, conv.weight * mask)
    x = torch.randn(1, 32, 6, 6, device=device)
    assert_close(sparse(x), back.double()(x.double()))
    m = torch.zeros(16, 32, 3, 3, dtype=torch.bool, device=device)
    m[0, 0, 1, 1] = True
    masked = SparseConv2d.from_dense(conv, mask=m, block_size=16)
    assert masked.nnz == 1
    assert torch.equal(masked.layout.to_block_mask(), conv_layout_from_mask(m, 16).to_block_mask())


def test_set_layout_per_tap(device):
    layer = SparseConv2d(32, 32, 3, padding=1, density=0.5, block_size=16, device=device)
    before = layer.dense_weight().detach().clone()
    new_mask = random_block_mask(9 * 2, 2, 0.5, device=device)
    new_layout = BlockLayout.from_block_mask(new_mask, 16, nnz=layer.nnz)
    layer.set_layout(new_layout)
    after = layer.dense_weight().detach()
    kept = (before != 0) & (after != 0)
    assert torch.equal(after[kept], before[kept])
    grown = (
        new_layout.to_mask()
        & ~BlockLayout.from_mask(
            __import__("sparsekernels").conv_layout.conv_weight_to_matrix(before != 0), 16
        ).to_mask()
    )
    from sparsekernels.conv_layout import conv_weight_to_matrix

    assert torch.all(conv_weight_to_matrix(after)[grown] == 0)


def test_dense_grad_on_request(device):
    layer = SparseConv2d(16, 32, 3, padding=1, density=0.5, block_size=16, device=device)
    dense = layer.to_dense()
    x = torch.randn(2, 16, 5, 5, device=device)
    layer.request_dense_grad()
    layer(x).square().sum().backward()
    dense(x).square().sum().backward()
    from sparsekernels.conv_layout import conv_weight_to_matrix

    assert_close(layer.dense_grad, conv_weight_to_matrix(dense.weight.grad).double(), scale=2.0)


def test_autocast(device):
    layer = SparseConv2d(16, 16, 3, padding=1, density=0.5, block_size=16, device=device)
    x = torch.randn(1, 16, 6, 6, device=device)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert_close(y, layer.to_dense().double()(x.double()), dtype=torch.bfloat16)


def test_compile_fullgraph_reference():
    torch._dynamo.reset()
    layer = SparseConv2d(16, 16, 3, padding=1, density=0.5, block_size=16)
    layer.backend = "reference"
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    y = compiled(x)
    assert_close(y, layer.to_dense().double()(x.detach().double()))
    y.sum().backward()
    assert x.grad is not None and layer.weight_values.grad is not None


def test_bad_inputs(device):
    with pytest.raises(ValueError, match="groups must be 1"):
        SparseConv2d(32, 32, 3, groups=2)
    with pytest.raises(ValueError, match=r"block_size \(32\) must divide in_channels \(48\)"):
        SparseConv2d(48, 64, 3, block_size=32)
    with pytest.raises(ValueError, match=r"block_size \(32\) must divide out_channels \(40\)"):
        SparseConv2d(64, 40, 3, block_size=32)
    layer = SparseConv2d(16, 16, 3, block_size=16, device=device)
    with pytest.raises(ValueError, match="input must be 4-D"):
        layer(torch.randn(16, 5, 5, device=device))
    with pytest.raises(ValueError, match="in_channels = 16"):
        layer(torch.randn(1, 8, 5, 5, device=device))
    with pytest.raises(ValueError, match="groups must be 1"):
        SparseConv2d.from_dense(nn.Conv2d(32, 32, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d(16, 16, 3, padding_mode="reflect", block_size=16)


@pytest.mark.gpu
def test_compile_fullgraph_triton(device):
    """On a GPU: the Triton conv kernels inside torch.compile(fullgraph=True)."""
    torch._dynamo.reset()
    layer = SparseConv2d(32, 32, 3, padding=1, density=0.5, block_size=16, device=device)
    layer.backend = "triton"
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(2, 32, 8, 8, device=device).to(memory_format=torch.channels_last).requires_grad_(True)
    y = compiled(x)
    assert_close(y, layer.to_dense().double()(x.detach().double()), scale=2.0)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(layer.weight_values.grad).all()

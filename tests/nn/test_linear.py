"""SparseLinear against nn.Linear with the masked dense weight; topology swaps; compile; autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekernels import BlockLayout, SparseLinear
from tests.helpers import RTOL, assert_close, random_block_mask, spy_host_syncs

BACKENDS = ["reference", "triton"]


def _pair(in_f=64, out_f=96, density=0.4, block=16, device="cpu", dtype=torch.float32, backend="reference"):
    layer = SparseLinear(in_f, out_f, density=density, block_size=block, device=device, dtype=dtype)
    layer.backend = backend
    dense = layer.to_dense()
    return layer, dense


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead", [(5,), (2, 3), ()])
def test_forward_backward_match_masked_linear(backend, lead, device):
    layer, dense = _pair(device=device, backend=backend)
    dense = dense.double()
    x = torch.randn(*lead, 64, device=device, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    y = layer(x)
    expected = dense(x64)
    assert y.shape == (*lead, 96)
    assert_close(y, expected, scale=2.0)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g.double())
    assert_close(x.grad, x64.grad, scale=2.0)
    mask = layer.layout.to_mask()
    assert_close(layer.weight_values.grad, layer.layout.dense_to_values(dense.weight.grad), scale=2.0)
    assert torch.all(dense.weight.grad[~mask] != 0) or mask.all()  # the dense grad is dense
    assert_close(layer.bias.grad, dense.bias.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_forward(backend, device):
    dtype = torch.float16 if backend == "triton" else torch.bfloat16
    layer, dense = _pair(device=device, dtype=dtype, backend=backend)
    x = torch.randn(8, 64, device=device, dtype=dtype)
    assert layer(x).dtype == dtype
    assert_close(layer(x), dense.double()(x.double()), dtype=dtype)


def test_from_dense_keeps_largest_blocks_and_round_trips(device):
    linear = nn.Linear(64, 32, device=device)
    with torch.no_grad():
        linear.weight[:16, 16:32] *= 100  # block (0, 1) is the largest
        linear.weight[16:, 48:] *= 50  # block (1, 3) second
    sparse = SparseLinear.from_dense(linear, density=2 / 8, block_size=16)
    mask = sparse.to_block_mask()
    assert mask.sum() == 2 and mask[0, 1] and mask[1, 3]
    back = sparse.to_dense()
    assert torch.equal(back.weight, linear.weight * sparse.layout.to_mask())
    assert torch.equal(back.bias, linear.bias)
    full = SparseLinear.from_dense(linear, block_size=16)
    assert torch.equal(full.to_dense().weight, linear.weight)


def test_from_dense_with_mask(device):
    linear = nn.Linear(32, 32, bias=False, device=device)
    mask = torch.zeros(32, 32, dtype=torch.bool, device=device)
    mask[0, 0] = mask[31, 31] = True
    sparse = SparseLinear.from_dense(linear, mask=mask, block_size=16)
    assert sparse.nnz == 2 and sparse.bias is None
    with pytest.raises(ValueError, match="mask must have shape"):
        SparseLinear.from_dense(linear, mask=mask[:16], block_size=16)


def test_init_scale_matches_active_fan_in():
    torch.manual_seed(1)
    layer = SparseLinear(1024, 256, density=0.25, block_size=32)
    bound = 1 / (1024 * 0.25) ** 0.5
    assert layer.weight_values.abs().max() <= bound
    # uniform(-b, b) has std b/sqrt(3)
    assert abs(layer.weight_values.std().item() - bound / 3**0.5) < 0.05 * bound
    x = torch.randn(512, 1024)
    with torch.no_grad():
        dense_out = nn.Linear(1024, 256, bias=False)(x).std()
    with torch.no_grad():
        sparse_out = (layer(x) - layer.bias).std()
    assert 0.8 < float(sparse_out / dense_out) < 1.25


def test_set_layout_keeps_kept_and_zeros_grown(device):
    layer = SparseLinear(64, 64, density=0.5, block_size=16, device=device)
    param = layer.weight_values
    old_dense = layer.layout.values_to_dense(layer.weight_values.detach())
    old_mask = layer.to_block_mask()
    new_mask = random_block_mask(4, 4, 0.5, device=device)
    new_layout = BlockLayout.from_block_mask(new_mask, 16, nnz=layer.nnz)
    src = layer.set_layout(new_layout)
    assert layer.weight_values is param and param.shape == (8, 16, 16)
    assert torch.equal(layer.to_block_mask(), new_mask)
    new_dense = layer.layout.values_to_dense(layer.weight_values.detach())
    kept = (old_mask & new_mask).repeat_interleave(16, 0).repeat_interleave(16, 1)
    grown = (new_mask & ~old_mask).repeat_interleave(16, 0).repeat_interleave(16, 1)
    assert torch.equal(new_dense[kept], old_dense[kept])
    assert torch.all(new_dense[grown] == 0)
    assert int((src >= 0).sum()) == int((old_mask & new_mask).sum())
    with pytest.raises(ValueError, match="new_layout must keep nnz = 8"):
        layer.set_layout(BlockLayout.random((64, 64), 16, 0.25, device=device))
    with pytest.raises(ValueError, match="new_layout must have shape"):
        layer.set_layout(BlockLayout.random((64, 128), 16, 0.25, device=device))


def test_set_layout_does_not_sync(monkeypatch):
    layer = SparseLinear(64, 64, density=0.5, block_size=16)
    new_layout = BlockLayout.from_block_mask(random_block_mask(4, 4, 0.5), 16, nnz=layer.nnz)
    calls = spy_host_syncs(monkeypatch)
    layer.set_layout(new_layout)
    monkeypatch.undo()
    assert calls == []


def test_state_dict_carries_layout(device):
    a = SparseLinear(32, 32, density=0.5, block_size=16, device=device)
    b = SparseLinear(32, 32, density=0.5, block_size=16, device=device)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.to_block_mask(), b.to_block_mask())
    x = torch.randn(4, 32, device=device)
    assert torch.equal(a(x), b(x))


def test_compile_fullgraph_reference():
    torch._dynamo.reset()
    layer = SparseLinear(32, 48, density=0.5, block_size=16)
    layer.backend = "reference"
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(48, 4))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 32, requires_grad=True)
    y_eager, y_comp = model(x), compiled(x)
    assert_close(y_comp, y_eager.double())
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    (g_comp,) = torch.autograd.grad(y_comp.sum(), x)
    assert_close(g_comp, g_eager.double())


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_autocast_matches_linear(dtype, device):
    layer, dense = _pair(device=device)
    x = torch.randn(8, 64, device=device)
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        y = layer(x)
        y_dense = dense(x)
    assert y.dtype == y_dense.dtype == dtype
    assert_close(y, dense.double()(x.double()), dtype=dtype)
    y.float().sum().backward()
    assert layer.weight_values.grad.dtype == torch.float32


def test_dense_grad_on_request(device):
    layer, dense = _pair(device=device)
    x = torch.randn(7, 64, device=device)
    layer(x).sum().backward()
    assert layer.dense_grad is None
    layer.request_dense_grad()
    layer(x).square().sum().backward()
    dense(x).square().sum().backward()
    assert_close(layer.dense_grad, dense.weight.grad.double(), scale=2.0)
    # a second backward accumulates, as .grad does
    x2 = torch.randn(3, 64, device=device)
    layer(x2).square().sum().backward()
    dense(x2).square().sum().backward()
    assert_close(layer.dense_grad, dense.weight.grad.double(), scale=2.0)
    layer.request_dense_grad(False)
    assert layer.dense_grad is None


def test_bad_inputs(device):
    layer = SparseLinear(32, 32, density=0.5, block_size=16, device=device)
    with pytest.raises(ValueError, match="in_features = 32"):
        layer(torch.randn(4, 31, device=device))
    with pytest.raises(TypeError, match="operands must share one dtype"):
        layer(torch.randn(4, 32, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match=r"block_size \(16\) must divide in_features \(40\)"):
        SparseLinear(40, 32, block_size=16)
    with pytest.raises(ValueError, match=r"block_size \(16\) must divide out_features \(24\)"):
        SparseLinear(32, 24, block_size=16)
    with pytest.raises(ValueError, match="layout must have shape"):
        SparseLinear(32, 32, layout=BlockLayout.random((32, 64), 16, 0.5))
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        SparseLinear(32, 32, density=0.0, block_size=16)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="is on"):
            layer.cuda()(torch.randn(4, 32))


def test_tolerance_table_is_per_dtype():
    assert RTOL[torch.float32] < RTOL[torch.float16] < RTOL[torch.bfloat16]


@pytest.mark.gpu
def test_compile_fullgraph_triton(device):
    """On a GPU: the Triton kernels inside torch.compile(fullgraph=True), forward and backward."""
    torch._dynamo.reset()
    layer = SparseLinear(64, 128, density=0.5, block_size=32, device=device)
    layer.backend = "triton"
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(8, 64, device=device, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    dense = layer.to_dense().double()
    y, y64 = compiled(x), dense(x64)
    assert_close(y, y64, scale=2.0)
    y.sum().backward()
    y64.sum().backward()
    assert_close(x.grad, x64.grad, scale=2.0)

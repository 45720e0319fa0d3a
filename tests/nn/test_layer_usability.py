"""The sparse layers in everyday code: memory formats, the dense ``weight`` view, finding them,
repr, the torch BSR bridges, tracing, and sparsify's honesty when it sparsifies nothing."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsekernels import SparseConv2d, SparseLinear, sparsify
from sparsekernels.nn import sparse_modules
from sparsekernels.ops import backends
from tests.helpers import assert_close

# torch's own notice on every first BSR construction; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state")


def _cpu_backends() -> list[str]:
    names = ["reference", "triton"]
    if backends.native_available():
        names.append("native")
    return names


# ----------------------------------------------------------------------------- memory format
@pytest.mark.parametrize("backend", _cpu_backends())
def test_conv_returns_input_memory_format(backend):
    conv = SparseConv2d(16, 32, 3, padding=1, density=0.5, block_size=16, dtype=torch.float64)
    if backend != "reference":
        conv = conv.float()
    conv.backend = backend
    dtype = conv.weight_values.dtype
    x = torch.randn(2, 16, 6, 5, dtype=dtype, requires_grad=True)
    y = conv(x)
    # NCHW in -> contiguous NCHW out: the usual flatten after a conv stack works.
    assert y.is_contiguous()
    assert y.view(y.size(0), -1).shape == (2, 32 * 6 * 5)
    x64 = x.detach().double().requires_grad_()
    ref = F.conv2d(x64, conv.weight.detach().double(), conv.bias.detach().double(), padding=1)
    assert_close(y, ref, dtype)
    grad = torch.randn_like(ref)
    (dx,) = torch.autograd.grad(y, x, grad.to(dtype))
    (dx_ref,) = torch.autograd.grad(ref, x64, grad)
    assert_close(dx, dx_ref, dtype)
    # channels-last in -> channels-last out, the kernels' own format (no conversion).
    y_cl = conv(x.detach().to(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    assert_close(y_cl, ref, dtype)


def test_conv_channels_last_path_has_no_extra_copy(monkeypatch):
    """Channels-last in: no conversion to NCHW anywhere in the forward; NCHW in: the result is
    converted (a real copy) exactly where the layer restores the input's format."""
    copies = []
    original = torch.Tensor.contiguous

    def spy(self, memory_format=torch.contiguous_format):
        if not self.is_contiguous(memory_format=memory_format):
            copies.append(memory_format)
        return original(self, memory_format=memory_format)

    conv = SparseConv2d(16, 16, 3, padding=1, density=0.5, block_size=16)
    conv.backend = "reference"
    x = torch.randn(2, 16, 5, 5)
    monkeypatch.setattr(torch.Tensor, "contiguous", spy)
    conv(x.to(memory_format=torch.channels_last))
    assert torch.contiguous_format not in copies
    conv(x)
    monkeypatch.undo()
    assert copies.count(torch.contiguous_format) == 1


# ----------------------------------------------------------------------------- dense weight view
def test_weight_property_is_a_dense_copy_and_assignment_writes_blocks():
    layer = SparseLinear(64, 32, density=0.5, block_size=16, dtype=torch.float64)
    w = layer.weight
    assert w.shape == (32, 64)
    assert torch.equal(w, layer.to_dense().weight)
    # a copy: editing it leaves the layer alone
    before = layer.weight_values.detach().clone()
    w.data.add_(1.0)
    assert torch.equal(layer.weight_values, before)
    # differentiable with respect to the parameter that trains
    layer.weight.sum().backward()
    assert torch.equal(layer.weight_values.grad, torch.ones_like(before))
    # assignment keeps the layout and drops entries outside it (tensor or Parameter)
    mask = layer.layout.values_to_dense(torch.ones_like(before))
    new = torch.randn(32, 64, dtype=torch.float64)
    layer.weight = new
    assert torch.equal(layer.weight, new * mask)
    layer.weight = nn.Parameter(2 * new)
    assert torch.equal(layer.weight, 2 * new * mask)
    assert "weight" not in dict(layer.named_parameters())
    with pytest.raises(ValueError, match=r"weight must have shape \(32, 64\)"):
        layer.weight = torch.zeros(64, 32)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        layer.weight = 3.0


def test_conv_weight_property_and_init_loop():
    model = nn.Sequential(nn.Conv2d(16, 32, 3), SparseConv2d(32, 32, 3, density=0.5, block_size=16), nn.ReLU())
    assert model[1].weight.shape == (32, 32, 3, 3)
    assert torch.equal(model[1].weight, model[1].dense_weight())
    # the everyday init loop, written for both kinds with the documented helper
    touched = []
    for name, m in sparse_modules(model):
        w = torch.empty_like(m.weight)
        nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        m.weight = w
        touched.append(name)
    assert touched == ["1"]
    mask = model[1]._matrix_to_weight(model[1].layout.values_to_dense(torch.ones_like(model[1].weight_values)))
    assert torch.equal(model[1].weight, w * mask)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        list(sparse_modules("model"))


def test_repr_shows_the_backend_that_runs():
    layer = SparseLinear(32, 32, density=0.5, block_size=16)
    expected = "native" if backends.native_available() else "reference"
    assert f"backend='auto' -> '{expected}'" in repr(layer)
    assert layer.resolved_backend() == expected
    layer.backend = "reference"
    assert "backend='reference'" in repr(layer) and "->" not in repr(layer)
    layer.backend = "triton"
    assert "'triton' -> 'triton (interpreter)'" in repr(layer)


# ----------------------------------------------------------------------------- torch.sparse bridges
def test_linear_to_and_from_sparse_bsr_against_dense():
    layer = SparseLinear(64, 48, density=0.4, block_size=16, dtype=torch.float64)
    bsr = layer.to_sparse_bsr()
    assert bsr.layout == torch.sparse_bsr and bsr.shape == (48, 64) and bsr.values().shape == (layer.nnz, 16, 16)
    assert torch.equal(bsr.to_dense(), layer.weight.detach())
    x = torch.randn(5, 64, dtype=torch.float64)
    ref = x @ layer.weight.detach().t() + layer.bias.detach()
    assert_close(bsr.matmul(x.t()).t() + layer.bias.detach(), ref)
    # back: from a BSR built by torch from a dense matrix
    dense = torch.randn(48, 64, dtype=torch.float64) * layer.layout.values_to_dense(
        torch.ones_like(layer.weight_values)
    )
    rebuilt = SparseLinear.from_sparse_bsr(dense.to_sparse_bsr((16, 16)), bias=layer.bias.detach())
    assert rebuilt.nnz == layer.nnz and torch.equal(rebuilt.to_block_mask(), layer.to_block_mask())
    rebuilt.backend = "reference"
    assert_close(rebuilt(x), x @ dense.t() + layer.bias.detach())
    # round trip is exact
    again = SparseLinear.from_sparse_bsr(layer.to_sparse_bsr(), layer.bias.detach())
    assert torch.equal(again.weight, layer.weight) and torch.equal(again.layout.row_offsets, layer.layout.row_offsets)
    with pytest.raises(TypeError, match="torch.sparse_bsr"):
        SparseLinear.from_sparse_bsr(dense)
    with pytest.raises(ValueError, match="bias must have shape"):
        SparseLinear.from_sparse_bsr(bsr, bias=torch.zeros(3, dtype=torch.float64))


def test_conv_to_and_from_sparse_bsr_against_dense():
    conv = SparseConv2d(32, 16, 3, stride=2, padding=1, density=0.4, block_size=16, dtype=torch.float64)
    conv.backend = "reference"
    bsr = conv.to_sparse_bsr()
    assert bsr.shape == (9 * 16, 32)
    from sparsekernels.conv_layout import conv_weight_to_matrix

    assert torch.equal(bsr.to_dense(), conv_weight_to_matrix(conv.weight.detach()))
    rebuilt = SparseConv2d.from_sparse_bsr(bsr, 32, 16, 3, stride=2, padding=1, bias=conv.bias.detach())
    rebuilt.backend = "reference"
    x = torch.randn(2, 32, 7, 7, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight.detach(), conv.bias.detach(), stride=2, padding=1)
    assert_close(rebuilt(x), ref)
    with pytest.raises(ValueError, match=r"weight must have shape \(144, 16\)"):
        SparseConv2d.from_sparse_bsr(bsr, 16, 16, 3)


# ----------------------------------------------------------------------------- tracing / scripting
def test_export_works_and_jit_script_is_documented_unsupported():
    layer = SparseConv2d(16, 16, 3, padding=1, density=0.5, block_size=16)
    x = torch.randn(2, 16, 5, 5)
    exported = torch.export.export(layer, (x,))
    assert_close(exported.module()(x), layer(x).detach().double(), torch.float32)
    from sparsekernels.nn import _block_sparse

    assert "torch.jit.script" in _block_sparse.__doc__  # documented as not supported


# ----------------------------------------------------------------------------- sparsify honesty
def test_sparsify_warns_when_nothing_becomes_sparse():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 64, 3), nn.Flatten(), nn.Linear(64, 64), nn.Linear(64, 10))
    with pytest.warns(UserWarning, match=r"sparsify\(block_size=48, density=0.1\) made no layer sparse"):
        summary = sparsify(model, density=0.1, block_size=48)
    assert summary.sparse_layers == []
    assert "no layer was made sparse" in str(summary)
    assert not list(sparse_modules(model))


def test_sparsify_reports_all_blocks_layers_as_capped_not_sparse():
    # The 1x1 shortcut 32->32 has a single 32-block: any density rounds to that block, i.e. 1.0.
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 256, 3), nn.Conv2d(256, 32, 3), nn.Conv2d(32, 32, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = sparsify(model, density=0.3, block_size=32, distribution="uniform")
    by_name = {s.name: s for s in summary}
    assert by_name["3"].status == "dense: capped at density 1" and type(model[3]) is nn.Conv2d
    for s in summary:
        assert s.status != "sparse" or s.density < 1.0
    assert isinstance(model[1], SparseConv2d) and isinstance(model[2], SparseConv2d)

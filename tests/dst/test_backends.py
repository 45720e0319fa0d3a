"""Every method drives layers running on every backend (Triton under the interpreter on CPU,
native when built) and takes the same decisions as on the reference backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekernels
from sparsekernels import SparseConv2d, SparseLinear
from sparsekernels.dst import DynamicSparsity
from tests.dst.common import METHODS, assert_layout_matches_mask
from tests.helpers import assert_close

BACKENDS = ["triton", "native"]


class KernelSizedNet(nn.Module):
    """Block 16 (the kernels' smallest): a 3×3 SparseConv2d and a SparseLinear."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = SparseConv2d(16, 16, 3, padding=1, density=0.4, block_size=16)
        self.fc = SparseLinear(16, 32, density=0.5, block_size=16)
        for layer in (self.conv, self.fc):
            layer.backend = backend

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def run(backend: str, method: str, steps: int = 4):
    model = KernelSizedNet(backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    evo = DynamicSparsity(model, opt, method=method, update_every=2, fraction=0.5, seed=0)
    masks = []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(2, 16, 5, 5, generator=g), torch.randint(0, 32, (2,), generator=g)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        evo.step()
        opt.zero_grad()
        masks.append([m.to_block_mask().clone() for m in (model.conv, model.fc)])
    return model, masks, evo


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_methods_on_kernel_backends(backend, method):
    if backend == "native" and not sparsekernels.native_available():
        pytest.skip("native extension not built")
    model, masks, evo = run(backend, method)
    reference, ref_masks, _ = run("reference", method)
    assert len(evo.history) == 2
    for layer in (model.conv, model.fc):
        assert_layout_matches_mask(layer)
    assert model.conv.nnz == reference.conv.nnz and model.fc.nnz == reference.fc.nnz
    for got, want in zip(masks, ref_masks):
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    changed = any(not torch.equal(a, b) for a, b in zip(masks[0], masks[-1]))
    assert changed, "no block was ever swapped"
    for got, want in zip(model.parameters(), reference.parameters()):
        assert_close(got, want.double(), scale=20.0)  # a few optimizer steps of fp32 drift

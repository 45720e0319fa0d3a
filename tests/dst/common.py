"""Small models and a training loop shared by the dst tests (CPU, reference backend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsekernels import BlockLayout, SparseConv2d, SparseLinear
from sparsekernels.dst import DynamicSparsity

METHODS = ("set", "rigl", "evolutionary", "evolutionary-gradient")


def mlp(seed: int = 0, in_f: int = 32, hidden: int = 48, out_f: int = 16, block: int = 8) -> nn.Sequential:
    """Two SparseLinear layers (grids 6×4 at density 0.4 and 2×6 at density 0.5)."""
    torch.manual_seed(seed)
    l1 = SparseLinear(in_f, hidden, density=0.4, block_size=block)
    l2 = SparseLinear(hidden, out_f, density=0.5, block_size=block)
    for layer in (l1, l2):
        layer.backend = "reference"
    return nn.Sequential(l1, nn.ReLU(), l2)


class TinyConvNet(nn.Module):
    """A SparseConv2d (grid 18×2: 3×3 taps × 2 output blocks, 2 input blocks) and a SparseLinear."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = SparseConv2d(8, 8, 3, padding=1, density=0.3, block_size=4)
        self.fc = SparseLinear(8, 8, density=0.5, block_size=4)
        for layer in (self.conv, self.fc):
            layer.backend = "reference"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def batch(step: int, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic inputs/targets for ``step`` (same in every run and after a resume)."""
    g = torch.Generator().manual_seed(10_000 + step)
    if isinstance(model, TinyConvNet):
        return torch.randn(4, 8, 6, 6, generator=g), torch.randint(0, 8, (4,), generator=g)
    return torch.randn(16, 32, generator=g), torch.randint(0, 16, (16,), generator=g)


def train(model: nn.Module, opt: torch.optim.Optimizer, evo: DynamicSparsity | None, steps: range, hook=None) -> None:
    """The documented loop: forward, backward, ``opt.step()``, ``evo.step()``, ``zero_grad()``.
    ``hook(step)`` runs between ``opt.step()`` and ``evo.step()``."""
    for step in steps:
        x, y = batch(step, model)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if hook is not None:
            hook(step)
        if evo is not None:
            evo.step()
        opt.zero_grad()


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}


def assert_layout_matches_mask(layer) -> None:
    """The layer's index buffers equal a layout rebuilt from its block mask."""
    rebuilt = BlockLayout.from_block_mask(layer.to_block_mask(), layer.block_size)
    assert rebuilt.nnz == layer.nnz
    for name, tensor in rebuilt.fields().items():
        assert torch.equal(getattr(layer.layout, name), tensor), name

"""Rewiring must pay off: on a task where the initial mask misses most informative inputs,
every method ends with a lower held-out loss than static sparse training of the same
density, model, data, optimizer and steps.

Task: 8-class Gaussian mixture in 64 dimensions (8 input blocks of 8); the class means live
on input blocks 1, 3, 4 and 6 (each carries part of the class information), the other 32
dimensions are pure noise. Model: SparseLinear(64 → 64) at density 1/4 (16 of 64 blocks),
ReLU, SparseLinear(64 → 8) with every block active. The first layer starts with one block on
an informative input (block (0, 1)) and 15 blocks on noise inputs: a static mask can never
see more than that one informative block, a dynamic one can find the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsekernels import BlockLayout, SparseLinear
from sparsekernels.dst import DynamicSparsity
from tests.dst.common import METHODS

B = 8
IN_F, HIDDEN, CLASSES = 64, 64, 8
INFORMATIVE = (1, 3, 4, 6)  # input block-columns carrying the class means
STEPS, UPDATE_EVERY = 400, 25


def _sample(means: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, IN_F, generator=g)
    cols = torch.cat([torch.arange(c * B, (c + 1) * B) for c in INFORMATIVE])
    x[:, cols] += means[y]
    return x, y


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(HIDDEN // B, IN_F // B, dtype=torch.bool)
    mask[0, INFORMATIVE[0]] = True
    noise_cells = [(r, c) for r in range(HIDDEN // B) for c in range(IN_F // B) if c not in INFORMATIVE]
    for i in torch.randperm(len(noise_cells), generator=g)[:15].tolist():
        mask[noise_cells[i]] = True
    torch.manual_seed(0)
    first = SparseLinear(IN_F, HIDDEN, layout=BlockLayout.from_block_mask(mask, B))
    second = SparseLinear(HIDDEN, CLASSES, block_size=B)
    for layer in (first, second):
        layer.backend = "reference"
    return nn.Sequential(first, nn.ReLU(), second)


def _train(method: str | None) -> tuple[float, int]:
    """Held-out loss after training, and the informative blocks active in the first layer."""
    means = 0.7 * torch.randn(CLASSES, len(INFORMATIVE) * B, generator=torch.Generator().manual_seed(123))
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    evo = None
    if method is not None:
        evo = DynamicSparsity(
            model,
            opt,
            method=method,
            update_every=UPDATE_EVERY,
            fraction=0.3,
            schedule="cosine",
            stop_after=0.75 * STEPS,
            seed=0,
        )
    g = torch.Generator().manual_seed(1000)
    for _ in range(STEPS):
        x, y = _sample(means, 128, g)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if evo is not None:
            evo.step()
        opt.zero_grad()
    x, y = _sample(means, 4096, torch.Generator().manual_seed(7))
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y).item()
    return loss, int(model[0].to_block_mask()[:, list(INFORMATIVE)].sum())


def test_every_method_beats_static_sparse():
    static_loss, static_info = _train(None)
    assert static_info == 1
    results = {method: _train(method) for method in METHODS}
    report = ", ".join(f"{m}: {loss:.4f} ({info} informative blocks)" for m, (loss, info) in results.items())
    # Measured at seed 0: static 0.901; set 0.143, rigl 0.100, evolutionary 0.095, evolutionary-gradient 0.083.
    # Over seeds 0-3 the weakest method (evolutionary) reached 0.57 against static's 0.89-0.91.
    for method, (loss, info) in results.items():
        assert info > 1, f"{method} found no informative input block ({report})"
        assert loss < 0.8 * static_loss, f"{method} does not beat static sparse {static_loss:.4f}: {report}"

"""The engine's sync-free selection helpers against plain sorts."""

from __future__ import annotations

import torch

from sparsekernels.dst.base import smallest_free


def test_smallest_free_is_a_stable_sort_of_the_free_cells_by_key():
    g = torch.Generator().manual_seed(0)
    n = 5000
    keys = torch.randint(0, 64, (n,), generator=g).float() / 64  # many ties, multiples of 2^-24
    blocked = torch.rand(n, generator=g) < 0.3
    order = torch.argsort(keys, stable=True)
    expected = order[~blocked[order]]
    for count in (1, 17, 1000, int((~blocked).sum())):
        assert torch.equal(smallest_free(keys, blocked, count), expected[:count])
    # More than the free cells: the free ones first, then blocked cells (masked by the caller).
    result = smallest_free(keys, blocked, n)
    free = int((~blocked).sum())
    assert torch.equal(result[:free], expected) and blocked[result[free:]].all()
    assert torch.equal(torch.sort(result).values, torch.arange(n))

"""sparsify: per-layer densities (uniform / ER / ERK) against hand computations, global density."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsekernels import SparseConv2d, SparseLinear, sparsify
from sparsekernels.nn import layer_densities


def small_resnet():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),  # first conv: dense by default
        nn.Conv2d(32, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Conv2d(64, 128, 1),
        nn.Conv2d(128, 128, 3, padding=1, groups=2),  # skipped: groups
        nn.Conv2d(128, 40, 1),  # skipped: 40 not divisible by 32
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(40, 64),  # skipped: 40
        nn.Linear(64, 10),  # classifier: dense by default
    )


def test_erk_densities_by_hand():
    shapes = [(64, 32, 3, 3), (64, 64, 3, 3), (128, 64, 1, 1)]
    got = layer_densities(shapes, 0.1, "erk")
    raw = [(64 + 32 + 6) / (64 * 32 * 9), (64 + 64 + 6) / (64 * 64 * 9), (128 + 64 + 2) / (128 * 64)]
    params = [64 * 32 * 9, 64 * 64 * 9, 128 * 64]
    eps = 0.1 * sum(params) / sum(r * p for r, p in zip(raw, params))
    assert got == pytest.approx([eps * r for r in raw])
    assert sum(d * p for d, p in zip(got, params)) / sum(params) == pytest.approx(0.1)


def test_capping_redistributes():
    shapes = [(512, 512, 3, 3), (16, 16, 1, 1)]  # the small layer would exceed 1
    got = layer_densities(shapes, 0.5, "erk")
    assert got[1] == 1.0
    params = [512 * 512 * 9, 256]
    assert (got[0] * params[0] + params[1]) / sum(params) == pytest.approx(0.5)


def test_er_ignores_kernel_and_uniform_is_flat():
    shapes = [(64, 32, 3, 3), (64, 64, 1, 1)]
    er = layer_densities(shapes, 0.2, "er")
    assert er[0] / er[1] == pytest.approx(((64 + 32) / (64 * 32)) / ((64 + 64) / (64 * 64)))
    assert layer_densities(shapes, 0.2, "uniform") == [0.2, 0.2]


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_sparsify_model(distribution):
    torch.manual_seed(0)
    model = small_resnet()
    x = torch.randn(2, 3, 8, 8)
    summary = sparsify(model, density=0.2, block_size=32, distribution=distribution)
    statuses = {s.name: s.status for s in summary}
    assert statuses["0"] == "dense: first conv"
    assert statuses["9"] == "dense: classifier"
    assert statuses["4"].startswith("skipped")
    assert statuses["5"].startswith("skipped") and statuses["8"].startswith("skipped")
    assert isinstance(model[1], SparseConv2d) and isinstance(model[3], SparseConv2d)
    assert isinstance(model[0], nn.Conv2d) and not isinstance(model[0], SparseConv2d)
    # global density within one block per sparsified layer
    sparse = summary.sparse_layers
    total = sum(s.params for s in sparse)
    slack = sum(32 * 32 for _ in sparse) / total
    assert abs(summary.global_density - 0.2) <= slack
    assert model(x).shape == (2, 10)
    assert "global density" in str(summary)


def test_sparsify_keeps_largest_blocks_and_linear():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight[32:, :32] *= 100
    summary = sparsify(model, density=0.25, block_size=32, distribution="uniform")
    assert isinstance(model[0], SparseLinear)
    assert model[0].to_block_mask().tolist() == [[False, False], [True, False]]
    assert summary[0].nnz == 1


def test_sparsify_exclude_and_options():
    model = small_resnet()
    summary = sparsify(model, 0.3, 32, exclude=["1"], dense_first_conv=False)
    statuses = {s.name: s.status for s in summary}
    assert statuses["1"] == "dense: excluded"
    assert statuses["0"].startswith("skipped")  # 3 input channels
    model = small_resnet()
    summary = sparsify(model, 0.3, 32, exclude=lambda name, m: isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
    assert {s.name: s.status for s in summary}["3"] == "dense: excluded"


def test_sparsify_errors():
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        sparsify(small_resnet(), density=1.5)
    with pytest.raises(ValueError, match="distribution must be one of"):
        sparsify(small_resnet(), distribution="gaussian")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sparsify("resnet")


def test_random_topology_keeps_the_init_distribution_and_the_counts():
    """topology="random": the same per-layer block counts as "magnitude", blocks chosen
    independently of the values (so the kept weights are distributed as the initialisation), a
    seeded generator reproduces them, and the sparse layers compute with the dense weights'
    values at their blocks."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    by_magnitude, at_random, again = (copy.deepcopy(dense) for _ in range(3))
    s_mag = sparsify(by_magnitude, density=0.05, block_size=1, distribution="er")
    s_rand = sparsify(at_random, 0.05, 1, "er", topology="random", generator=torch.Generator().manual_seed(1))
    sparsify(again, 0.05, 1, "er", topology="random", generator=torch.Generator().manual_seed(1))
    assert [s.nnz for s in s_mag] == [s.nnz for s in s_rand]
    for i in (0, 2):
        kept = at_random[i].weight_values.flatten()
        init = dense[i].weight.detach().flatten()
        assert torch.equal(at_random[i].to_block_mask(), again[i].to_block_mask())
        # Uniform init U(-a, a): a random subset keeps std a/sqrt(3); the largest 5 % sit near a.
        assert kept.std().item() == pytest.approx(init.std().item(), rel=0.1)
        assert by_magnitude[i].weight_values.abs().min() > 0.9 * init.abs().max()
        mask = at_random[i].to_block_mask()
        assert torch.equal(at_random[i].to_dense().weight.detach()[mask], dense[i].weight.detach()[mask])
    model = small_resnet()
    sparsify(model, 0.2, 32, topology="random")
    assert isinstance(model[1], SparseConv2d) and model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="topology must be one of"):
        sparsify(small_resnet(), topology="largest")


def test_from_dense_with_a_layout():
    from sparsekernels import BlockLayout

    linear = nn.Linear(64, 32)
    layout = BlockLayout.random((32, 64), 16, 0.5, generator=torch.Generator().manual_seed(0))
    sparse = SparseLinear.from_dense(linear, layout=layout)
    assert torch.equal(sparse.to_block_mask(), layout.to_block_mask()) and sparse.nnz == layout.nnz
    with pytest.raises(ValueError, match="at most one of density, mask and layout"):
        SparseLinear.from_dense(linear, density=0.5, layout=layout)
    with pytest.raises(ValueError, match=r"layout must have shape \(32, 64\)"):
        SparseLinear.from_dense(linear, layout=BlockLayout.random((64, 64), 16, 0.5))
    conv = nn.Conv2d(32, 32, 3)
    with pytest.raises(ValueError, match="layout must have shape"):
        SparseConv2d.from_dense(conv, layout=layout)

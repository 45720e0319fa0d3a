"""DynamicSparsity: invariants of an update, optimizer state, method selection rules,
schedules, history, sync-freedom, checkpoints and errors (CPU, reference backend)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekernels
import sparsekernels.dst
from sparsekernels import BlockLayout, SparseLinear, _checks, sparsify
from sparsekernels.dst import DynamicSparsity, FractionSchedule, GrowthPruneMethod, register_method
from tests.dst.common import METHODS, TinyConvNet, assert_layout_matches_mask, batch, mlp, sparse_layers, train
from tests.helpers import random_block_mask, spy_host_syncs


def _expand(block_mask: torch.Tensor, block_size: tuple[int, int]) -> torch.Tensor:
    return block_mask.repeat_interleave(block_size[0], 0).repeat_interleave(block_size[1], 1)


def _dense(layer, values=None) -> torch.Tensor:
    return layer.layout.values_to_dense((layer.weight_values if values is None else values).detach())


class _UpdateChecker:
    """Snapshots every sparse layer before ``evo.step()`` and checks each update after it."""

    def __init__(self, model, opt, evo):
        self.model, self.opt, self.evo = model, opt, evo
        self.updates = 0
        self.changed = 0

    def before(self, step):
        self.snap = {}
        for name, layer in sparse_layers(self.model).items():
            state = {
                k: _dense(layer, v)
                for k, v in self.opt.state.get(layer.weight_values, {}).items()
                if isinstance(v, torch.Tensor) and v.shape == layer.weight_values.shape
            }
            scalars = {
                k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in self.opt.state.get(layer.weight_values, {}).items()
                if not (isinstance(v, torch.Tensor) and v.shape == layer.weight_values.shape)
            }
            self.snap[name] = (layer.to_block_mask(), _dense(layer), state, scalars, layer.nnz)

    def after(self):
        for name, layer in sparse_layers(self.model).items():
            mask0, dense0, state0, scalars0, nnz0 = self.snap[name]
            mask1 = layer.to_block_mask()
            assert layer.nnz == nnz0 == int(mask1.sum())
            assert_layout_matches_mask(layer)
            kept = _expand(mask0 & mask1, layer.block_size)
            grown = _expand(mask1 & ~mask0, layer.block_size)
            dense1 = _dense(layer)
            assert torch.equal(dense1[kept], dense0[kept])
            assert torch.all(dense1[grown] == 0)
            assert torch.all(dense1[~_expand(mask1, layer.block_size)] == 0)
            opt_state = self.opt.state.get(layer.weight_values, {})
            for key, before in state0.items():
                now = _dense(layer, opt_state[key])
                assert torch.equal(now[kept], before[kept]), key
                assert torch.all(now[grown] == 0), key
            for key, before in scalars0.items():
                now = opt_state[key]
                assert torch.equal(now, before) if isinstance(now, torch.Tensor) else now == before, key
            self.changed += int((mask1 & ~mask0).sum())


def _run_checked(model, opt, evo, steps):
    checker = _UpdateChecker(model, opt, evo)
    for step in range(steps):
        x, y = batch(step, model)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        checker.before(step)
        evo.step()
        checker.after()
        opt.zero_grad()
    return checker


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    ],
    ids=["sgd", "adam", "adamw-amsgrad"],
)
def test_update_invariants(method, optimizer):
    """Constant nnz, layouts equal to masks, kept values and optimizer state bit-identical in
    their new slots, grown ones zero, scalar state (Adam's step) untouched."""
    model = mlp()
    opt = optimizer(model.parameters())
    evo = DynamicSparsity(model, opt, method=method, update_every=2, fraction=0.5, seed=3)
    checker = _run_checked(model, opt, evo, 8)
    assert evo.num_updates == 4 and checker.changed > 0


@pytest.mark.parametrize("options", [{"global_redistribution": True}, {"adaptive": True}])
def test_update_invariants_with_options_and_conv(options):
    model = TinyConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    evo = DynamicSparsity(model, opt, method="evolutionary-gradient", update_every=2, fraction=0.5, **options)
    checker = _run_checked(model, opt, evo, 6)
    assert checker.changed > 0


def test_optimizer_state_is_moved_not_recreated():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    evo = DynamicSparsity(model, opt, method="set", update_every=1, fraction=0.5)
    train(model, opt, None, range(1))
    layer = model[0]
    before = {k: v for k, v in opt.state[layer.weight_values].items()}
    evo.step()
    after = opt.state[layer.weight_values]
    assert all(after[k] is before[k] for k in before)  # updated in place: optimizers keep their tensors
    assert int(after["step"]) == 1


def test_contract_usage_on_a_sparsified_model():
    """The README loop on a model made sparse by ``sparsify`` (nested names, conv + linear)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    summary = sparsify(model, density=0.3, block_size=8, distribution="uniform", backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total_steps = 12
    evo = sparsekernels.dst.DynamicSparsity(
        model, opt, method="rigl", update_every=2, fraction=0.3, schedule="cosine", stop_after=0.75 * total_steps
    )
    assert sorted(evo.layers) == sorted(s.name for s in summary.sparse_layers) == ["2.0", "5"]
    masks = {n: m.to_block_mask() for n, m in evo.layers.items()}
    for _ in range(total_steps):
        x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 10, (4,))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        evo.step()
        opt.zero_grad()
    assert [r["step"] for r in evo.history] == [2, 4]
    assert any(not torch.equal(m.to_block_mask(), masks[n]) for n, m in evo.layers.items())


# ----------------------------------------------------------------------------- selection rules
def _single_layer(mask: torch.Tensor, block: int = 4) -> tuple[nn.Module, SparseLinear]:
    R, C = mask.shape
    layer = SparseLinear(C * block, R * block, bias=False, layout=BlockLayout.from_block_mask(mask, block))
    layer.backend = "reference"
    return nn.Sequential(layer), layer


def test_rigl_prunes_smallest_and_grows_top_gradient_blocks():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    active = [(0, 0), (0, 3), (1, 1), (2, 0), (2, 2), (3, 3)]  # slot order is row-major
    for cell in active:
        mask[cell] = True
    model, layer = _single_layer(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    evo = DynamicSparsity(model, opt, method="rigl", update_every=1, fraction=0.5)  # k = 3
    model(torch.randn(2, 16)).sum().backward()
    assert layer.dense_grad is not None  # armed for step 1
    with torch.no_grad():
        norms = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0])  # prune slots 3, 1, 5 -> (2,0), (0,3), (3,3)
        layer.weight_values.copy_(torch.randn(6, 4, 4))
        layer.weight_values.mul_((norms / layer.weight_values.flatten(1).norm(dim=1))[:, None, None])
    grad_norm = torch.arange(16, dtype=torch.float32).reshape(4, 4) + 1
    grad_norm[mask] = 100.0  # active blocks have the largest gradients: must not be "grown"
    grad_norm[1, 0], grad_norm[3, 2], grad_norm[0, 1] = 60.0, 50.0, 40.0  # top inactive
    block = torch.randn(4, 4, 4, 4)
    block = block / block.flatten(2).norm(dim=2)[:, :, None, None] * grad_norm[:, :, None, None]
    layer.dense_grad = block.permute(0, 2, 1, 3).reshape(16, 16)
    opt.step()
    evo.step()
    expected = mask.clone()
    for cell in [(2, 0), (0, 3), (3, 3)]:
        expected[cell] = False
    for cell in [(1, 0), (3, 2), (0, 1)]:
        expected[cell] = True
    assert torch.equal(layer.to_block_mask(), expected)


def test_set_growth_is_uniform_chi_square():
    """SET grows uniformly among the inactive blocks. One block grown per update (nnz = 4,
    fraction 0.3 -> k = 1) on a 4×4 grid; the grown block's rank among the 12 cells inactive
    before the update is uniform on 0..11 under the null, whatever the inactive set."""
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, :] = True
    model, layer = _single_layer(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    evo = DynamicSparsity(model, opt, method="set", update_every=1, fraction=0.3, seed=1234)
    draws = 1200
    counts = torch.zeros(12)
    for _ in range(draws):
        before = layer.to_block_mask().reshape(-1)
        evo.step()
        grown = layer.to_block_mask().reshape(-1) & ~before
        inactive = (~before).nonzero().flatten()
        counts[(inactive == grown.nonzero().flatten()).nonzero().flatten()] += 1
    expected = draws / 12
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    try:
        from scipy.stats import chi2 as chi2_dist

        critical = float(chi2_dist.ppf(0.999, df=11))
    except ImportError:
        critical = 31.264  # chi-square 99.9th percentile, 11 degrees of freedom (12 categories - 1)
    assert chi2 < critical, f"chi2 = {chi2:.1f} over 11 dof (counts {counts.tolist()})"
    assert counts.min() > 0


def test_evolutionary_grows_next_to_fit_blocks_and_grace():
    """Exploitation scores an inactive cell by the fitness of its row plus its column; grown
    blocks start at the median fitness and are not pruned at the next update."""
    mask = torch.eye(4, dtype=torch.bool)
    model, layer = _single_layer(mask)
    with torch.no_grad():
        values = torch.randn(4, 4, 4)
        norms = torch.tensor([10.0, 1.0, 2.0, 3.0])
        layer.weight_values.copy_(values * (norms / values.flatten(1).norm(dim=1))[:, None, None])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    evo = DynamicSparsity(model, opt, method="evolutionary", update_every=1, fraction=0.5, explore=0.0, adaptive=False)
    fitness0 = evo.layer_state("0").slots["fitness"].clone()
    evo.step()  # k = 2: prune fitness 1 and 2 at (1,1), (2,2); grow in row 0 / column 0
    new = layer.to_block_mask()
    grown = new & ~mask
    assert int(grown.sum()) == 2
    assert all(r == 0 or c == 0 for r, c in grown.nonzero().tolist())
    assert not new[1, 1] and not new[2, 2]
    st = evo.layer_state("0")
    born_now = st.born == 1
    assert torch.all(st.slots["fitness"][born_now] == fitness0.median())
    evo.step()  # the two new blocks (still at zero) are in their grace period
    assert torch.equal(layer.to_block_mask() & grown, grown)


def test_global_redistribution_moves_swaps_to_the_least_fit_layer():
    torch.manual_seed(0)
    masks = [random_block_mask(8, 8, 0.25) for _ in range(2)]
    a = SparseLinear(32, 32, bias=False, layout=BlockLayout.from_block_mask(masks[0], 4))
    b = SparseLinear(32, 32, bias=False, layout=BlockLayout.from_block_mask(masks[1], 4))
    with torch.no_grad():
        a.weight_values[::2].mul_(1e-3)  # half of a's blocks nearly dead; b uniform
    model = nn.Sequential(a, b)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    evo = DynamicSparsity(
        model, opt, method="evolutionary", update_every=1, fraction=0.25, global_redistribution=True, adaptive=False
    )
    evo.step()  # k = 4 per layer; the 8 globally least fit blocks are all in a (cap 2k = 8)
    layers = evo.history[-1]["layers"]
    assert layers["0"]["changed"] == 8 and layers["1"]["changed"] == 0
    assert a.nnz == 16 and int(a.to_block_mask().sum()) == 16 and torch.equal(b.to_block_mask(), masks[1])


class PruneNewest(GrowthPruneMethod):
    """Test method: always prunes the most recently grown blocks, grows at random."""

    name = "test-prune-newest"

    def prune_scores(self, state):
        return -state.born.float()


register_method("test-prune-newest", PruneNewest)


def test_custom_method_adaptive_rate_and_history():
    """Revert rate 1 at every update after the first: the multiplier goes 1, 1, 1/2, 1/4, 1/8,
    then the floor 0.1 (at least one block); history counts follow."""
    torch.manual_seed(0)
    mask = random_block_mask(8, 8, 0.25)
    model, layer = _single_layer(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    evo = DynamicSparsity(model, opt, method="test-prune-newest", update_every=1, fraction=0.5, adaptive=True)
    for _ in range(6):
        evo.step()
    h = evo.history
    assert [r["layers"]["0"]["changed"] for r in h] == [8, 8, 4, 2, 1, 1]
    assert [r["layers"]["0"]["reverted"] for r in h] == [0, 8, 4, 2, 1, 1]
    assert [r["layers"]["0"]["pruned_grown"] for r in h] == [0, 8, 4, 2, 1, 1]
    assert h[1]["layers"]["0"]["grown_later_pruned"] == 8 / 16
    ever = [r["layers"]["0"]["ever_active"] for r in h]
    assert ever == sorted(ever) and ever[0] == (16 + 8) / 64
    assert [r["step"] for r in h] == [1, 2, 3, 4, 5, 6] and h[2]["churn"] == 4 / 16
    assert float(evo.layer_state("0").adapt) == pytest.approx(0.1)


def test_adapt_floor_zero_lets_the_swap_count_fall_to_one_block():
    """Same run as above with ``adapt_floor=0``: the multiplier keeps halving (1/16, 1/32, ...)
    instead of stopping at 0.1, and the count stays at one block; a bad floor is refused."""
    torch.manual_seed(0)
    mask = random_block_mask(8, 8, 0.25)
    model, _ = _single_layer(mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    evo = DynamicSparsity(
        model, opt, method="test-prune-newest", update_every=1, fraction=0.5, adaptive=True, adapt_floor=0.0
    )
    for _ in range(7):
        evo.step()
    assert [r["layers"]["0"]["changed"] for r in evo.history] == [8, 8, 4, 2, 1, 1, 1]
    assert float(evo.layer_state("0").adapt) == pytest.approx(1 / 64)
    assert evo.state_dict()["adapt_floor"] == 0.0
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match=r"adapt_floor must be a number in \[0, 1\]"):
            DynamicSparsity(model, opt, method="test-prune-newest", adapt_floor=bad)


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_grace_updates_stops_set_and_rigl_from_pruning_last_updates_growth(method):
    """lr 0: grown blocks stay at zero, the smallest norms. Without grace, the second update
    prunes exactly the blocks the first one grew (every prune reverted); with
    ``grace_updates=1`` it prunes established blocks (none reverted)."""
    reverted = {}
    for grace in (0, 1):
        torch.manual_seed(0)
        model, _ = _single_layer(random_block_mask(8, 8, 0.25))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        evo = DynamicSparsity(model, opt, method=method, update_every=1, fraction=0.25, grace_updates=grace)
        for _ in range(2):
            model(torch.randn(2, 32)).sum().backward()
            evo.step()
        assert evo.method.grace_updates == grace
        reverted[grace] = [(r["layers"]["0"]["changed"], r["layers"]["0"]["reverted"]) for r in evo.history]
    assert reverted == {0: [(4, 0), (4, 4)], 1: [(4, 0), (4, 0)]}
    with pytest.raises(ValueError, match="grace_updates must be an int >= 0"):
        DynamicSparsity(model, opt, method=method, grace_updates=-1)


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_schedules_match_formulas(name):
    alpha, T = 0.3, 750
    s = FractionSchedule(name, alpha, stop_after=T + 0.9)  # floored to 750
    assert s.stop_after == T
    for t in (0, 1, 100, 374, 375, 600, 749, 750):
        expected = {
            "constant": alpha,
            "cosine": alpha * (1 + torch.cos(torch.tensor(torch.pi * t / T, dtype=torch.float64)).item()) / 2,
            "linear": alpha * (1 - t / T),
        }[name]
        assert s(t) == pytest.approx(expected, abs=1e-12)
    assert s(751) == 0.0 and s.swaps(751, 100, 1000) == 0
    assert s.swaps(0, 100, 1000) == int(alpha * 100)
    assert s.swaps(0, 100, 110) == 10  # capped by the inactive blocks
    assert FractionSchedule("constant", alpha)(10**9) == alpha


def test_stop_after_freezes_topology_and_update_steps():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evo = DynamicSparsity(model, opt, method="set", update_every=3, fraction=0.5, schedule="linear", stop_after=12.5)
    # nnz 10 and 6: at step 12 the fraction is 0, at 15 the topology is frozen
    assert [t for t in range(1, 19) if evo.is_update_step(t)] == [3, 6, 9]
    assert evo.fraction_at(5) == pytest.approx(0.5 * (1 - 5 / 12))
    train(model, opt, evo, range(9))
    frozen = {n: m.to_block_mask() for n, m in sparse_layers(model).items()}
    train(model, opt, evo, range(9, 18))
    assert all(torch.equal(m.to_block_mask(), frozen[n]) for n, m in sparse_layers(model).items())
    assert [r["step"] for r in evo.history] == [3, 6, 9]


# ----------------------------------------------------------------------------- dense gradients
def test_dense_grad_only_for_update_steps():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evo = DynamicSparsity(model, opt, method="rigl", update_every=3, fraction=0.5, stop_after=9)
    seen = []
    train(model, opt, evo, range(12), hook=lambda step: seen.append(model[0].dense_grad is not None))
    assert seen == [t % 3 == 0 and t <= 9 for t in range(1, 13)]
    assert model[0].dense_grad is None and model[2].dense_grad is None


def test_gradient_methods_require_a_backward():
    for method in ("rigl", "evolutionary-gradient"):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        evo = DynamicSparsity(model, opt, method=method, update_every=100)
        with pytest.raises(RuntimeError, match="no backward pass"):
            evo.step()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evo = DynamicSparsity(model, opt, method="rigl", update_every=2)
    train(model, opt, evo, range(1))

    def drop(step):
        model[2].dense_grad = None

    with pytest.raises(RuntimeError, match=r"layer '2' has no dense gradient"):
        train(model, opt, evo, range(1, 2), hook=drop)
    # magnitude methods need no gradient at all
    evo = DynamicSparsity(model, opt, method="set", update_every=1)
    evo.step()


# ----------------------------------------------------------------------------- sync-freedom
@pytest.mark.parametrize(
    "method,options",
    [(m, {}) for m in METHODS]
    + [("evolutionary", {"global_redistribution": True}), ("rigl", {"adaptive": True, "global_redistribution": True})],
)
def test_step_does_not_sync(monkeypatch, method, options):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    evo = DynamicSparsity(model, opt, method=method, update_every=2, fraction=0.5, **options)
    train(model, opt, evo, range(2))  # one update already done: born/revert statistics in play
    recorded = []
    for _ in (2, 3):  # a plain step (fitness accumulation) then an update step
        x = torch.randn(16, 32)
        model(x).square().mean().backward()
        opt.step()
        recorded.append(spy_host_syncs(monkeypatch))  # filled until undo()
        evo.step()
        monkeypatch.undo()
        opt.zero_grad()
    assert evo.num_updates == 2
    assert recorded == [[], []]
    assert len(evo.history) == 2  # reading history is where the one sync happens


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_step_does_not_sync_on_cuda(device, method):
    """On a GPU, CUDA's sync debug mode also catches synchronisations inside C++ ops
    (boolean indexing, blocking copies) that the Python spy above cannot see."""
    model = mlp().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    evo = DynamicSparsity(
        model, opt, method=method, update_every=2, fraction=0.5, global_redistribution=method == "evolutionary"
    )
    for step in range(4):
        x, y = batch(step, model)
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        opt.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            evo.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.zero_grad()
    assert evo.num_updates == 2 and len(evo.history) == 2


def test_overflowed_gradients_do_not_poison_fitness():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    evo = DynamicSparsity(model, opt, method="evolutionary-gradient", update_every=3, fraction=0.5)
    train(model, opt, evo, range(1))

    def overflow(step):
        model[0].weight_values.grad.fill_(float("inf"))  # what a step skipped by GradScaler leaves

    train(model, opt, evo, range(1, 3), hook=overflow)
    assert torch.isfinite(evo.layer_state("0").slots["fitness"]).all()


# ----------------------------------------------------------------------------- checkpoints
def _build(method, seed, options):
    model = mlp(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    evo = DynamicSparsity(
        model, opt, method=method, update_every=3, fraction=0.4, schedule="cosine", stop_after=20, seed=seed, **options
    )
    return model, opt, evo


@pytest.mark.parametrize(
    "method,options", [(m, {}) for m in METHODS] + [("evolutionary", {"global_redistribution": True})]
)
def test_resume_is_bit_identical(method, options):
    steps = 24
    model, opt, evo = _build(method, 0, options)
    train(model, opt, evo, range(steps))

    model_a, opt_a, evo_a = _build(method, 0, options)
    train(model_a, opt_a, evo_a, range(steps // 2))
    assert any(k.endswith("layout_col_indices") for k in model_a.state_dict())  # topology is in the model
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "evo": evo_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model_b, opt_b, evo_b = _build(method, 99, options)  # different init and seed: all must come from ckpt
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    evo_b.load_state_dict(ckpt["evo"])
    train(model_b, opt_b, evo_b, range(steps // 2, steps))

    assert evo.num_updates == evo_b.num_updates > 3
    for (name, p), p_b in zip(model.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(p, p_b), name
    assert evo.history == evo_b.history
    for name in evo.layers:
        a, b = evo.layer_state(name), evo_b.layer_state(name)
        assert torch.equal(a.born, b.born) and torch.equal(a.ever_active, b.ever_active)
        assert all(torch.equal(a.slots[k], b.slots[k]) for k in a.slots)


def test_load_state_dict_checks_method_and_layers():
    model, opt, evo = _build("set", 0, {})
    state = evo.state_dict()
    _, _, other = _build("rigl", 0, {})
    with pytest.raises(ValueError, match="saved with method 'set'"):
        other.load_state_dict(state)
    conv = TinyConvNet()
    evo_conv = DynamicSparsity(conv, torch.optim.SGD(conv.parameters(), lr=0.1), method="set")
    with pytest.raises(ValueError, match="sparse layers"):
        evo_conv.load_state_dict(state)


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_name_the_parameter():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="model has no sparse layers"):
        DynamicSparsity(nn.Linear(4, 4), torch.optim.SGD(nn.Linear(4, 4).parameters(), lr=0.1))
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
            DynamicSparsity(model, opt, fraction=fraction)
    with pytest.raises(TypeError, match="fraction must be a float"):
        DynamicSparsity(model, opt, fraction="0.3")
    for every in (0, -5, 1.5):
        with pytest.raises(ValueError, match="update_every must be an int >= 1"):
            DynamicSparsity(model, opt, update_every=every)
    with pytest.raises(ValueError, match="optimizer does not hold the weight_values parameter of sparse layer '2'"):
        DynamicSparsity(model, torch.optim.SGD([model[0].weight_values], lr=0.1))
    with pytest.raises(ValueError, match="method must be one of"):
        DynamicSparsity(model, opt, method="magic")
    with pytest.raises(ValueError, match="schedule must be one of"):
        DynamicSparsity(model, opt, schedule="exponential")
    with pytest.raises(ValueError, match="schedule='cosine' anneals .* pass stop_after"):
        DynamicSparsity(model, opt, schedule="cosine")
    with pytest.raises(ValueError, match="stop_after must be >= 0"):
        DynamicSparsity(model, opt, stop_after=-1)
    with pytest.raises(ValueError, match="explore must be a float in"):
        DynamicSparsity(model, opt, method="evolutionary", explore=2.0)
    with pytest.raises(TypeError, match="bad option for method 'rigl'"):
        DynamicSparsity(model, opt, method="rigl", explore=0.5)
    with pytest.raises(ValueError, match="already registered"):
        register_method("rigl", PruneNewest)


def test_debug_checks_validate_rebuilt_layouts():
    previous = _checks.enabled()
    sparsekernels.set_debug_checks(True)
    try:
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        evo = DynamicSparsity(model, opt, method="evolutionary", update_every=1, fraction=0.5)
        train(model, opt, evo, range(3))
    finally:
        sparsekernels.set_debug_checks(previous)
    assert evo.num_updates == 3

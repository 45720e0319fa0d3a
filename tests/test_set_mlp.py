"""The SET MLP, its data pipeline, ε-densities, per-epoch updates, training subsets and the
science queue runner (issue 15). Small shapes, synthetic data, CPU, one thread."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsekernels import train
from sparsekernels.data.augment import (
    SetLoader,
    affine_grid,
    affine_theta,
    apply_affine,
    pixel_statistics,
    random_affine,
    set_loaders,
    standardize,
)
from sparsekernels.data.cifar10 import Split, synthetic_cifar10
from sparsekernels.models import SReLU, build_model, set_mlp
from sparsekernels.models.mlp import parse_hidden
from sparsekernels.nn import SparseLinear, sparsify
from sparsekernels.ops import pointwise
from sparsekernels.ops.backends import native_available
from sparsekernels.training.checkpoint import load_checkpoint
from sparsekernels.training.er import er_candidates, er_density, er_epsilon_density
from sparsekernels.training.schedules import build_scheduler
from sparsekernels.training.subset import balanced_indices, balanced_subset, probe_subset
from tests.helpers import assert_close

# A small SET MLP (3072-64-32-64-10) on 600 synthetic images: 6 steps of batch 100 per epoch.
SMALL = [
    *("--model", "set-mlp", "--hidden", "64,32,64", "--synthetic", "--synthetic-size", "600", "--device", "cpu"),
    *("--batch-size", "100", "--lr", "0.01", "--weight-decay", "0", "--no-nesterov", "--schedule", "constant"),
    *("--warmup-epochs", "0", "--augment", "set", "--backend", "reference"),
]
SET_UPDATES = [
    *("--distribution", "er", "--er-epsilon", "4", "--block-size", "8", "--method", "set", "--update-every", "1"),
    *("--update-unit", "epoch", "--update-fraction", "0.3", "--update-schedule", "constant", "--stop-after", "1.0"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


# ----------------------------------------------------------------------------- SReLU and the MLP
def srelu_reference(x, t_l, a_l, r, a_r):
    """The SReLU piecewise definition, elementwise in float64."""
    t_r = t_l + r.abs()
    return torch.where(x < t_l, t_l + a_l * (x - t_l), torch.where(x > t_r, t_r + a_r * (x - t_r), x))


def test_srelu_matches_its_piecewise_definition_and_gradients():
    act = SReLU(16).double()
    with torch.no_grad():  # thresholds apart and slopes away from 1, so every piece is exercised
        act.t_left.uniform_(-1.0, -0.2)
        act.a_left.uniform_(0.1, 0.9)
        act.t_right.uniform_(0.3, 1.0)
        act.a_right.uniform_(1.5, 2.5)
    x = 3 * torch.randn(64, 16, dtype=torch.float64)
    expected = srelu_reference(x, act.t_left, act.a_left, act.t_right, act.a_right)
    assert_close(act(x), expected)
    t_r = act.t_left + act.t_right.abs()
    assert (x < act.t_left).any() and (x > t_r).any() and ((x > act.t_left) & (x < t_r)).any()
    # Gradients of the input and of all four parameters against autograd of the definition.
    x.requires_grad_(True)
    act(x).sum().backward()
    ref_params = [p.detach().clone().requires_grad_() for p in (act.t_left, act.a_left, act.t_right, act.a_right)]
    xr = x.detach().clone().requires_grad_()
    srelu_reference(xr, *ref_params).sum().backward()
    assert_close(x.grad, xr.grad)
    for p, q in zip((act.t_left, act.a_left, act.t_right, act.a_right), ref_params):
        assert_close(p.grad, q.grad)


def test_dropout_zeroes_a_fraction_p_scales_the_rest_and_is_identity_in_eval():
    from sparsekernels.models.mlp import Dropout

    drop = Dropout(0.3)
    x = torch.rand(200, 500) + 0.5
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.01
    assert_close(y[kept], (x / 0.7)[kept])
    x.requires_grad_(True)
    drop(x).sum().backward()  # gradient: the same mask and scale
    assert torch.equal(x.grad == 0, ~kept) or ((x.grad == 0).float().mean() - 0.3).abs() < 0.01
    assert torch.allclose(x.grad[x.grad != 0], torch.tensor(1 / 0.7))
    drop.eval()
    assert drop(x) is x and isinstance(drop, nn.Dropout)


def test_srelu_init_and_errors():
    act = SReLU(4000)
    assert torch.equal(act.t_left, torch.zeros(4000)) and torch.equal(act.a_right, torch.ones(4000))
    assert 0 <= act.a_left.min() and act.a_left.max() <= 1 and act.a_left.std() > 0.2
    bound = math.sqrt(3 / math.sqrt(4000))
    assert act.t_right.abs().max() <= bound and act.t_right.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="num_features"):
        SReLU(0)
    with pytest.raises(ValueError, match="16 features"):
        SReLU(16)(torch.zeros(2, 8))


def test_set_mlp_architecture_and_keras_like_init():
    model = set_mlp()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(4000, 3072), (1000, 4000), (4000, 1000), (10, 4000)]
    assert sum(isinstance(m, SReLU) for m in model.modules()) == 3
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3] * 3
    for m in linears:  # Glorot-uniform over the dense shape, zero bias
        out_f, in_f = m.weight.shape
        bound = math.sqrt(6 / (in_f + out_f))
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.99 * bound
        assert torch.equal(m.bias, torch.zeros(out_f))
    relu = set_mlp(hidden="64,32", activation="relu", dropout=0.0, width=0.5)
    assert [m.out_features for m in relu.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]
    assert not any(isinstance(m, (SReLU, nn.Dropout)) for m in relu.modules())
    assert relu(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert isinstance(build_model("set-mlp", hidden=(8,)), nn.Module)
    with pytest.raises(ValueError, match="hidden sizes"):
        parse_hidden("4000,x")
    with pytest.raises(ValueError, match="activation"):
        set_mlp(activation="gelu")
    with pytest.raises(ValueError, match="dropout"):
        set_mlp(dropout=1.0)


@pytest.mark.skipif(not native_available(), reason="native extension not built")
def test_block8_sparse_linear_on_native_backend_matches_float64():
    layer = SparseLinear(64, 48, density=0.3, block_size=8)
    layer.backend = "native"
    x = torch.randn(20, 64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    dense = layer.to_dense().double()
    xd = x.detach().double().requires_grad_()
    yd = dense(xd)
    yd.backward(g.double())
    assert_close(y, yd)
    assert_close(x.grad, xd.grad)
    # dW only at active blocks: compare with the dense weight gradient gathered at them.
    lay = layer.layout
    rows, cols = lay.row_indices.long(), lay.col_indices.long()
    dw = dense.weight.grad.reshape(6, 8, 8, 8).permute(0, 2, 1, 3)[rows, cols]
    assert_close(layer.weight_values.grad, dw)


# ----------------------------------------------------------------------------- ER epsilon densities
def test_er_epsilon_reproduces_set_densities():
    with torch.device("meta"):
        model = set_mlp()
    names = [n for n, _ in er_candidates(model, 8)]
    assert names == ["layers.0", "layers.3", "layers.6"]  # output layer stays dense
    expected = {"layers.0": 20 * 7072 / (3072 * 4000), "layers.3": 20 * 5000 / 4e6, "layers.6": 20 * 5000 / 4e6}
    assert abs(expected["layers.0"] - 0.011510) < 1e-6 and expected["layers.3"] == 0.025
    from sparsekernels.nn.sparsify import layer_densities

    shapes = [s for _, s in er_candidates(model, 8)]
    got = layer_densities(shapes, er_epsilon_density(model, 20, 8), "er")
    assert got == pytest.approx(list(expected.values()), rel=1e-12)
    # Blocks 16/32 cut 4000 but not 1000: only 4096-1024-4096 is sparse in every hidden layer there.
    with torch.device("meta"):
        wide = set_mlp(hidden="4096,1024,4096")
    assert [n for n, _ in er_candidates(model, 16)] == [n for n, _ in er_candidates(model, 32)] == ["layers.0"]
    assert len(er_candidates(wide, 16)) == 3 and len(er_candidates(wide, 32)) == 3
    with pytest.raises(ValueError, match="block size 64"):
        er_epsilon_density(model, 20, 64)


def test_er_epsilon_through_sparsify_gives_eps_densities_within_a_block():
    model = set_mlp(hidden="256,64,256")
    eps = 10
    density = er_epsilon_density(model, eps, 8)
    summary = sparsify(model, density=density, block_size=8, distribution="er", backend="reference")
    for s in summary.sparse_layers:
        k, c = s.shape
        blocks = (k // 8) * (c // 8)
        assert s.nnz == round(er_density(s.shape, eps) * blocks), s
    # A layer whose ε-density exceeds 1 is dense in both ways of computing it.
    small = nn.Sequential(nn.Linear(16, 16), nn.Linear(256, 256), nn.Linear(256, 10))
    d = er_epsilon_density(small, 10, 8)
    assert er_density((16, 16), 10) == 1.0
    assert layer_densities_of(small, d) == pytest.approx([1.0, 10 * 512 / 256**2], rel=1e-12)


def layer_densities_of(model: nn.Module, density: float) -> list[float]:
    from sparsekernels.nn.sparsify import layer_densities

    return layer_densities([s for _, s in er_candidates(model, 8)], density, "er")


def test_cli_er_epsilon_sets_the_density_and_checks_its_flags(capsys):
    args = train.parse_args(["--model", "set-mlp", "--distribution", "er", "--er-epsilon", "20", "--block-size", "8"])
    params = [3072 * 4000, 4000 * 1000, 1000 * 4000]
    kept = 20 * 7072 + 20 * 5000 + 20 * 5000
    assert args.density == pytest.approx(kept / sum(params), rel=1e-12)
    capsys.readouterr()
    train.parse_args(["--model", "set-mlp", "--distribution", "er", "--er-epsilon", "20", "--block-size", "16"])
    assert "layers.3, layers.6" in capsys.readouterr().err  # 1000 is not a multiple of 16: warned
    for bad, message in (
        (["--er-epsilon", "20"], "--distribution er"),
        (["--distribution", "er", "--er-epsilon", "-1"], "--er-epsilon must be positive"),
        (["--distribution", "er", "--er-epsilon", "20", "--block-size", "64"], "block size 64"),
        (["--hidden", "12,,x"], "--hidden"),
        (["--train-fraction", "0"], "--train-fraction"),
        (["--stop-at-epoch", "3"], "--checkpoint-every"),
    ):
        with pytest.raises(SystemExit):
            train.parse_args(["--model", "set-mlp", "--block-size", "8", *bad])
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- data pipeline
def test_pixel_statistics_and_standardize_match_numpy():
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    mean, std = pixel_statistics(images, chunk=64)
    arr = images.numpy().astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), arr.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), arr.std(0), rtol=1e-5)
    x = standardize(images, mean, std)
    assert (
        x.dtype == torch.float32 and x.mean(0).abs().max() < 1e-4 and (x.std(0, unbiased=False) - 1).abs().max() < 1e-4
    )


def test_affine_rotation_shift_and_mirror_are_exact_on_the_pixel_grid():
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    b = x.shape[0]
    zero, one = torch.zeros(b, dtype=x.dtype), torch.ones(b, dtype=x.dtype)
    assert_close(apply_affine(x, affine_theta(zero, zero, zero, one)), x)
    assert_close(apply_affine(x, affine_theta(zero, zero, zero, -one)), x.flip(3))
    # 90°: pixel centres map onto pixel centres, so bilinear sampling is a pure permutation.
    rot = apply_affine(x, affine_theta(torch.full((b,), math.pi / 2, dtype=x.dtype), zero, zero, one))
    assert any(rel_ok(rot, torch.rot90(x, k, dims=(2, 3))) for k in (1, 3))
    # A shift by 2 pixels (2/8 of the width = 0.5 in normalised units) with nearest-edge fill.
    shifted = apply_affine(x, affine_theta(zero, torch.full((b,), 0.5, dtype=x.dtype), zero, one))
    expected = torch.cat([x[..., 2:], x[..., -1:].expand(-1, -1, -1, 2)], dim=3)
    assert_close(shifted, expected)


@pytest.mark.parametrize("shape", [(100, 32, 32), (7, 5, 9), (3, 1, 4), (2, 17, 1), (2, 1, 1), (2, 3, 333)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_affine_grid_matches_torch_affine_grid(shape, dtype):
    """Our broadcast grid against ``F.affine_grid`` (align_corners=False) to the dtype's rounding,
    over odd and single-pixel sizes, with large angles and shifts."""
    n, h, w = shape
    u = torch.rand(n, 4, generator=torch.Generator().manual_seed(n * h + w), dtype=torch.float64)
    theta = affine_theta(6 * u[:, 0] - 3, 4 * u[:, 1] - 2, 4 * u[:, 2] - 2, torch.where(u[:, 3] < 0.5, -1.0, 1.0))
    theta = theta.to(dtype)
    got = affine_grid(theta, h, w)
    want = torch.nn.functional.affine_grid(theta, [n, 3, h, w], align_corners=False)
    assert got.shape == want.shape == (n, h, w, 2) and got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert (got - want).abs().max() <= 8 * eps * (1 + want.abs().max()), (got - want).abs().max()


def rel_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).norm() / b.norm()) < 1e-10)


def test_random_affine_ranges_and_reproducibility():
    x = torch.randn(64, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = random_affine(x, generator=g1), random_affine(x, generator=g2)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, x)
    # Without rotation/shift each image is itself or its mirror, both of which occur.
    same = random_affine(x, 0.0, 0.0, True, torch.Generator().manual_seed(1))
    plain = [(same[i] - x[i]).abs().max() < 1e-5 for i in range(64)]
    mirrored = [(same[i] - x[i].flip(2)).abs().max() < 1e-5 for i in range(64)]
    assert all(p or m for p, m in zip(plain, mirrored)) and 10 < sum(mirrored) < 54
    with pytest.raises(ValueError, match="float"):
        random_affine(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))


def test_set_loaders_standardise_with_training_statistics_and_augment_only_training():
    data = synthetic_cifar10(400, 100, seed=3)
    train_loader, test_loader = set_loaders(data.train, data.test, 100, seed=7)
    assert isinstance(train_loader, SetLoader) and train_loader.augment and not test_loader.augment
    assert torch.equal(train_loader.mean, test_loader.mean)
    xs = torch.cat([x for x, _ in test_loader])
    mean, std = pixel_statistics(data.train.images)
    assert_close(xs, standardize(data.test.images, mean, std))
    train_loader.set_epoch(2)
    first = [x.clone() for x, _ in train_loader]
    train_loader.set_epoch(2)
    again = [x for x, _ in train_loader]
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="image shape"):
        SetLoader(data.train, 10, mean=mean[:, :4], std=std, train=True)


# ----------------------------------------------------------------------------- subsets
def test_balanced_subset_is_class_balanced_fixed_and_seeded():
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000)]
    idx = balanced_indices(labels, 0.1, seed=0)
    assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.full((10,), 10))
    assert torch.equal(idx, balanced_indices(labels, 0.1, seed=0)) and torch.equal(idx, idx.sort().values)
    assert not torch.equal(idx, balanced_indices(labels, 0.1, seed=1))
    assert torch.equal(balanced_indices(labels, 1.0), torch.arange(1000))
    split = Split(torch.randint(0, 255, (1000, 3, 4, 4), dtype=torch.uint8), labels)
    sub = balanced_subset(split, 0.25, seed=2)
    assert len(sub) == 250 and torch.equal(sub.images, split.images[balanced_indices(labels, 0.25, 2)])
    probe = probe_subset(split, 100)
    assert len(probe) == 100 and probe_subset(split, 5000) is split
    with pytest.raises(ValueError, match="fraction"):
        balanced_indices(labels, 0.0)


# ----------------------------------------------------------------------------- schedules
def test_constant_schedule_keeps_the_lr_after_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_scheduler(opt, "constant", total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01]) and lrs[4:] == pytest.approx([0.01] * 16)


# ----------------------------------------------------------------------------- the CLI end to end
def test_cli_set_run_updates_once_per_epoch_after_evaluation(tmp_path):
    out = tmp_path / "set"
    argv = [*SMALL, *SET_UPDATES, "--epochs", "3", "--eval-train", "200", "--checkpoint-every", "1"]
    assert train.main([*argv, "--out", str(out)]) == 0
    record = read_record(out)
    assert record["config"]["update_unit"] == "epoch" and record["steps_per_epoch"] == 6
    history = record["structure_history"]
    # Engine steps 6 and 12 are the first steps of epochs 2 and 3 (the engine skips step 1):
    # no update after the last epoch, none before the first evaluation.
    assert [h["step"] for h in history] == [6, 12]
    layers = {s["name"]: s for s in record["sparsity"]["layers"] if s["status"] == "sparse"}
    for h in history:  # SET: exactly int(0.3 nnz) blocks of every layer pruned and regrown
        for name, entry in h["layers"].items():
            assert entry["changed"] == int(0.3 * layers[name]["nnz"])
    epoch1 = load_checkpoint(out / "checkpoint-epoch001.pt")
    assert epoch1["trainer"]["engine"]["updates"] == 0
    assert load_checkpoint(out / "checkpoint-epoch002.pt")["trainer"]["engine"]["updates"] == 1
    for e in record["epochs"]:  # per-epoch train and test accuracy, and the generalisation gap
        assert 0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1
        assert 0 < e["epoch_cpu_seconds"] < 10 * e["epoch_seconds"] + 1
        assert e["generalization_gap"] == pytest.approx(e["train_eval_acc"] - e["test_acc"])
    opt_groups = epoch1["trainer"]["optimizer"]["param_groups"]
    assert opt_groups[0]["nesterov"] is False and opt_groups[0]["weight_decay"] == 0


def test_cli_eval_every_skips_evaluations_without_changing_training(tmp_path):
    """--eval-every 2: epochs 2 and 4 evaluated, 1 and 3 not, the pause at 3 and the last epoch
    (5) always; the weights and the evaluated accuracies equal those of a run that evaluates
    every epoch (evaluation consumes no randomness of training)."""
    argv = [*SMALL, *SET_UPDATES, "--epochs", "5", "--eval-train", "100", "--checkpoint-every", "1"]
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    assert train.main([*argv, "--out", str(every)]) == 0
    assert train.main([*argv, "--out", str(sparse), "--eval-every", "2", "--stop-at-epoch", "3"]) == 0
    resume = ["--resume", str(sparse / "checkpoint-epoch003.pt")]
    assert train.main([*argv, "--out", str(sparse), "--eval-every", "2", *resume]) == 0
    a, b = read_record(every), read_record(sparse)
    assert [e["epoch"] for e in b["epochs"] if "test_acc" in e] == [2, 3, 4, 5]
    assert all("generalization_gap" not in e and "train_eval_acc" not in e for e in b["epochs"] if e["epoch"] == 1)
    for ea, eb in zip(a["epochs"], b["epochs"]):
        assert ea["train_loss"] == eb["train_loss"]
        if "test_acc" in eb:
            assert ea["test_acc"] == eb["test_acc"] and ea["train_eval_acc"] == eb["train_eval_acc"]
    assert a["structure_history"] == b["structure_history"]
    assert b["final_test_acc"] == a["final_test_acc"]
    # Each segment (start, resume) records the code that trained it.
    fused = "fused" if pointwise.fused_enabled() else "aten"
    assert [seg["pointwise"] for seg in b["segments"]] == [fused, fused] and "git_commit" in b["segments"][1]
    assert b["best_test_acc"] == max(e["test_acc"] for e in b["epochs"] if "test_acc" in e)
    ma = load_checkpoint(every / "checkpoint-epoch005.pt")["trainer"]["model"]
    mb = load_checkpoint(sparse / "checkpoint-epoch005.pt")["trainer"]["model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    with pytest.raises(SystemExit):
        train.parse_args([*argv, "--eval-every", "0"])


def test_cli_initial_topology_random_and_checkpoints_from_before_the_option(tmp_path):
    from sparsekernels.training.checkpoint import save_checkpoint

    argv = [*SMALL, *SET_UPDATES, "--epochs", "2", "--checkpoint-every", "1", "--block-size", "1"]
    rand, old = tmp_path / "rand", tmp_path / "old"
    assert train.main([*argv, "--initial-topology", "random", "--out", str(rand)]) == 0
    assert read_record(rand)["config"]["initial_topology"] == "random"
    assert train.main([*argv, "--stop-at-epoch", "1", "--out", str(old)]) == 0
    ckpt = load_checkpoint(old / "checkpoint-epoch001.pt")
    # Another topology, another run: the first layers' active cells differ.
    rand_layout = load_checkpoint(rand / "checkpoint-epoch001.pt")["trainer"]["model"]["layers.0.layout_col_indices"]
    assert not torch.equal(rand_layout, ckpt["trainer"]["model"]["layers.0.layout_col_indices"])
    del ckpt["config"]["initial_topology"]  # a checkpoint written before the option existed
    save_checkpoint(old / "checkpoint-epoch001.pt", ckpt)
    resume = ["--resume", str(old / "checkpoint-epoch001.pt"), "--out", str(old)]
    with pytest.raises(SystemExit, match="initial-topology"):
        train.main([*argv, *resume, "--initial-topology", "random"])
    assert train.main([*argv, *resume]) == 0  # it trained with the old behaviour, magnitude


def test_cli_paused_and_resumed_run_is_bit_identical(tmp_path):
    argv = [*SMALL, *SET_UPDATES, "--epochs", "3", "--eval-train", "100", "--checkpoint-every", "1"]
    argv += ["--train-fraction", "0.5"]
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert train.main([*argv, "--out", str(straight)]) == 0
    assert train.main([*argv, "--out", str(pieces), "--stop-at-epoch", "1"]) == 0
    assert not (pieces / "checkpoint-epoch002.pt").exists()
    resume = ["--resume", str(pieces / "checkpoint-epoch001.pt")]
    assert train.main([*argv, "--out", str(pieces), "--stop-at-epoch", "2", *resume]) == 0
    assert train.main([*argv, "--out", str(pieces), "--resume", str(pieces / "checkpoint-epoch002.pt")]) == 0
    a, b = read_record(straight), read_record(pieces)
    for key in ("train_loss", "train_acc", "test_acc", "test_loss", "train_eval_acc"):
        assert [e[key] for e in a["epochs"]] == [e[key] for e in b["epochs"]], key
    assert a["structure_history"] == b["structure_history"]
    ma = load_checkpoint(straight / "checkpoint-epoch003.pt")["trainer"]["model"]
    mb = load_checkpoint(pieces / "checkpoint-epoch003.pt")["trainer"]["model"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    labels = synthetic_cifar10(600, 150, seed=0).train.labels  # what --synthetic-size 600 --seed 0 trains on
    assert a["data"]["train_images"] == len(balanced_indices(labels, 0.5, 0)) and 290 <= len(labels) // 2 <= 310
    assert "class-balanced 0.5" in a["data"]["source"]
    # Another subset seed is another run: resuming it from this checkpoint is refused.
    with pytest.raises(SystemExit, match="subset-seed"):
        train.main([*argv, "--out", str(pieces), "--subset-seed", "1", *resume])


def test_cli_static_er_mask_stays_fixed_and_dense_mlp_runs(tmp_path):
    static = tmp_path / "static"
    argv = [*SMALL, "--distribution", "er", "--er-epsilon", "4", "--block-size", "8", "--epochs", "2"]
    assert train.main([*argv, "--checkpoint-every", "1", "--out", str(static)]) == 0
    first = load_checkpoint(static / "checkpoint-epoch001.pt")["trainer"]["model"]
    last = load_checkpoint(static / "checkpoint-epoch002.pt")["trainer"]["model"]
    layout_keys = [k for k in first if "layout" in k]
    assert layout_keys and all(torch.equal(first[k], last[k]) for k in layout_keys)
    assert read_record(static)["structure_history"] is None
    dense = tmp_path / "dense"
    assert train.main([*SMALL, "--epochs", "1", "--augment", "none", "--activation", "relu", "--out", str(dense)]) == 0
    record = read_record(dense)
    assert record["sparsity"] is None and record["parameters"]["total"] == (
        3072 * 64 + 64 + 64 * 32 + 32 + 32 * 64 + 64 + 64 * 10 + 10
    )


# ----------------------------------------------------------------------------- the queue runner
def _load_science_script(name: str):
    """``benchmarks/science/<name>.py`` as a module (the folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "science" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_queue():
    return _load_science_script("run_queue")


def test_queue_plan_commands_parse_and_checkpoints_are_pruned(tmp_path):
    q = _load_queue()
    assert q.PLAN[0] == ("set-b8-s0", 100) and all(name in q.RUNS for name, _ in q.PLAN)
    assert all(target <= q.RUNS[name]["epochs"] for name, target in q.PLAN)
    # Every run reaches its total somewhere in the plan.
    assert all(max(t for n, t in q.PLAN if n == name) == q.RUNS[name]["epochs"] for name, _ in q.PLAN)
    conv = train.parse_args([*q.command(q.CONV_COMPARE, tmp_path, tmp_path), "--resume", "auto"])
    assert conv.compare.split(",") == list(q.CONV_CONFIGS) and conv.model == "resnet20" and conv.density == 0.1
    assert conv.distribution == "erk" and conv.block_size in (16, 32) and conv.epochs >= 30
    assert conv.fused_bn_relu is False  # every configuration as the ones trained before the fused op
    equal_cpu = train.parse_args([*q.command(q.CONV_DENSE_EQUAL_CPU, tmp_path, tmp_path), "--resume", "auto"])
    assert equal_cpu.compare == "dense" and equal_cpu.epochs == 12 and equal_cpu.fused_bn_relu is False
    assert {k: v for k, v in vars(equal_cpu).items() if k not in ("compare", "epochs", "out")} == {
        k: v for k, v in vars(conv).items() if k not in ("compare", "epochs", "out")
    }  # the comparison's dense but for its length
    for name in dict.fromkeys(n for n, _ in q.PLAN if n not in (q.CONV_COMPARE, q.CONV_DENSE_EQUAL_CPU)):
        args = train.parse_args(q.command(name, tmp_path, tmp_path))
        assert args.model == "set-mlp" and args.augment == "set" and args.batch_size == 100
        if name.startswith("dense"):
            assert args.density == 1.0
        else:
            assert args.distribution == "er" and args.er_epsilon == 20 and args.density < 0.02
            assert args.block_size in (1, 4, 8, 16, 32)
            assert (args.block_size in (16, 32)) == (args.hidden == "4096,1024,4096")
        if "-f0." in name:  # as many optimizer steps as 100 full-data epochs, evaluations as often
            assert args.epochs * args.train_fraction == pytest.approx(100)
            assert args.eval_every * args.train_fraction == pytest.approx(1)
        else:
            assert args.eval_every == 1
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    for e in (1, 2, 3, 10):
        (run / f"checkpoint-epoch{e:03d}.pt").write_bytes(b"")
    (run / "checkpoint-epoch011.pt.tmp").write_bytes(b"")
    assert q.epochs_done(run) == 10
    q.prune_checkpoints(run, keep=2)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-epoch003.pt", "checkpoint-epoch010.pt", "checkpoint-epoch011.pt.tmp"
    ]  # fmt: skip


def test_queue_log_writes_runs_md_and_copies_records(tmp_path):
    q = _load_queue()
    runs, results = tmp_path / "runs", tmp_path / "results"
    folder = runs / "set-b8-s0"
    folder.mkdir(parents=True)
    epochs = [{"epoch": i, "epoch_seconds": 30.0 + i, "eval_seconds": 1.0, "test_acc": 0.1 * i} for i in (1, 2, 3)]
    (folder / "record.json").write_text(json.dumps({"epochs": epochs}))
    (folder / "checkpoint-epoch003.pt").write_bytes(b"")
    log = q.Log(runs, tmp_path / "data", results, [("set-b8-s0", 200), ("dense-s0", 50)])
    log.refresh()
    text = (results / "RUNS.md").read_text()
    assert "| set-b8-s0 | paused | 3 / 200 (plan: 200) | 32.5 | - | 1.0 | 30.00 | 30.00 |" in text
    assert "| dense-s0 | pending | 0 / 200 (plan: 50) |" in text
    assert "--er-epsilon 20" in text and json.loads((results / "set-b8-s0" / "record.json").read_text())
    # A run outside the plan (trained by a queue started with --only) is listed once it has a folder.
    assert "static-b8-s1" not in text
    (runs / "static-b8-s1").mkdir()
    log.refresh()
    assert "| static-b8-s1 | pending | 0 / 200 (plan: -) |" in (results / "RUNS.md").read_text()


def test_queue_skips_a_run_another_queue_holds_and_takes_it_when_free(tmp_path, monkeypatch):
    """Two queues share the plan: a run locked by one is never trained by the other; the other
    trains what is free, waits, and takes the skipped entry once the lock is released."""
    import threading

    q = _load_queue()
    monkeypatch.setattr(q, "COMMON", [*SMALL, "--checkpoint-every", "1"])
    monkeypatch.setattr(q, "POLL_SECONDS", 0.2)
    monkeypatch.setattr(q, "wait_for_data", lambda data_dir: None)  # synthetic data
    for name in ("held-s0", "free-s0"):
        monkeypatch.setitem(q.RUNS, name, {"args": SET_UPDATES, "epochs": 1})
    monkeypatch.setattr(q, "PLAN", [("held-s0", 1), ("free-s0", 1)])
    runs, results = tmp_path / "runs", tmp_path / "results"
    log = q.Log(runs, tmp_path, results, q.PLAN)
    other = q.RunLock(runs, "held-s0")
    assert other.acquire() and q.is_running(runs, "held-s0") and not q.is_running(runs, "free-s0")
    assert q.run_entry("held-s0", 1, log, runs, tmp_path) is None  # held: not trained
    assert q.epochs_done(runs / "held-s0") == 0
    log.refresh()
    assert "| held-s0 | running | 0 / 1 (plan: 1) |" in (results / "RUNS.md").read_text()

    def release_when_free_is_done():
        while q.epochs_done(runs / "free-s0") < 1:
            threading.Event().wait(0.05)
        other.release()

    releaser = threading.Thread(target=release_when_free_is_done)
    releaser.start()
    pid_file = tmp_path / "pid"
    argv = ["--runs-root", str(runs), "--data-dir", str(tmp_path), "--results", str(results)]
    assert q.main([*argv, "--pid-file", str(pid_file)]) == 0
    releaser.join()
    assert pid_file.read_text().strip().isdigit()
    assert q.epochs_done(runs / "free-s0") == 1 and q.epochs_done(runs / "held-s0") == 1
    assert not q.is_running(runs, "held-s0")
    assert "| held-s0 | done | 1 / 1 (plan: 1) |" in (results / "RUNS.md").read_text()


def test_queue_never_starts_over_a_run_whose_checkpoints_are_gone(tmp_path, monkeypatch, capsys):
    """A new machine has the repository's records but none of the checkpoints: the queue leaves
    such runs as recorded (RUNS.md says so), never replaces a longer record with a shorter one,
    and starts a run over only with --restart-lost, keeping the old record beside the new one."""
    q = _load_queue()
    monkeypatch.setattr(q, "COMMON", [*SMALL, "--checkpoint-every", "1"])
    monkeypatch.setattr(q, "wait_for_data", lambda data_dir: None)  # synthetic data
    monkeypatch.setitem(q.RUNS, "cut-s0", {"args": SET_UPDATES, "epochs": 4})
    monkeypatch.setitem(q.RUNS, "whole-s0", {"args": SET_UPDATES, "epochs": 2})
    monkeypatch.setattr(q, "PLAN", [("cut-s0", 4), ("whole-s0", 2)])
    runs, results = tmp_path / "runs", tmp_path / "results"
    recorded = {"epochs": [{"epoch": i, "epoch_seconds": 5.0, "test_acc": 0.25} for i in (1, 2, 3)]}
    whole = {"epochs": [{"epoch": i, "epoch_seconds": 5.0, "test_acc": 0.5} for i in (1, 2)]}
    for name, record in (("cut-s0", recorded), ("whole-s0", whole)):
        (results / name).mkdir(parents=True)
        (results / name / "record.json").write_text(json.dumps(record))
    argv = ["--runs-root", str(runs), "--data-dir", str(tmp_path), "--results", str(results)]
    argv += ["--pid-file", str(tmp_path / "pid")]

    assert q.main(argv) == 0
    assert q.epochs_done(runs / "cut-s0") == 0 and q.epochs_done(runs / "whole-s0") == 0  # nothing trained
    assert "cut-s0: the repository holds its record at 3 epochs" in capsys.readouterr().out
    assert json.loads((results / "cut-s0" / "record.json").read_text()) == recorded
    text = (results / "RUNS.md").read_text()
    assert "| cut-s0 | cut off: checkpoints lost | 3 / 4 (plan: 4) | 5.0 | - | 0.0 | 25.00 | 25.00 |" in text
    assert "| whole-s0 | done | 2 / 2 (plan: 2) |" in text

    # A shorter record under the runs root (a run started over by hand) never replaces the longer copy.
    (runs / "cut-s0").mkdir(parents=True)
    (runs / "cut-s0" / "record.json").write_text(json.dumps({"epochs": recorded["epochs"][:1]}))
    q.Log(runs, tmp_path, results, q.PLAN).refresh()
    assert json.loads((results / "cut-s0" / "record.json").read_text()) == recorded
    (runs / "cut-s0" / "record.json").unlink()

    assert q.main([*argv, "--restart-lost", "--only", "cut-s0"]) == 0
    assert q.epochs_done(runs / "cut-s0") == 4
    assert json.loads((results / "cut-s0" / "record.lost-3ep.json").read_text()) == recorded
    assert q.recorded_epochs(json.loads((results / "cut-s0" / "record.json").read_text())) == 4
    assert "| cut-s0 | done | 4 / 4 (plan: 4) |" in (results / "RUNS.md").read_text()
    assert q.epochs_done(runs / "whole-s0") == 0  # --only: the other run is untouched


def _load_summarize():
    return _load_science_script("summarize")


def _fake_record(accs: list[float], total_epochs: int, churn: list[float] | None = None) -> dict:
    epochs = [
        {"epoch": i + 1, "test_acc": a, "wall_clock": 10.0 * (i + 1), "epoch_seconds": 10.0, "train_eval_acc": a + 0.1,
         "generalization_gap": 0.1, "epoch_cpu_seconds": 9.0}
        for i, a in enumerate(accs)
    ]  # fmt: skip
    history = [{"step": 5 * (i + 1), "churn": c} for i, c in enumerate(churn or [])]
    return {"epochs": epochs, "steps_per_epoch": 5, "total_steps": 5 * total_epochs, "steps_done": 5 * len(accs),
            "structure_history": history or None}  # fmt: skip


def test_summarize_tables_and_plots_from_partial_records(tmp_path):
    s = _load_summarize()
    records = {
        "set-b8-s0": _fake_record([0.05 * (i + 1) for i in range(11)] + [0.61], 200, churn=[0.3] * 11),
        "evolutionary-b8-s0": _fake_record([0.2] * 3, 200, churn=[0.3, 0.02, 0.005]),
        "dense-s0": _fake_record([0.5, 0.55], 200),
        "set-b8-s1": _fake_record([0.05 * (i + 1) for i in range(9)] + [0.61, 0.62], 200),
        "set-b8-f0.1-s0": _fake_record([0.3], 1000),
        "dense-f0.25-s0": _fake_record([0.1, 0.2, 0.25, 0.35, 0.3], 400),
    }
    for e in records["dense-f0.25-s0"]["epochs"][:3]:  # --eval-every 4: epochs 1-3 not evaluated
        for key in ("test_acc", "train_eval_acc", "generalization_gap"):
            del e[key]
    for name, r in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "record.json").write_text(json.dumps(r))
    assert s.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "PARTIAL RESULTS" in text
    # Epoch 10 of the SET run: 50.00 % vs published 42.8 -> +7.20; later epochs not reached -> "-".
    assert "| set-b8-s0 | set | +7.20 | - | - | - |" in text
    assert "| evolutionary-b8-s0 | 3 | 0.300 | 0.005 | 3 | " in text  # churn < 1 % from the update after epoch 3
    assert "| set-b8-s0 | epoch 12 (0.03 CPU h) | not yet (12 ep) |" in text  # 60.8 % first reached at epoch 12
    # Seeds 0 and 1 of SET: epoch 10 at 50.00 and 61.00 %; 60.8 % first reached at epochs 12 and 10.
    assert "| set-b8 | 55.50 ± 5.50 (2 seeds) | - | - | - | 11 ± 1 (2 seeds) |" in text
    assert "| dense | - | - | - | - | not yet |" in text  # 2 epochs only
    slow = _fake_record([0.5] * 3, 200)
    assert s.reached_by_seeds([records["set-b8-s0"], slow], 60.8) == "12 (1 seed); 1 seed(s) not yet"
    assert "set-b8-f0.1-s0 | 1/1000 partial | 30.00 |" in text
    assert "dense-f0.25-s0 | 5/400 partial | 30.00 | 35.00 |" in text  # last evaluated, best evaluated
    for png in ("accuracy_vs_epoch.png", "accuracy_vs_wallclock.png", "churn_vs_epoch.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert s.settled_epoch([(1, 0.3), (2, 0.005), (3, 0.02)]) is None
    # The published per-epoch curves (0.01 steps) agree with the values the issue quotes (0.1 steps).
    for kind, quoted in s.PUBLISHED.items():
        curve = s.PUBLISHED_CURVES[kind]
        assert len(curve) == 200
        assert all(abs(curve[e - 1] - q) <= 0.051 for e, q in zip((10, 50, 100, 200), quoted)), kind
    set_curve = s.PUBLISHED_CURVES["set"]
    expected = sum(5.0 * e - set_curve[e - 1] for e in (9, 10, 11)) / 3
    assert s.mean_difference(records["set-b8-s0"], "set", 9, 11) == (pytest.approx(expected), 3)
    assert s.mean_difference(records["set-b8-s0"], "set", 150, 160) is None
    assert s.parse_name("evolutionary-gradient-b8-f0.25-s1") == ("evolutionary-gradient-b8", 0.25, 1)


def test_summarize_compares_train_fractions_at_equal_optimizer_steps(tmp_path):
    """Epoch 500 of a 0.1-fraction run and epoch 200 of a 0.25 one take the steps of 50
    full-data epochs: they sit beside the full-data runs' epoch 50 (not 100, not their last)."""
    s = _load_summarize()
    records = {
        "dense-s0": _fake_record([0.5] * 49 + [0.61] + [0.7] * 10, 200),
        "set-b8-s0": _fake_record([0.4] * 49 + [0.57], 200),
        "dense-f0.1-s0": _fake_record([0.3] * 499 + [0.42] + [0.9] * 3, 1000),
        "set-b8-f0.25-s0": _fake_record([0.3] * 199 + [0.51], 400),
        "static-b8-s0": _fake_record([0.2] * 60, 200),  # no train-fraction run: left out
    }
    records["dense-f0.1-s0"]["epochs"][499]["generalization_gap"] = 0.25
    found = s.at_equal_steps(records, 50)
    assert {f: {c: e["epoch"] for c, e in g.items()} for f, g in found.items()} == {
        1.0: {"dense": 50, "set-b8": 50},
        0.1: {"dense": 500},
        0.25: {"set-b8": 200},
    }
    assert s.at_equal_steps(records, 100) == {}  # no run reached the steps of 100 epochs
    text = s.summary_markdown(records)
    assert "| 0.1 | 42.00 (gap 25.00) | - |" in text and "| 1 | 61.00 (gap 10.00) | 57.00 (gap 10.00) |" in text
    assert s.plot_train_fraction(records, tmp_path / "tf.png") and (tmp_path / "tf.png").stat().st_size > 1000
    assert not s.plot_train_fraction({"dense-s0": records["dense-s0"]}, tmp_path / "none.png")


def test_summarize_established_churn_leaves_out_reverted_growth():
    s = _load_summarize()
    record = _fake_record([0.1] * 3, 200)
    record["structure_history"] = [
        {"step": 5, "churn": 0.3, "layers": {"a": {"changed": 30, "reverted": 0}, "b": {"changed": 10, "reverted": 0}}},
        {
            "step": 10,
            "churn": 0.3,
            "layers": {"a": {"changed": 30, "reverted": 30}, "b": {"changed": 10, "reverted": 5}},
        },
        {"step": 15, "churn": 0.0, "layers": {"a": {"changed": 0, "reverted": 0}}},
    ]
    assert s.established_churn_by_epoch(record) == [(1.0, 0.3), (2.0, pytest.approx(0.3 * 5 / 40)), (3.0, 0.0)]


def test_summarize_splits_cpu_time_by_the_code_of_each_segment():
    s = _load_summarize()
    record = _fake_record([0.1] * 6, 200)
    for e, cpu in zip(record["epochs"], (20.0, 10.0, 10.0, 9.0, 6.0, 6.0)):
        e["epoch_cpu_seconds"] = cpu
    record["segments"] = [{"start_epoch": 0}, {"start_epoch": 3, "pointwise": "fused"}]
    assert s.code_of_epochs(record) == ["aten"] * 3 + ["fused"] * 3
    # The first epoch of each segment (1 and 4) is warm-up and left out.
    assert s.cpu_seconds_by_code(record) == {"aten": 10.0, "fused": 6.0}


@pytest.mark.parametrize("method", ["evolutionary", "evolutionary-gradient", "rigl"])
def test_cli_other_methods_run_with_per_epoch_updates(tmp_path, method):
    """The queue's DST comparison runs: same ER densities and per-epoch ζ updates, other methods."""
    argv = [*SMALL, *SET_UPDATES, "--method", method, "--epochs", "3", "--out", str(tmp_path / method)]
    assert train.main(argv) == 0
    history = read_record(tmp_path / method)["structure_history"]
    assert [h["step"] for h in history] == [6, 12] and all(h["churn"] > 0 for h in history)


def test_queue_entry_pauses_at_its_target_and_the_next_entry_resumes(tmp_path, monkeypatch):
    q = _load_queue()
    monkeypatch.setattr(q, "COMMON", [*SMALL, "--checkpoint-every", "1"])
    monkeypatch.setitem(q.RUNS, "tiny-s0", {"args": SET_UPDATES, "epochs": 3})
    runs, results = tmp_path / "runs", tmp_path / "results"
    plan = [("tiny-s0", 2), ("tiny-s0", 3)]
    log = q.Log(runs, tmp_path, results, plan)
    assert q.run_entry("tiny-s0", 2, log, runs, tmp_path)
    assert q.epochs_done(runs / "tiny-s0") == 2 and "paused" in (results / "RUNS.md").read_text()
    assert q.run_entry("tiny-s0", 3, log, runs, tmp_path)
    record = read_record(runs / "tiny-s0")
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3] and record["resumed_from"].endswith("epoch002.pt")
    assert not q.run_entry("tiny-s0", 3, log, runs, tmp_path)  # done: skipped
    assert "| tiny-s0 | done | 3 / 3 (plan: 3) |" in (results / "RUNS.md").read_text()
    assert json.loads((results / "tiny-s0" / "record.json").read_text())["steps_done"] == 18


def test_queue_compare_entry_pauses_and_resumes_every_configuration(tmp_path, monkeypatch, capsys):
    """A --compare entry (the conv comparison) advances all its configurations to each plan
    target with --resume auto, and its table, records and RUNS.md rows follow."""
    q = _load_queue()
    compare = ["--compare", "dense,set", "--density", "0.3", *SET_UPDATES[4:], "--block-size", "8"]
    args = [*SMALL, "--checkpoint-every", "1", *compare]
    monkeypatch.setitem(q.RUNS, "cmp", {"args": args, "epochs": 2, "compare": ("dense", "set")})
    runs, results = tmp_path / "runs", tmp_path / "results"
    log = q.Log(runs, tmp_path, results, [("cmp", 1), ("cmp", 2)])
    assert q.run_entry("cmp", 1, log, runs, tmp_path)
    assert q.run_epochs_done("cmp", runs) == 1
    assert q.run_entry("cmp", 2, log, runs, tmp_path)
    assert q.run_epochs_done("cmp", runs) == 2 and not q.run_entry("cmp", 2, log, runs, tmp_path)
    for sub in ("dense", "set"):
        record = read_record(runs / "cmp" / sub)
        assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["resumed_from"].endswith("epoch001.pt")
        assert (results / "cmp" / sub / "record.json").is_file()
    assert (results / "cmp" / "compare.txt").is_file()
    text = (results / "RUNS.md").read_text()
    assert "| cmp/dense | done | 2 / 2 (plan: 2) |" in text and "| cmp/set | done |" in text
    s = _load_summarize()
    section = "\n".join(s.comparison_markdown(s.load_comparisons(results)))
    assert "`cmp` (plot: `cmp.png`):" in section
    assert "| dense | 2/2 | 1 |" in section and "| set | 2/2 | 0.3 |" in section
    assert "| ep 1 | ep 2 | test acc % (last) |" in section and s.comparison_epochs(30) == [10, 20, 30]
    dense_acc = 100 * read_record(runs / "cmp" / "dense")["epochs"][0]["test_acc"]
    assert f"| dense | 2/2 | 1 | {dense_acc:.2f} |" in section  # the accuracy at epoch 1
    threads = s.torch_threads(read_record(runs / "cmp" / "dense"))  # a column: CPU time sums the threads
    assert threads.isdigit() and "| torch threads | CPU s/epoch |" in section
    two = [{"device": "AMD EPYC (2 cores, 1 torch threads)"}, {"device": "AMD EPYC (2 cores, 2 torch threads)"}]
    assert s.torch_threads({"segments": two}) == "1, 2" and s.torch_threads({}) == "?"
    s.plot_comparison("cmp", s.load_comparisons(results)["cmp"], tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    # While a queue holds the comparison, only the configuration it writes now says running.
    lock = q.RunLock(runs, "cmp")
    assert lock.acquire()
    try:
        for f in (runs / "cmp" / "dense").glob("*"):
            os.utime(f, (0, 0))
        log.refresh()
    finally:
        lock.release()
    text = (results / "RUNS.md").read_text()
    assert "| cmp/dense | done |" in text and "| cmp/set | running |" in text
    # --list names every configuration's epochs, not only the fewest.
    monkeypatch.setattr(q, "PLAN", [("cmp", 2)])
    assert q.main(["--list", "--runs-root", str(runs), "--results", str(results), "--data-dir", str(tmp_path)]) == 0
    assert "(dense 2, set 2)" in capsys.readouterr().out


def test_queues_share_a_compare_entry_one_configuration_each(tmp_path, monkeypatch):
    """Two queues on one --compare entry: a configuration another queue holds is left to it
    (the entry says so: None while nothing else was trainable), the free ones are trained
    with --compare-only, RUNS.md says which configuration runs, and a queue holding the whole
    comparison (the code before per-configuration locks) keeps the others out."""
    q = _load_queue()
    compare = ["--compare", "dense,set", "--density", "0.3", *SET_UPDATES[4:], "--block-size", "8"]
    args = [*SMALL, "--checkpoint-every", "1", *compare]
    monkeypatch.setitem(q.RUNS, "cmp", {"args": args, "epochs": 1, "compare": ("dense", "set")})
    runs, results = tmp_path / "runs", tmp_path / "results"
    log = q.Log(runs, tmp_path, results, [("cmp", 1)])
    dense, sparse = q.run_folders("cmp", runs)
    other = q.RunLock(runs, q.configuration_lock("cmp", dense))  # another queue trains dense
    whole = q.RunLock(runs, "cmp")
    assert other.acquire() and whole.acquire(shared=True)
    try:
        assert q.run_entry("cmp", 1, log, runs, tmp_path) is True
        assert q.epochs_done(sparse) == 1 and q.epochs_done(dense) == 0
        assert q.run_entry("cmp", 1, log, runs, tmp_path) is None  # only the held one is left
        text = (results / "RUNS.md").read_text()
        assert "| cmp/dense | running | 0 / 1 (plan: 1) |" in text and "| cmp/set | done |" in text
        summary = json.loads((runs / "cmp" / "compare.json").read_text())
        assert [r["label"] for r in summary["runs"]] == ["set"]
    finally:
        other.release()
        whole.release()
    exclusive = q.RunLock(runs, "cmp")
    assert exclusive.acquire()
    try:
        assert q.run_entry("cmp", 1, log, runs, tmp_path) is None and q.epochs_done(dense) == 0
    finally:
        exclusive.release()
    assert q.run_entry("cmp", 1, log, runs, tmp_path) is True and q.epochs_done(dense) == 1
    summary = json.loads((runs / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["dense", "set"]
    log.refresh()
    text = (results / "RUNS.md").read_text()
    assert "| cmp/dense | done |" in text and "| cmp/set | done |" in text
    assert json.loads((results / "cmp" / "compare.json").read_text())["runs"][0]["label"] == "dense"


def test_cli_adapt_floor_reaches_the_engine_and_old_checkpoints_resume_with_0_1(tmp_path):
    from sparsekernels.training.checkpoint import save_checkpoint

    evo = [a if a != "set" else "evolutionary" for a in SET_UPDATES]
    argv = [*SMALL, *evo, "--epochs", "2", "--checkpoint-every", "1"]
    free, old = tmp_path / "free", tmp_path / "old"
    assert train.main([*argv, "--adapt-floor", "0", "--stop-at-epoch", "1", "--out", str(free)]) == 0
    assert load_checkpoint(free / "checkpoint-epoch001.pt")["trainer"]["engine"]["adapt_floor"] == 0.0
    assert read_record(free)["config"]["adapt_floor"] == 0.0
    with pytest.raises(SystemExit):
        train.parse_args([*argv, "--adapt-floor", "1.5"])
    assert train.main([*argv, "--stop-at-epoch", "1", "--out", str(old)]) == 0
    ckpt = load_checkpoint(old / "checkpoint-epoch001.pt")
    assert ckpt["trainer"]["engine"]["adapt_floor"] == 0.1
    # A checkpoint written before the option existed: config and engine state lack the key.
    del ckpt["config"]["adapt_floor"], ckpt["trainer"]["engine"]["adapt_floor"]
    save_checkpoint(old / "checkpoint-epoch001.pt", ckpt)
    resume = ["--resume", str(old / "checkpoint-epoch001.pt"), "--out", str(old)]
    with pytest.raises(SystemExit, match="adapt-floor"):
        train.main([*argv, *resume, "--adapt-floor", "0"])
    assert train.main([*argv, *resume]) == 0


def test_cli_grace_updates_reaches_set(tmp_path):
    """--grace-updates 1: SET's second update prunes no block grown at the first (reverted 0);
    the default leaves each method's own grace (SET 0) and checkpoints without the key resume."""
    argv = [*SMALL, *SET_UPDATES, "--epochs", "3", "--checkpoint-every", "1"]
    assert train.main([*argv, "--grace-updates", "1", "--out", str(tmp_path / "g")]) == 0
    record = read_record(tmp_path / "g")
    assert record["config"]["grace_updates"] == 1
    updates = record["structure_history"]
    assert len(updates) >= 2 and all(r["layers"][n]["reverted"] == 0 for r in updates for n in r["layers"])
    assert any(r["layers"][n]["changed"] > 0 for r in updates[1:] for n in r["layers"])
    with pytest.raises(SystemExit):
        train.parse_args([*argv, "--grace-updates", "-1"])


def test_cli_warns_when_adapt_floor_or_grace_has_no_effect(tmp_path, capsys):
    static = [a if a != "set" else "static" for a in SET_UPDATES]
    argv = [*SMALL, "--epochs", "1", "--out", str(tmp_path / "x")]
    assert train.main([*argv, *static, "--grace-updates", "1"]) == 0
    assert "--adapt-floor/--grace-updates have no effect with --method static" in capsys.readouterr().err
    assert train.main([*argv, *SET_UPDATES, "--adapt-floor", "0"]) == 0
    assert "--adapt-floor has no effect with --method set" in capsys.readouterr().err
    assert train.main([*argv, *SET_UPDATES]) == 0
    assert "no effect" not in capsys.readouterr().err

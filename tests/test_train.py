"""The training CLI end to end on tiny synthetic data, resume, compare, and its helpers.

Every CLI run here uses ``--synthetic`` on CPU with a narrow model and a handful of steps;
nothing touches the network or the real dataset.
"""

from __future__ import annotations

import io
import json
import math
import sys
import types
import urllib.error

import pytest
import torch
from torch import nn

from sparsekernels import train
from sparsekernels.data import cifar10 as cifar_module
from sparsekernels.ops.batchnorm import fused_batch_norm_available
from sparsekernels.training.checkpoint import load_checkpoint
from sparsekernels.training.metrics import count_flops, count_parameters
from sparsekernels.training.plotting import churn_series
from sparsekernels.training.progress import ProgressBar
from sparsekernels.training.records import to_jsonable
from sparsekernels.training.schedules import build_scheduler, warmup_cosine_factor

TINY = ["--synthetic", "--device", "cpu", "--width", "0.25", "--batch-size", "8"]
# Sparse runs: width 0.5 (8-16-32 channels) with 8-blocks, reference kernels on CPU, 64 images.
SPARSE = [
    *("--synthetic", "--synthetic-size", "64", "--device", "cpu", "--batch-size", "8"),
    *("--width", "0.5", "--block-size", "8", "--backend", "reference"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on the shared 2-core machine a
    second spinning OpenMP thread made these runs ~10x slower under load (0.5 s vs 6.8 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_record(folder) -> dict:
    return json.loads((folder / "record.json").read_text())


def test_cli_end_to_end_writes_record_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--max-steps", "3", "--out", str(out)]) == 0
    record = read_record(out)
    assert record["steps_done"] == 3 and record["total_steps"] == 3
    assert record["config"]["max_steps"] == 3 and record["config"]["lr"] == 0.1  # sgd default filled in
    assert record["environment"]["torch"] == torch.__version__ and record["environment"]["python"]
    assert record["data"]["synthetic"] is True
    (epoch,) = record["epochs"]
    assert epoch["epoch"] == 1 and epoch["steps"] == 3
    for key in ("train_loss", "train_acc", "test_acc", "epoch_seconds", "images_per_second", "wall_clock"):
        assert math.isfinite(epoch[key]), key
    assert record["parameters"]["total"] == record["dense_parameters"]
    assert record["flops_per_image"]["effective"] == record["flops_per_image"]["dense"] > 0
    assert (out / "accuracy.png").stat().st_size > 0
    assert not (out / "churn.png").exists(), "a dense run has no structure history"
    captured = capsys.readouterr()
    assert "epoch   1/1" in captured.out and "img/s" in captured.out
    assert "RANDOM" in captured.err, "--synthetic must say loudly that the data is not CIFAR-10"


def test_cli_sparse_static_channels_last_amp(tmp_path):
    out = tmp_path / "sparse"
    args = [*SPARSE, "--density", "0.5", "--channels-last", "--amp", "bf16", "--max-steps", "2", "--out", str(out)]
    train.main(args)
    record = read_record(out)
    assert record["sparsity"]["global_density"] == pytest.approx(0.5, abs=0.05)
    assert record["parameters"]["total"] < record["dense_parameters"]
    assert record["flops_per_image"]["effective"] < record["flops_per_image"]["dense"]
    assert record["epochs"][0]["steps"] == 2


class FakeEngine:
    """Stands in for ``sparsekernels.dst.DynamicSparsity`` with the API train.py assumes."""

    instances: list[FakeEngine] = []
    adaptive = False  # read by the CLI's --adapt-floor check

    def __init__(self, model, optimizer, **kwargs):
        self.kwargs, self.steps, self.history = kwargs, 0, []
        FakeEngine.instances.append(self)

    def is_update_step(self, step):
        return step % self.kwargs["update_every"] == 0 and step <= self.kwargs["stop_after"]

    def step(self):
        self.steps += 1
        self.history.append({"step": self.steps, "churn": 0.5 / self.steps})

    def state_dict(self):
        return {"steps": self.steps, "history": list(self.history)}

    def load_state_dict(self, state):
        self.steps, self.history = state["steps"], list(state["history"])


def test_cli_dynamic_method_drives_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sparsekernels.dst", types.SimpleNamespace(DynamicSparsity=FakeEngine))
    FakeEngine.instances.clear()
    out = tmp_path / "rigl"
    args = [*SPARSE, "--density", "0.5", "--method", "rigl", "--update-every", "1", "--update-fraction", "0.2"]
    train.main([*args, "--stop-after", "0.5", "--max-steps", "3", "--checkpoint-every", "1", "--out", str(out)])
    (engine,) = FakeEngine.instances
    assert engine.steps == 3, "the engine steps once per optimizer step"
    assert engine.kwargs == {
        "method": "rigl",
        "update_every": 1,
        "fraction": 0.2,
        "schedule": "cosine",
        "stop_after": 1.5,  # --stop-after 0.5 of the 3 steps
        "adapt_floor": 0.1,  # the default; --grace-updates unset leaves the method's own
        "seed": 0,
    }
    record = read_record(out)
    assert record["structure_history"] == engine.history
    assert (out / "churn.png").exists()
    assert load_checkpoint(out / "checkpoint-epoch001.pt")["trainer"]["engine"]["steps"] == 3
    assert "never change the topology" not in capsys.readouterr().err


def test_cli_warns_when_no_topology_update_can_happen(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sparsekernels.dst", types.SimpleNamespace(DynamicSparsity=FakeEngine))
    args = [*SPARSE, "--density", "0.5", "--method", "set", "--update-every", "5", "--max-steps", "3"]
    train.main([*args, "--out", str(tmp_path / "set")])
    assert "never change the topology" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    [
        pytest.param([*TINY, "--schedule", "one-cycle"], id="dense"),
        pytest.param(
            [*SPARSE, "--density", "0.3", "--method", "evolutionary", "--update-every", "1"], id="evolutionary"
        ),
    ],
)
def test_resume_continues_exactly(tmp_path, config):
    """Two epochs straight == one epoch, checkpoint, resume, second epoch (the real engine's
    state, topology included, travels through the checkpoint)."""
    if "evolutionary" in config:
        pytest.importorskip("sparsekernels.dst")
    common = [*config, "--synthetic-size", "16", "--epochs", "2", "--checkpoint-every", "1"]
    full = tmp_path / "full"
    train.main([*common, "--out", str(full)])
    assert (full / "checkpoint-epoch001.pt").exists() and (full / "checkpoint-epoch002.pt").exists()

    resumed = tmp_path / "resumed"
    train.main([*common, "--out", str(resumed), "--resume", str(full / "checkpoint-epoch001.pt")])
    expected = load_checkpoint(full / "checkpoint-epoch002.pt")["trainer"]
    actual = load_checkpoint(resumed / "checkpoint-epoch002.pt")["trainer"]
    assert actual["step"] == expected["step"] == 4
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    record = read_record(resumed)
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert record["epochs"][0] == read_record(full)["epochs"][0], "the resumed record keeps the first epoch"
    assert record["resumed_from"].endswith("checkpoint-epoch001.pt")
    assert record["structure_history"] == read_record(full)["structure_history"]


def test_resume_refuses_a_different_run(tmp_path):
    common = [*TINY, "--synthetic-size", "16", "--max-steps", "2", "--checkpoint-every", "1"]
    train.main([*common, "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="--lr"):
        train.main(
            [
                *common,
                "--lr",
                "0.05",
                "--out",
                str(tmp_path / "b"),
                "--resume",
                str(tmp_path / "a" / "checkpoint-epoch001.pt"),
            ]
        )


def test_compare_prints_table_and_writes_combined_outputs(tmp_path, capsys):
    out = tmp_path / "cmp"
    train.main([*SPARSE, "--max-steps", "2", "--compare", "dense,static@0.5", "--out", str(out)])
    table = (out / "compare.txt").read_text()
    assert table in capsys.readouterr().out
    for column in ("test acc", "s/epoch", "speedup", "params", "FLOPs"):
        assert column in table
    summary = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["dense", "static@0.5"]
    assert summary["table"]["rows"][0][5] == "1.00×", "dense is its own baseline"
    assert (out / "compare.png").exists() and (out / "dense" / "record.json").exists()
    assert (out / "static-d0.5" / "record.json").exists()


def test_compare_resume_auto_continues_each_configuration(tmp_path, capsys):
    """A --compare paused with --stop-at-epoch resumes with --resume auto: each configuration
    from the newest checkpoint of its own sub-folder, to the same weights as a straight run."""
    common = [*SPARSE, "--synthetic-size", "16", "--epochs", "2", "--checkpoint-every", "1"]
    common += ["--compare", "dense,rigl@0.5", "--update-every", "1"]
    straight = tmp_path / "straight"
    train.main([*common, "--out", str(straight)])
    paused = tmp_path / "paused"
    train.main([*common, "--out", str(paused), "--stop-at-epoch", "1", "--resume", "auto"])
    assert "no checkpoint" in capsys.readouterr().out
    for sub in ("dense", "rigl-d0.5"):
        assert not (paused / sub / "checkpoint-epoch002.pt").exists()
    # The newest checkpoint of one configuration is corrupted: it is skipped, never loaded.
    (paused / "dense" / "checkpoint-epoch002.pt").write_bytes(b"not a checkpoint")
    train.main([*common, "--out", str(paused), "--resume", "auto"])
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-epoch002.pt" in err
    for sub in ("dense", "rigl-d0.5"):
        expected = load_checkpoint(straight / sub / "checkpoint-epoch002.pt")["trainer"]["model"]
        actual = load_checkpoint(paused / sub / "checkpoint-epoch002.pt")["trainer"]["model"]
        assert expected.keys() == actual.keys()
        for name, tensor in expected.items():
            assert torch.equal(actual[name], tensor), (sub, name)
        assert [e["epoch"] for e in read_record(paused / sub)["epochs"]] == [1, 2]
    summary = json.loads((paused / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["dense", "rigl@0.5"]
    # Finished configurations are not trained again.
    train.main([*common, "--out", str(paused), "--resume", "auto"])
    assert capsys.readouterr().out.count("nothing to do") == 2


def test_compare_only_trains_its_entries_and_the_table_joins_the_others(tmp_path, capsys):
    """Two processes share one --compare folder: each trains its --compare-only entries, to the
    same weights as the whole comparison in one process; the table covers every entry with a
    record (the last one written by the other process, also while it is still running)."""
    common = [*SPARSE, "--synthetic-size", "16", "--epochs", "2", "--checkpoint-every", "1"]
    common += ["--compare", "dense,rigl@0.5", "--update-every", "1"]
    whole, shared = tmp_path / "whole", tmp_path / "shared"
    train.main([*common, "--out", str(whole)])
    train.main([*common, "--out", str(shared), "--compare-only", "rigl@0.5", "--resume", "auto"])
    summary = json.loads((shared / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["rigl@0.5"], "dense has no record yet"
    assert not (shared / "dense").exists()
    # A record another process is still writing (no parameter counts yet) joins the table.
    train.main([*common, "--out", str(shared), "--compare-only", "dense", "--stop-at-epoch", "1", "--resume", "auto"])
    partial = read_record(shared / "dense")
    partial.pop("parameters"), partial.pop("flops_per_image")
    (shared / "dense" / "record.json").write_text(json.dumps(partial))
    train.main([*common, "--out", str(shared), "--compare-only", "rigl@0.5", "--resume", "auto"])
    rows = json.loads((shared / "compare.json").read_text())["table"]["rows"]
    assert [r[0] for r in rows] == ["dense", "rigl@0.5"] and rows[0][6:] == ["-", "-"]
    train.main([*common, "--out", str(shared), "--compare-only", "dense", "--resume", "auto"])
    for sub in ("dense", "rigl-d0.5"):
        expected = load_checkpoint(whole / sub / "checkpoint-epoch002.pt")["trainer"]["model"]
        actual = load_checkpoint(shared / sub / "checkpoint-epoch002.pt")["trainer"]["model"]
        for name, tensor in expected.items():
            assert torch.equal(actual[name], tensor), (sub, name)
    summary = json.loads((shared / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["dense", "rigl@0.5"]
    assert summary["table"]["rows"][0][6] != "-", "both records final: counts in the table"
    # A record.json that is not the entry's own is left out with a warning, never used.
    (shared / "dense" / "record.json").write_text(json.dumps({"label": "static"}))
    capsys.readouterr()
    train.main([*common, "--out", str(shared), "--compare-only", "rigl@0.5", "--resume", "auto"])
    assert "not a record of 'dense'" in capsys.readouterr().err
    assert [r["label"] for r in json.loads((shared / "compare.json").read_text())["runs"]] == ["rigl@0.5"]
    # So is the entry's record of another setup (a comparison of other --epochs under this --out),
    # and one without its options.
    other = read_record(whole / "dense")
    other["config"]["epochs"] = 5
    (shared / "dense" / "record.json").write_text(json.dumps(other))
    train.main([*common, "--out", str(shared), "--compare-only", "rigl@0.5", "--resume", "auto"])
    assert "is a run with --epochs 5, not this comparison's 2" in capsys.readouterr().err
    assert [r["label"] for r in json.loads((shared / "compare.json").read_text())["runs"]] == ["rigl@0.5"]
    other.pop("config")
    (shared / "dense" / "record.json").write_text(json.dumps(other))
    train.main([*common, "--out", str(shared), "--compare-only", "rigl@0.5", "--resume", "auto"])
    assert "holds no config" in capsys.readouterr().err
    # The entry's own record joins again.
    (shared / "dense" / "record.json").write_text(json.dumps(read_record(whole / "dense")))
    train.main([*common, "--out", str(shared), "--compare-only", "rigl@0.5", "--resume", "auto"])
    assert [r["label"] for r in json.loads((shared / "compare.json").read_text())["runs"]] == ["dense", "rigl@0.5"]


def test_compare_only_table_reads_the_other_records_after_training(tmp_path, monkeypatch):
    """An entry listed before this process's one, finished by its own process while this one
    trains, joins the table with its final record, not with the one on disk at the start."""
    common = [*SPARSE, "--synthetic-size", "16", "--epochs", "2", "--checkpoint-every", "1"]
    common += ["--compare", "dense,rigl@0.5"]
    out = tmp_path / "shared"
    train.main([*common, "--out", str(out), "--compare-only", "dense", "--stop-at-epoch", "1"])
    assert len(read_record(out / "dense")["epochs"]) == 1
    real_run = train.run

    def run_while_dense_finishes(sub, data, device, folder, label=None):
        if label == "rigl@0.5":  # the other process finishes dense meanwhile
            train.main([*common, "--out", str(out), "--compare-only", "dense", "--resume", "auto"])
        return real_run(sub, data, device, folder, label=label)

    monkeypatch.setattr(train, "run", run_while_dense_finishes)
    train.main([*common, "--out", str(out), "--compare-only", "rigl@0.5"])
    dense, rigl = json.loads((out / "compare.json").read_text())["runs"]
    assert dense["label"] == "dense" and len(dense["epochs"]) == 2 and "parameters" in dense
    assert rigl["label"] == "rigl@0.5" and len(rigl["epochs"]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compare-only", "dense", "--out", "x"], "--compare-only selects entries of --compare"),
        (["--compare", "dense,rigl", "--compare-only", "rigl"], "--compare-only needs --out"),
        (["--compare", "dense,rigl", "--compare-only", "set", "--out", "x"], "expected entries of --compare"),
        (["--compare", "dense,rigl", "--compare-only", ",", "--out", "x"], "expected entries of --compare"),
    ],
)
def test_compare_only_errors_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_resume_auto_needs_out(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", "auto"])
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "rigl"], "--density"),
        (["--density", "1.5"], "--density"),
        (["--max-steps", "0"], "--max-steps"),
        (["--compare", "dense", "--resume", "x.pt"], "--resume"),
    ],
)
def test_bad_flags_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_compare_entries_are_validated():
    args = train.parse_args(["--compare", "dense,rigl"])
    (_, dense), (_, rigl) = train.parse_compare(args.compare, args)
    assert (dense.density, dense.method) == (1.0, "static")
    assert (rigl.density, rigl.method) == (train.DEFAULT_COMPARE_DENSITY, "rigl")
    with pytest.raises(SystemExit, match="sgd"):
        train.parse_compare("sgd", args)


def test_missing_data_without_synthetic_exits_with_hint(tmp_path, monkeypatch):
    def offline(url, dest, timeout=60.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar_module, "_fetch", offline)
    with pytest.raises(SystemExit, match="--synthetic") as err:
        train.main(["--device", "cpu", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert cifar_module.URL in str(err.value)


# ----------------------------------------------------------------------------- helpers
def test_warmup_cosine_schedule():
    assert warmup_cosine_factor(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 100, 10) == pytest.approx(0.0)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = build_scheduler(opt, "one-cycle", total_steps=10)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) <= 0.2 + 1e-9 and lrs[-1] < 0.01
    with pytest.raises(ValueError, match="schedule"):
        build_scheduler(opt, "step", total_steps=10)


def test_flops_and_parameters_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    flops = count_flops(model, torch.randn(2, 3, 8, 8))
    macs = 4 * 8 * 8 * (3 * 3 * 3) + 5 * 256
    assert flops == {"dense": 2.0 * macs, "effective": 2.0 * macs}
    with torch.no_grad():
        model[2].bias.zero_()
    assert count_parameters(model) == {"total": 108 + 256 * 5 + 5, "nonzero": 108 + 256 * 5}


def test_progress_bar_draws_only_when_enabled():
    stream = io.StringIO()
    bar = ProgressBar(4, prefix="epoch 1/1", stream=stream, interval=0.0, enabled=True)
    bar.update(2, loss=1.23456, acc="50.0%")
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "2/4" in text and "loss 1.235" in text and "acc 50.0%" in text
    silent = io.StringIO()
    ProgressBar(4, stream=silent).update(4, loss=1.0)  # StringIO is not a terminal
    assert silent.getvalue() == ""


def test_to_jsonable_and_churn_series():
    data = to_jsonable({"t": torch.tensor([1.5, 2.0]), "nan": float("nan"), "shape": (1, 2), "dtype": torch.float32})
    assert data == {"t": [1.5, 2.0], "nan": None, "shape": [1, 2], "dtype": "torch.float32"}
    assert churn_series([{"step": 10, "churn": {"a": 0.2, "b": 0.4}}, {"step": 20, "churn": 0.1}]) == (
        [10.0, 20.0],
        [pytest.approx(0.3), 0.1],
    )
    assert churn_series([{"step": 1, "density": 0.1}]) is None
    assert churn_series(None) is None


@pytest.mark.skipif(not fused_batch_norm_available(), reason="native extension without the fused BatchNorm")
def test_cli_fused_bn_relu_default_record_and_resume(tmp_path, capsys):
    """On by default for a new ResNet run (recorded, with where it ran), off with
    --no-fused-bn-relu; a resumed run keeps its checkpoint's choice unless told otherwise (then
    the resume check refuses), and a checkpoint from before the option resumes with it off."""
    from sparsekernels.training.checkpoint import save_checkpoint

    native = [a if a != "reference" else "native" for a in SPARSE]
    argv = [*native, "--density", "0.5", "--channels-last", "--epochs", "2", "--checkpoint-every", "1"]
    fused, off, old = tmp_path / "fused", tmp_path / "off", tmp_path / "old"
    assert train.main([*argv, "--stop-at-epoch", "1", "--out", str(fused)]) == 0
    record = read_record(fused)
    assert record["config"]["fused_bn_relu"] is True
    assert record["segments"][0]["fused_bn_relu"] is True and record["segments"][0]["bn_relu"] == "fused"
    ckpt = fused / "checkpoint-epoch001.pt"
    with pytest.raises(SystemExit, match="error: --fused-bn-relu is False but the checkpoint's run computed with True"):
        train.main([*argv, "--no-fused-bn-relu", "--resume", str(ckpt), "--out", str(fused)])
    assert train.main([*argv, "--resume", str(ckpt), "--out", str(fused)]) == 0
    assert [s["bn_relu"] for s in read_record(fused)["segments"]] == ["fused", "fused"]
    assert train.main([*argv, "--no-fused-bn-relu", "--max-steps", "2", "--out", str(off)]) == 0
    assert read_record(off)["segments"][0]["bn_relu"] == "aten"
    # A checkpoint written before the option existed trained with the ATen ops.
    assert train.main([*argv, "--stop-at-epoch", "1", "--out", str(old)]) == 0
    state = load_checkpoint(old / "checkpoint-epoch001.pt")
    del state["config"]["fused_bn_relu"]
    save_checkpoint(old / "checkpoint-epoch001.pt", state)
    resume = ["--resume", str(old / "checkpoint-epoch001.pt"), "--out", str(old)]
    with pytest.raises(SystemExit, match="fused-bn-relu"):
        train.main([*argv, "--fused-bn-relu", *resume])
    assert train.main([*argv, *resume]) == 0
    segments = read_record(old)["segments"]
    assert [s["fused_bn_relu"] for s in segments] == [True, False] and segments[1]["bn_relu"] == "aten"
    # Where it cannot apply: an error for the MLP, a warning without channels-last.
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "set-mlp", "--fused-bn-relu"])
    assert "no BatchNorm" in capsys.readouterr().err
    train.parse_args(["--synthetic", "--fused-bn-relu"])
    assert "--fused-bn-relu needs --channels-last" in capsys.readouterr().err
    assert train.parse_args(["--synthetic"]).fused_bn_relu is None  # decided per run

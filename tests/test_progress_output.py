"""Long work shows progress everywhere: plain progress lines when not on a terminal, the demo's
backend labels and its final pass/fail line."""

from __future__ import annotations

import io

import pytest
import torch

from sparsekernels import demo
from sparsekernels.training.progress import ProgressBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_plain_lines_when_not_a_terminal():
    log = io.StringIO()  # not a terminal: a log file, CI, a notebook
    bar = ProgressBar(10, prefix="epoch 1/3", stream=log, line_interval=0.0)
    assert bar.due(3)
    bar.update(3, loss=1.23456, acc="40.0%")
    bar.update(7, loss=0.5)
    bar.update(10, loss=0.4)  # the epoch's own summary line follows: no progress line for the end
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines == ["epoch 1/3 3/10  loss 1.235  acc 40.0%", "epoch 1/3 7/10  loss 0.5"]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_progress_lines_are_spaced_in_time():
    log = io.StringIO()
    bar = ProgressBar(100, stream=log, line_interval=3600.0)
    for step in range(1, 100):
        assert not bar.due(step)
        bar.update(step, loss=1.0)
    assert log.getvalue() == ""


def test_progress_bar_on_a_terminal_and_when_disabled():
    term = _Terminal()
    bar = ProgressBar(4, prefix="epoch 1/1", stream=term, interval=0.0)
    bar.update(2, loss=1.0)
    bar.close()
    assert term.getvalue().startswith("\r") and "[############............] 2/4" in term.getvalue()
    quiet = io.StringIO()
    ProgressBar(4, stream=quiet, enabled=False, line_interval=0.0).update(2, loss=1.0)
    assert quiet.getvalue() == ""


def test_demo_labels_triton_on_cpu_as_the_interpreter():
    cpu = torch.device("cpu")
    assert demo.backend_label("triton", cpu) == "triton: Triton interpreter (correctness only, not speed)"
    assert demo.backend_label("triton", torch.device("cuda")) == "triton"
    assert "plain PyTorch" in demo.backend_label("reference", cpu)


@pytest.mark.parametrize(("ops_ok", "train_code", "line"), [
    (True, 0, "demo: PASS (op checks passed, training run completed)"),
    (False, 0, "demo: FAIL (op checks FAILED, training run completed)"),
    (True, 1, "demo: FAIL (op checks passed, training run FAILED)"),
])  # fmt: skip
def test_demo_ends_with_one_pass_fail_line(monkeypatch, capsys, ops_ok, train_code, line):
    monkeypatch.setattr(demo, "check_ops", lambda device, quick: ops_ok)
    monkeypatch.setattr(demo, "train_briefly", lambda *args: train_code)
    code = demo.main(["--device", "cpu", "--train-steps", "1"])
    out = capsys.readouterr().out
    assert code == (0 if line.startswith("demo: PASS") else 1)
    assert out.rstrip().splitlines()[-1] == line
    if "triton" in demo.available_backends(torch.device("cpu")):
        assert "Triton interpreter (correctness only, not speed)" in out

"""Backend resolution: what "auto" picks, and clear errors for backends that cannot run."""

from __future__ import annotations

import pytest
import torch

import sparsekernels
from sparsekernels.ops import backends


def test_auto_on_cpu_picks_native_when_built_else_reference():
    expected = "native" if sparsekernels.native_available() else "reference"
    assert backends.resolve("auto", torch.device("cpu")) == expected


def test_auto_on_cuda_picks_triton():
    assert backends.resolve("auto", torch.device("cuda")) == "triton"


def test_explicit_backends():
    assert backends.resolve("reference", torch.device("cpu")) == "reference"
    assert backends.resolve("triton", torch.device("cpu")) == "triton"  # interpreter (set by conftest)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        backends.resolve("cudnn", torch.device("cpu"))


def test_native_on_cuda_is_rejected():
    with pytest.raises(ValueError, match="backend='native' runs on CPU tensors"):
        backends.resolve("native", torch.device("cuda"))


def test_native_unavailable_is_explained(monkeypatch):
    monkeypatch.setattr(backends, "native_available", lambda: False)
    with pytest.raises(RuntimeError, match="C\\+\\+ extension was not built"):
        backends.resolve("native", torch.device("cpu"))
    assert backends.resolve("auto", torch.device("cpu")) == "reference"


def test_import_does_no_kernel_work():
    import subprocess
    import sys

    code = (
        "import sys, sparsekernels; "
        "bad = [m for m in sys.modules if m.startswith(('sparsekernels.ops.matmul', 'sparsekernels.ops.conv', "
        "'sparsekernels.ops.triton_backend', 'sparsekernels.ops.native_backend'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

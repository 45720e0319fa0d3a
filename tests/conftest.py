"""Shared test helpers: device selection, per-dtype tolerances, NaN poisoning.

Run the suite on a GPU with ``pytest --device cuda``; on CPU (the default) Triton kernels
run under the interpreter (``TRITON_INTERPRET=1``, set below before anything imports
triton's JIT).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device the kernel tests run on (cpu or cuda)")


def pytest_configure(config):
    if config.getoption("--device") != "cpu":
        # Real kernels on a GPU: the interpreter must be off before triton decorates them.
        os.environ["TRITON_INTERPRET"] = "0"


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda requested but CUDA is not available")
    return dev


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) what this run cannot or did not ask to run: the GPU sweeps on a CPU
    run, and the ``slow`` sweeps unless a ``-m`` expression is given (``-m slow`` runs them).
    Thousands of skip marks would bury what ran; one header line says how many and how."""
    groups = {}
    if config.getoption("--device") == "cpu":
        groups["gpu"] = "GPU sweeps (marked gpu) deselected on this CPU run; run them with: pytest --device cuda"
    if not config.getoption("markexpr"):
        groups["slow"] = "slow sweeps (marked slow) deselected; run them with: pytest -m slow"
    notes = []
    for mark, text in groups.items():
        chosen = [item for item in items if mark in item.keywords]
        if chosen:
            config.hook.pytest_deselected(items=chosen)
            items[:] = [item for item in items if mark not in item.keywords]
            notes.append(f"{len(chosen)} {text}")
    config._sparsekernels_deselected = notes


def pytest_report_collectionfinish(config, start_path, items):
    return getattr(config, "_sparsekernels_deselected", None) or None


@pytest.fixture(autouse=True)
def _no_tf32():
    """Tests compare fp32 kernels with float64 at fp32 tolerances: TF32 (on by default for
    cuDNN) would fail them honestly, so it is off unless a test turns it on itself."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

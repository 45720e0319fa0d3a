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
    on_gpu = config.getoption("--device") != "cpu"
    skip_gpu = pytest.mark.skip(reason="GPU sweep: run with --device cuda")
    for item in items:
        if "gpu" in item.keywords and not on_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_tf32():
    """Tests compare fp32 kernels with float64 at fp32 tolerances: TF32 (on by default for
    cuDNN) would fail them honestly, so it is off unless a test turns it on itself."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

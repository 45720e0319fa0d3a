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
    """On a CPU run, deselect (not skip) the GPU sweeps: thousands of skip marks would bury
    what ran. One line in the header says how many and how to run them."""
    if config.getoption("--device") != "cpu":
        return
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if "gpu" not in item.keywords]
    config._sparsekernels_gpu_deselected = len(gpu)


def pytest_report_collectionfinish(config, start_path, items):
    n = getattr(config, "_sparsekernels_gpu_deselected", 0)
    if n:
        return f"{n} GPU sweeps (marked gpu) deselected on this CPU run; run them with: pytest --device cuda"
    return None


@pytest.fixture(autouse=True)
def _no_tf32():
    """Tests compare fp32 kernels with float64 at fp32 tolerances: TF32 (on by default for
    cuDNN) would fail them honestly, so it is off unless a test turns it on itself."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

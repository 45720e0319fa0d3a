"""Backend selection: which implementation of an op runs for given tensors.

Three backends implement the same functions with the signatures of
:mod:`sparsekernels.ops.reference` plus the convolution pieces:

* ``"reference"`` — :mod:`sparsekernels.ops.reference` (plain PyTorch, any device).
* ``"triton"`` — :mod:`sparsekernels.ops.triton_backend` (CUDA tensors; CPU tensors run
  under Triton's interpreter, ``TRITON_INTERPRET=1``).
* ``"native"`` — :mod:`sparsekernels.ops.native_backend` (the C++ extension of ``csrc/``,
  CPU tensors), present only when it was built.

``"auto"`` picks Triton for CUDA tensors, the native backend for CPU tensors when it is
available, else the reference. Backend modules are imported on first use, never at
``import sparsekernels``.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("reference", "triton", "native")
_MODULES = {
    "reference": "sparsekernels.ops.reference",
    "triton": "sparsekernels.ops.triton_backend",
    "native": "sparsekernels.ops.native_backend",
}


@functools.cache
def native_available() -> bool:
    """Whether the C++ CPU extension was built and imports."""
    try:
        from sparsekernels.ops import native_backend
    except ImportError:
        return False
    return native_backend.available()


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    """Whether Triton kernels are built for the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend name for ``backend`` (``"auto"`` or one of :data:`BACKENDS`)."""
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        if device.type == "cpu" and native_available():
            return "native"
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}; got {backend!r}")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package, which is not installed")
        if device.type == "cpu" and not interpreter_enabled():
            if torch.cuda.is_available():
                raise RuntimeError(
                    "backend='triton' on CPU tensors runs under Triton's interpreter: set "
                    "TRITON_INTERPRET=1 in the environment before starting Python"
                )
            # No GPU in this process: the interpreter is the only way Triton can run.
            os.environ["TRITON_INTERPRET"] = "1"
        elif device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' supports CUDA (and CPU via the interpreter); got {device}")
    if backend == "native":
        if device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors; got {device}")
        if not native_available():
            raise RuntimeError(
                "backend='native' is not available: the C++ extension was not built "
                "(see README, 'Native CPU backend')"
            )
    return backend


def module(backend: str) -> ModuleType:
    """The implementation module of a concrete backend name."""
    return importlib.import_module(_MODULES[backend])

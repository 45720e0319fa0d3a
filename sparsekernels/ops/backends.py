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
import importlib.util
import os
import sys
from types import ModuleType

import torch

BACKENDS = ("reference", "triton", "native")
_MODULES = {
    "reference": "sparsekernels.ops.reference",
    "triton": "sparsekernels.ops.triton_backend",
    "native": "sparsekernels.ops.native_backend",
}


def _default_to_interpreter() -> None:
    """With a CPU-only build of torch, Triton can only ever run under its interpreter. The
    switch must be made before anything imports triton (torch._dynamo does, on the first
    custom-op call), so it is made when sparsekernels is imported; an explicit
    TRITON_INTERPRET in the environment wins. A build-time property, not a device query."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_default_to_interpreter()


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
    # find_spec, not import: importing triton fixes its interpreter mode for the process.
    return importlib.util.find_spec("triton") is not None


def _triton_imported_for_gpu() -> bool:
    """Whether triton.language was already imported with the interpreter off: its own jit
    helpers are then compiled functions, which the interpreter cannot call."""
    if "triton.language.standard" not in sys.modules:
        return False
    from triton.runtime.jit import JITFunction

    return isinstance(getattr(sys.modules["triton.language.standard"], "cdiv", None), JITFunction)


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
        if device.type == "cpu" and (not interpreter_enabled() or _triton_imported_for_gpu()):
            if torch.cuda.is_available() or _triton_imported_for_gpu():
                raise RuntimeError(
                    "backend='triton' on CPU tensors runs under Triton's interpreter: set "
                    "TRITON_INTERPRET=1 in the environment before triton is first imported"
                )
            # No GPU in this process and triton not loaded yet: the interpreter is the only
            # way Triton can run here, and the switch must happen before triton's import.
            os.environ["TRITON_INTERPRET"] = "1"
        elif device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' supports CUDA (and CPU via the interpreter); got {device}")
    if backend == "native":
        if device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors; got {device}")
        if not native_available():
            raise RuntimeError(
                "backend='native' is not available: the C++ extension was not built (see README, 'Native CPU backend')"
            )
    return backend


def module(backend: str) -> ModuleType:
    """The implementation module of a concrete backend name."""
    return importlib.import_module(_MODULES[backend])

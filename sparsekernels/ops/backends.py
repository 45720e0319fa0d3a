"""Backend selection: which implementation of an op runs for given tensors.

Three backends implement the same functions with the signatures of
:mod:`sparsekernels.ops.reference` plus the convolution pieces:

* ``"reference"`` — :mod:`sparsekernels.ops.reference` (plain PyTorch, any device).
* ``"triton"`` — :mod:`sparsekernels.ops.triton_backend` (CUDA tensors; CPU tensors run
  under Triton's interpreter, ``TRITON_INTERPRET=1``).
* ``"native"`` — :mod:`sparsekernels.ops.native_backend` (the C++ extension of ``csrc/``,
  CPU tensors), present only when it was built.

``"auto"`` is resolved on every call, from the operands' device, dtype and block size, to the
fastest backend that supports them: Triton for CUDA tensors of float32/float16/bfloat16 with
kernel block sizes (16, 32, 64, 128), the native backend for CPU tensors of those dtypes when
it was built, else the reference (so float64, e.g. ``model.double()`` or gradcheck, works
under ``"auto"`` everywhere). An explicit backend that cannot run the inputs raises a clear
error. Backend modules are imported on first use, never at ``import sparsekernels``.
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


# Operand dtypes the Triton and native kernels run (native computes the half types in fp32).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_BLOCK_SIZES = (16, 32, 64, 128)


def check_backend(backend: object, name: str = "backend") -> str:
    """``backend`` if it is ``"auto"`` or one of :data:`BACKENDS`, else ``ValueError`` naming it."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise ValueError(f"{name} must be 'auto' or one of {BACKENDS}; got {backend!r}")
    return backend


def resolve(
    backend: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    block_size: tuple[int, int] | None = None,
) -> str:
    """The concrete backend name for ``backend`` (``"auto"`` or one of :data:`BACKENDS`).

    ``"auto"`` uses ``dtype`` and ``block_size`` (when given) to skip backends that cannot
    run the operands; an explicit name is returned as is after checking it can run here."""
    check_backend(backend)
    if backend == "auto":
        kernel_dtype = dtype is None or dtype in KERNEL_DTYPES
        if device.type == "cuda" and triton_available() and kernel_dtype:
            if block_size is None or all(b in TRITON_BLOCK_SIZES for b in block_size):
                return "triton"
        if device.type == "cpu" and kernel_dtype and native_available():
            return "native"
        return "reference"
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

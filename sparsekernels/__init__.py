"""sparsekernels: block-sparse GPU kernels for dynamic sparse training.

The public names below are imported on first use (PEP 562), so ``import sparsekernels`` and
``python -m sparsekernels.train --help`` do not pay for importing torch. The first access to
any of them imports torch and :mod:`sparsekernels.ops.backends`, which (on a CPU-only torch)
switches Triton to its interpreter before anything imports triton.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module defining it
_LAZY = {
    "BlockLayout": "sparsekernels.layout",
    "SparseLinear": "sparsekernels.nn",
    "SparseConv2d": "sparsekernels.nn",
    "sparsify": "sparsekernels.nn",
    "set_debug_checks": "sparsekernels._checks",
    "debug_checks": "sparsekernels._checks",
    "native_available": "sparsekernels.ops.backends",
    "native_info": "sparsekernels.ops.native_backend",
}
_SUBMODULES = ("dst", "nn", "ops", "layout", "models", "data")

__all__ = [
    "BlockLayout",
    "SparseLinear",
    "SparseConv2d",
    "sparsify",
    "dst",
    "set_debug_checks",
    "debug_checks",
    "native_available",
    "native_info",
    "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from sparsekernels import dst
    from sparsekernels._checks import debug_checks, set_debug_checks
    from sparsekernels.layout import BlockLayout
    from sparsekernels.nn import SparseConv2d, SparseLinear, sparsify
    from sparsekernels.ops.backends import native_available
    from sparsekernels.ops.native_backend import native_info


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"sparsekernels.{name}")
    else:
        raise AttributeError(f"module 'sparsekernels' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))

"""sparsekernels: block-sparse GPU kernels for dynamic sparse training."""

from sparsekernels import dst
from sparsekernels._checks import debug_checks, set_debug_checks
from sparsekernels.layout import BlockLayout
from sparsekernels.nn import SparseConv2d, SparseLinear, sparsify
from sparsekernels.ops.backends import native_available

__version__ = "0.1.0"
__all__ = [
    "BlockLayout",
    "SparseLinear",
    "SparseConv2d",
    "sparsify",
    "dst",
    "set_debug_checks",
    "debug_checks",
    "native_available",
    "__version__",
]

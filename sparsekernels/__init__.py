"""sparsekernels: block-sparse GPU kernels for dynamic sparse training."""

from sparsekernels._checks import set_debug_checks
from sparsekernels.layout import BlockLayout
from sparsekernels.ops.backends import native_available

__version__ = "0.1.0"
__all__ = ["BlockLayout", "set_debug_checks", "native_available", "__version__"]

"""The Triton backend: matmul kernels of :mod:`sparsekernels.ops.matmul` and convolution
kernels of :mod:`sparsekernels.ops.conv`, with the signatures of the reference backend.

Imported on first use of ``backend="triton"`` (never at ``import sparsekernels``); on CPU
tensors the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from sparsekernels.ops.conv import conv2d_forward, conv2d_input_grad, conv2d_weight_grad
from sparsekernels.ops.matmul import dds, dsd, sdd

__all__ = ["sdd", "dsd", "dds", "conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad"]

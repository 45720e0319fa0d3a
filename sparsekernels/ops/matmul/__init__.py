"""Triton block-sparse matmul kernels, with the signatures of :mod:`sparsekernels.ops.reference`.

* :func:`sdd` — ``a @ b`` sampled at the layout's blocks (``sdd.py``).
* :func:`dsd` — ``S @ b`` / ``Sᵀ @ b`` (``dsd.py``).
* :func:`dds` — ``a @ S`` / ``a @ Sᵀ`` (``dds.py``).

fp32|bf16|fp16 operands of one dtype, fp32 accumulation, outputs in the input dtype; block
sizes 16, 32, 64, 128 (``bm != bn`` allowed). CUDA tensors run compiled kernels; CPU tensors
run under Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported).
"""

from sparsekernels.ops.matmul.dds import dds
from sparsekernels.ops.matmul.dsd import dsd
from sparsekernels.ops.matmul.sdd import sdd

__all__ = ["sdd", "dsd", "dds"]

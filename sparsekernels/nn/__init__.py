"""Drop-in sparse layers and model sparsification."""

from sparsekernels.nn._block_sparse import BlockSparseWeight, sparse_modules
from sparsekernels.nn.batchnorm import batch_norm_relu
from sparsekernels.nn.conv import SparseConv2d
from sparsekernels.nn.linear import SparseLinear
from sparsekernels.nn.sparsify import LayerSummary, SparsifySummary, layer_densities, sparsify

__all__ = [
    "SparseLinear",
    "SparseConv2d",
    "BlockSparseWeight",
    "sparse_modules",
    "sparsify",
    "layer_densities",
    "LayerSummary",
    "SparsifySummary",
    "batch_norm_relu",
]

"""Drop-in sparse layers and model sparsification."""

from sparsekernels.nn.conv import SparseConv2d
from sparsekernels.nn.linear import SparseLinear
from sparsekernels.nn.sparsify import LayerSummary, SparsifySummary, layer_densities, sparsify

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "layer_densities", "LayerSummary", "SparsifySummary"]

"""``layer.layout`` reuses one wrapper over the layer's buffers while they are the same objects
(a per-forward saving), and rewraps whenever a buffer object is replaced."""

from __future__ import annotations

import copy

import torch

from sparsekernels import BlockLayout
from sparsekernels.layout import INDEX_FIELDS
from sparsekernels.nn import SparseConv2d, SparseLinear


def _same_fields(layout: BlockLayout, layer) -> bool:
    return all(getattr(layout, f) is getattr(layer, f"layout_{f}") for f in INDEX_FIELDS)


def test_layout_wrapper_follows_the_buffers():
    torch.manual_seed(0)
    layer = SparseLinear(64, 64, density=0.5, block_size=16)
    first = layer.layout
    assert layer.layout is first and _same_fields(first, layer)
    # set_layout copies into the same buffers: the wrapper sees the new topology.
    new = BlockLayout.random((64, 64), 16, 0.5)
    layer.set_layout(new)
    assert layer.layout is first
    assert torch.equal(layer.layout.to_block_mask(), new.to_block_mask())
    # Replacing a buffer object (assignment, deepcopy, dtype/device moves) rewraps.
    layer.layout_col_indices = layer.layout_col_indices.clone()
    assert layer.layout is not first and _same_fields(layer.layout, layer)
    twin = copy.deepcopy(layer)
    assert _same_fields(twin.layout, twin) and not _same_fields(twin.layout, layer)
    x = torch.randn(3, 64)
    assert torch.equal(twin(x), layer(x))


def test_loaded_state_reaches_the_cached_wrapper():
    torch.manual_seed(1)
    a = SparseConv2d(32, 32, 3, padding=1, density=0.5, block_size=16)
    b = SparseConv2d(32, 32, 3, padding=1, density=0.5, block_size=16)
    x = torch.randn(2, 32, 5, 5)
    b(x)  # builds b's wrapper
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.layout.to_block_mask(), a.layout.to_block_mask())
    assert torch.equal(b(x), a(x))

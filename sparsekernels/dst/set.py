"""SET: prune the smallest blocks, grow at random (Mocanu et al. 2018, "Scalable training of
artificial neural networks with adaptive sparse connectivity inspired by network science",
Nature Communications 9:2383).

Block version: on an update, each layer prunes the ``k`` active blocks of smallest L2 norm
and grows ``k`` blocks drawn uniformly without replacement among the blocks inactive before
the update, with the engine's seeded ``torch.Generator`` (its state is part of
``DynamicSparsity.state_dict``). No gradient is read.
"""

from __future__ import annotations

import torch

from sparsekernels.dst.base import GrowthPruneMethod, LayerState, block_norms, register_method


class SET(GrowthPruneMethod):
    name = "set"

    def prune_scores(self, state: LayerState) -> torch.Tensor:
        return block_norms(state.layer.weight_values)

    def grow_scores(self, state: LayerState) -> None:
        return None  # uniform at random


register_method("set", SET)

"""SET: prune the smallest blocks, grow at random (Mocanu et al. 2018, "Scalable training of
artificial neural networks with adaptive sparse connectivity inspired by network science",
Nature Communications 9:2383).

Block version: on an update, each layer prunes the ``k`` active blocks of smallest L2 norm
and grows ``k`` blocks drawn uniformly without replacement among the blocks inactive before
the update, with the engine's seeded ``torch.Generator`` (its state is part of
``DynamicSparsity.state_dict``). No gradient is read.

``grace_updates`` (default 0, as the paper): blocks grown at one of the last ``grace_updates``
updates are pruned only when nothing else is left. With zero-initialised regrowth at blocks
of 8x8 and more, a block grown one update ago is almost always among the smallest by norm, so
without grace SET re-draws the same share of blocks at every update and never replaces an
established one (issue 15's science runs); a grace of 1 is the ablation.
"""

from __future__ import annotations

import torch

from sparsekernels.dst.base import GrowthPruneMethod, LayerState, block_norms, check_grace_updates, register_method


class SET(GrowthPruneMethod):
    name = "set"

    def __init__(self, *, grace_updates: int = 0) -> None:
        self.grace_updates = check_grace_updates(grace_updates)

    def prune_scores(self, state: LayerState) -> torch.Tensor:
        return block_norms(state.layer.weight_values)

    def grow_scores(self, state: LayerState) -> None:
        return None  # uniform at random


register_method("set", SET)

"""RigL: prune the smallest blocks, grow where the dense gradient is largest (Evci et al. 2020,
"Rigging the Lottery: Making All Tickets Winners", ICML).

Block version: on an update, each layer prunes the ``k`` active blocks of smallest L2 norm
and grows the ``k`` blocks, among those inactive before the update, whose dense-gradient
block has the largest L2 norm. The dense gradient ``layer.dense_grad [M, N]`` is computed only
for the forward/backward of update steps: the engine calls ``request_dense_grad(True)`` at
the end of the step before an update step and turns it off after the update. Grown blocks
start at zero (values and optimizer state), as in the paper. ``grace_updates`` (default 0): as
for SET, blocks grown at one of the last ``grace_updates`` updates are pruned last.
"""

from __future__ import annotations

import torch

from sparsekernels.dst.base import (
    GrowthPruneMethod,
    LayerState,
    block_norms,
    check_grace_updates,
    dense_block_norms,
    register_method,
)


class RigL(GrowthPruneMethod):
    name = "rigl"
    needs_dense_grad = True

    def __init__(self, *, grace_updates: int = 0) -> None:
        self.grace_updates = check_grace_updates(grace_updates)

    def prune_scores(self, state: LayerState) -> torch.Tensor:
        return block_norms(state.layer.weight_values)

    def grow_scores(self, state: LayerState) -> torch.Tensor:
        return dense_block_norms(state.layer.dense_grad, state.grid)


register_method("rigl", RigL)

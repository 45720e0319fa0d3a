"""Evolutionary structure training: ``"evolutionary"`` and ``"evolutionary-gradient"``.

**Our interpretation** of Naji, Abtahi & Marvasti (2021), "Efficient Sparse Artificial
Neural Networks". Only the abstract is available to us: it describes two evolutionary
methods that train structure and weights together, reach better accuracy than dense and
static-sparse training with far fewer parameters, and converge to their final structure
several times faster. Everything below is our design in that spirit, not the paper's
algorithm.

Blocks are individuals; each active block ``s`` of a layer carries a *fitness* ``F_s``, an
exponential moving average updated on every ``DynamicSparsity.step()`` (device ops only)::

    F_s ← β F_s + (1 − β) φ_s,     β = fitness_decay (default 1 − 1/update_every)

so the fitness at an update averages roughly the last ``update_every`` steps.

* ``"evolutionary"``: ``φ_s = ‖W_s‖₂``, the block's magnitude (``F`` starts at ``‖W_s‖₂``).
* ``"evolutionary-gradient"``: ``φ_s = Σ_ij |W_s,ij · G_s,ij|``, the first-order saliency
  of the block's weights, with ``G = weight_values.grad`` — the sparse gradient of the
  step, available on every step at no extra cost (``F`` starts at 0).

On an update step, a layer swapping ``k`` blocks (schedule, adaptive multiplier and global
redistribution: see :mod:`sparsekernels.dst.engine`):

1. **Selection**: prunes the ``k`` active blocks of lowest fitness (those in their grace
   period, item 3, only if nothing else is left).
2. **Reproduction**: grows ``k − ⌊explore·k⌋`` inactive blocks by exploitation and
   ``⌊explore·k⌋`` uniformly at random among the remaining inactive blocks (exploration,
   ``explore`` default 0.25). Exploitation scores an inactive cell ``(r, c)``:

   * ``"evolutionary"``: the fitness of its neighbourhood — the summed fitness of the active
     blocks in its block-row ``r`` plus those in its block-column ``c``,
     ``Σ_c' F(r, c') + Σ_r' F(r', c)``. Blocks sharing a row feed the same output units, blocks
     sharing a column read the same inputs: a new block is born where fit blocks show that
     its inputs and its outputs matter.
   * ``"evolutionary-gradient"``: the L2 norm of the dense gradient's block, as in RigL (the
     dense gradient is requested for the forward/backward of update steps only).

3. **Grace**: a grown block is not pruned at the next update (``grace_updates = 1``: it goes
   to the end of the prune order) and starts with fitness equal to the median fitness of
   the layer's blocks before the update, so the update after that judges it on roughly
   ``2·update_every`` steps of its own record with the median as prior (weight
   ``β^(2·update_every) ≈ e⁻²`` with the default ``β``) instead of on its zero start. A block
   grown at zero needs those steps to show its worth: the block norms of a freshly
   initialised layer spread by only ~6 % (8×8 blocks; ~1 % for 32×32), so a zero-started
   block is almost always the smallest at the next update — in our learning test SET,
   which has no grace, prunes almost only blocks grown at the previous update.

4. **Adaptive rate** (on by default for these methods): layer swap counts are multiplied by
   ``a``, which starts at 1 and after each update moves halfway towards ``1 − ρ`` (floor 0.1,
   at least one block), ``ρ`` being the revert rate: the share of the pruned blocks that
   had been grown at one of the two previous updates, i.e. pruned as soon as their grace
   ended. When the structure has settled, growth keeps being undone, ``ρ`` rises and fewer
   blocks are swapped; when pruning hits established blocks again the rate recovers.
   Computed on the device and applied by a device comparison: no host synchronisation and
   no lag.

5. **Global redistribution** (``global_redistribution=True``): blocks of all layers compete
   on fitness divided by their layer's mean fitness; layers holding more of the globally
   least fit blocks swap more (each layer's ``nnz`` is unchanged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sparsekernels.dst.base import (
    GrowthPruneMethod,
    LayerState,
    block_norms,
    check_grace_updates,
    dense_block_norms,
    register_method,
    slots_to_grid,
)

if TYPE_CHECKING:
    from sparsekernels.dst.engine import DynamicSparsity


class _EvolutionaryBase(GrowthPruneMethod):
    """Fitness bookkeeping shared by both variants; subclasses define ``signal``."""

    adaptive_default = True

    def __init__(self, *, explore: float = 0.25, fitness_decay: float | None = None, grace_updates: int = 1) -> None:
        if isinstance(explore, bool) or not isinstance(explore, (int, float)) or not 0.0 <= explore <= 1.0:
            raise ValueError(
                f"explore must be a float in [0, 1] (share of grown blocks drawn at random); got {explore!r}"
            )
        if fitness_decay is not None and (
            isinstance(fitness_decay, bool)
            or not isinstance(fitness_decay, (int, float))
            or not 0.0 <= fitness_decay < 1.0
        ):
            raise ValueError(f"fitness_decay must be a float in [0, 1) or None; got {fitness_decay!r}")
        self.explore = float(explore)
        self.grace_updates = check_grace_updates(grace_updates)
        self.fitness_decay = fitness_decay
        self.decay = 0.0 if fitness_decay is None else float(fitness_decay)

    def configure(self, engine: DynamicSparsity) -> None:
        if self.fitness_decay is None:
            self.decay = 1.0 - 1.0 / engine.update_every

    def signal(self, state: LayerState) -> torch.Tensor:
        """fp32 ``[nnz]``: this step's fitness sample of every active block."""
        raise NotImplementedError

    def observe(self, state: LayerState) -> None:
        state.slots["fitness"].mul_(self.decay).add_(self.signal(state), alpha=1.0 - self.decay)

    def prune_scores(self, state: LayerState) -> torch.Tensor:
        return state.slots["fitness"]

    def on_grown(self, state: LayerState, grown: torch.Tensor, before: dict[str, torch.Tensor]) -> None:
        grace = before["fitness"].median()
        state.slots["fitness"] = torch.where(grown, grace, state.slots["fitness"])


class Evolutionary(_EvolutionaryBase):
    """Fitness: EMA of block magnitude; growth: fit neighbourhoods plus random exploration."""

    name = "evolutionary"

    def init_layer(self, state: LayerState) -> None:
        state.slots["fitness"] = block_norms(state.layer.weight_values)

    def signal(self, state: LayerState) -> torch.Tensor:
        return block_norms(state.layer.weight_values)

    def grow_scores(self, state: LayerState) -> torch.Tensor:
        R, C = state.grid
        fitness = slots_to_grid(state, state.slots["fitness"]).view(R, C)
        return (fitness.sum(dim=1, keepdim=True) + fitness.sum(dim=0, keepdim=True)).reshape(-1)


class EvolutionaryGradient(_EvolutionaryBase):
    """Fitness: EMA of |w·g| per block; growth: dense-gradient norm plus random exploration."""

    name = "evolutionary-gradient"
    needs_dense_grad = True
    needs_grad = True

    def init_layer(self, state: LayerState) -> None:
        state.slots["fitness"] = torch.zeros(state.nnz, dtype=torch.float32, device=state.layer.weight_values.device)

    def signal(self, state: LayerState) -> torch.Tensor:
        values = state.layer.weight_values
        saliency = (values.detach().float() * values.grad.float()).abs().sum(dim=(1, 2))
        # A step skipped for overflow (AMP's GradScaler) leaves inf/NaN gradients: count it as
        # no evidence rather than poisoning the moving average for good.
        return torch.nan_to_num(saliency, nan=0.0, posinf=0.0, neginf=0.0)

    def grow_scores(self, state: LayerState) -> torch.Tensor:
        return dense_block_norms(state.layer.dense_grad, state.grid)


register_method("evolutionary", Evolutionary)
register_method("evolutionary-gradient", EvolutionaryGradient)

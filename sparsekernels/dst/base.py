"""The interface every growth/prune method implements, the method registry, and the
sync-free ranking helpers the engine selects blocks with.

A method only *scores* blocks; the engine (:mod:`sparsekernels.dst.engine`) decides how
many to swap, ranks, rebuilds layouts, moves optimizer state and keeps the statistics. An
update of a layer with ``nnz`` active blocks in an ``[R, C]`` grid asks the method for

* ``prune_scores(state) -> [nnz]`` fp32, one per active slot: the lowest are pruned;
* ``grow_scores(state) -> [R*C]`` fp32, one per grid cell (row-major), or None: the highest
  *inactive* cells are grown; None grows uniformly at random.

and the engine grows ``explore × k`` of the ``k`` new blocks uniformly at random among the
inactive cells not already chosen (``explore`` is a method attribute, 0 by default). Ties
are broken at random with the engine's generator, so equal scores never bias selection
towards low indices.

Per-slot state a method keeps (``state.slots``: tensors whose first dimension is ``nnz``,
e.g. a fitness per block) is carried through every update by the engine: a kept block's
entry moves to its new slot, a grown block's entry is zero until the method's
``on_grown`` sets it. Methods are registered by name with :func:`register_method`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from sparsekernels.dst.engine import DynamicSparsity
    from sparsekernels.nn._block_sparse import BlockSparseWeight


@dataclass
class LayerState:
    """What the engine keeps per sparse layer and shows to the method.

    ``slots``: per-slot tensors ``[nnz, ...]`` owned by the method (carried through updates).
    ``born``: int64 ``[nnz]``, the update at which the block in each slot was grown (0: present
    from the start). ``ever_active``: bool ``[R*C]``, cells active at any time so far.
    ``adapt``: fp32 ``[]``, the adaptive multiplier of the swap count (1 when not adaptive).
    ``grown_total`` / ``pruned_grown_total``: int64 ``[]``, blocks grown so far, and how many
    of the blocks pruned so far had been grown by an earlier update.
    """

    name: str
    layer: BlockSparseWeight
    generator: torch.Generator
    slots: dict[str, torch.Tensor] = field(default_factory=dict)
    born: torch.Tensor | None = None
    ever_active: torch.Tensor | None = None
    adapt: torch.Tensor | None = None
    grown_total: torch.Tensor | None = None
    pruned_grown_total: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return self.layer.layout.grid

    @property
    def nnz(self) -> int:
        return self.layer.nnz

    @property
    def total_blocks(self) -> int:
        R, C = self.grid
        return R * C


class GrowthPruneMethod:
    """Base class of the topology-update methods (subclass and :func:`register_method`).

    Class attributes the engine reads:

    * ``needs_dense_grad``: ``grow_scores`` reads ``layer.dense_grad`` ``[M, N]``; the engine
      requests it for the forward/backward of update steps only (dense products are costly).
    * ``needs_grad``: ``observe`` reads ``weight_values.grad`` on every step.
    * ``adaptive_default``: whether the engine adapts the swap count from the revert rate
      when the user passes ``adaptive=None``.
    * ``explore``: share of the grown blocks drawn uniformly at random (instances may set it).
    * ``grace_updates``: blocks grown at one of the last ``grace_updates`` updates are pruned
      only when no other candidate is left (a maturation period; instances may set it).
    """

    name: ClassVar[str] = ""
    needs_dense_grad: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = False
    adaptive_default: ClassVar[bool] = False
    explore: float = 0.0
    grace_updates: int = 0

    @property
    def gradient_based(self) -> bool:
        """Whether the method needs a backward pass before ``step()``."""
        return self.needs_dense_grad or self.needs_grad

    def configure(self, engine: DynamicSparsity) -> None:
        """Called once by the engine before any other hook (read ``engine.update_every`` etc.)."""

    def init_layer(self, state: LayerState) -> None:
        """Create the method's per-slot tensors in ``state.slots`` (called at construction)."""

    def observe(self, state: LayerState) -> None:
        """Called on every ``step()`` before any update: accumulate statistics (device ops only)."""

    def prune_scores(self, state: LayerState) -> torch.Tensor:
        """fp32 ``[nnz]``: lower is pruned first."""
        raise NotImplementedError

    def grow_scores(self, state: LayerState) -> torch.Tensor | None:
        """fp32 ``[R*C]`` over the grid (row-major): higher is grown first among inactive cells.
        None: grow uniformly at random."""
        return None

    def on_grown(self, state: LayerState, grown: torch.Tensor, before: dict[str, torch.Tensor]) -> None:
        """After an update: set the per-slot state of grown blocks (bool ``grown [nnz]`` marks
        them; their entries in ``state.slots`` are zero). ``before``: ``state.slots`` as it was
        before the update (old slot order)."""


def check_grace_updates(value: object) -> int:
    """A method's ``grace_updates`` option: an int >= 0 (``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"grace_updates must be an int >= 0 (updates a grown block is protected); got {value!r}")
    return value


_REGISTRY: dict[str, type[GrowthPruneMethod]] = {}


def register_method(name: str, cls: type[GrowthPruneMethod], *, overwrite: bool = False) -> None:
    """Make ``DynamicSparsity(..., method=name)`` build ``cls(**method_options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, GrowthPruneMethod)):
        raise TypeError(f"cls must be a subclass of GrowthPruneMethod; got {cls!r}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not cls:
        raise ValueError(f"method {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = cls


def available_methods() -> tuple[str, ...]:
    """Names accepted by ``DynamicSparsity(method=...)``."""
    return tuple(_REGISTRY)


def build_method(method: str | GrowthPruneMethod, options: dict) -> GrowthPruneMethod:
    """An instance for a registered name (with ``options``) or the instance itself."""
    if isinstance(method, GrowthPruneMethod):
        if options:
            raise ValueError(f"method options {sorted(options)} only apply when method is given by name")
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(f"method must be one of {available_methods()} or a GrowthPruneMethod; got {method!r}")
    try:
        return _REGISTRY[method](**options)
    except TypeError as exc:
        raise TypeError(f"bad option for method {method!r}: {exc}") from None


def method_name(method: GrowthPruneMethod) -> str:
    return method.name or type(method).__name__


# ----------------------------------------------------------------------------- block statistics
def block_norms(values: torch.Tensor) -> torch.Tensor:
    """L2 norm of each block: ``values [nnz, bm, bn]`` -> fp32 ``[nnz]``."""
    return values.detach().float().pow(2).sum(dim=(1, 2)).sqrt()


def dense_block_norms(dense: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """L2 norm of each block of a dense ``[M, N]`` matrix -> fp32 ``[R*C]`` (row-major)."""
    R, C = grid
    M, N = dense.shape
    return dense.detach().float().reshape(R, M // R, C, N // C).pow(2).sum(dim=(1, 3)).sqrt().reshape(-1)


def cells_of_slots(state: LayerState) -> torch.Tensor:
    """int64 ``[nnz]``: the row-major grid cell of each active slot."""
    layout = state.layer.layout
    return layout.row_indices.long() * state.grid[1] + layout.col_indices.long()


def slots_to_grid(state: LayerState, per_slot: torch.Tensor) -> torch.Tensor:
    """``[nnz]`` -> ``[R*C]`` with zeros at inactive cells (an index_put with distinct indices:
    deterministic, unlike an atomic scatter-add)."""
    grid = per_slot.new_zeros(state.total_blocks)
    grid[cells_of_slots(state)] = per_slot
    return grid


# ----------------------------------------------------------------------------- ranking (no sync)
def ranked(scores: torch.Tensor, generator: torch.Generator, *, descending: bool) -> torch.Tensor:
    """int64 permutation ordering ``scores`` (NaN counted as -inf), ties in random order.

    A random permutation first, then a stable sort by score: equal scores keep the random
    order. Static output size, so nothing waits for the device.
    """
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    keys = torch.rand(scores.shape[0], generator=generator, device=generator.device).to(scores.device)
    order = torch.argsort(keys)
    return order[torch.argsort(scores[order], descending=descending, stable=True)]


def smallest_free(keys: torch.Tensor, blocked: torch.Tensor, count: int) -> torch.Tensor:
    """int64 indices of the ``count`` smallest ``keys`` (float in [0, 1)) among the cells not
    ``blocked``, ascending by key, equal keys by index; blocked cells only fill the tail when
    fewer than ``count`` are free (callers mask them with ``~blocked[result]``).

    Keys are made unique (key in 2^-24 steps, then index), so the selection is exactly that of
    a stable sort of the free cells by key; ``topk`` finds it in O(n). Static output size: no
    host synchronisation."""
    n = keys.numel()
    unique = (keys.double() * 2**24).floor().long() * n + torch.arange(n, device=keys.device)
    unique = torch.where(blocked, torch.iinfo(torch.int64).max, unique)
    return torch.topk(unique, count, largest=False, sorted=True).indices


def inactive_first(order: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Reorder the cell permutation ``order`` so inactive cells come first, keeping the
    relative order within each group (stable)."""
    return order[torch.argsort(active[order].to(torch.uint8), stable=True)]

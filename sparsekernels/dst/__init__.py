"""Dynamic sparse training: evolve the block topology of sparse layers while they train.

``DynamicSparsity(model, optimizer, method=...)`` rewires every ``SparseLinear`` /
``SparseConv2d`` of a model on a schedule, keeping each layer's number of active blocks (and
so every parameter's shape) constant. Methods: ``"set"`` (:mod:`.set`), ``"rigl"``
(:mod:`.rigl`), ``"evolutionary"`` and ``"evolutionary-gradient"`` (:mod:`.evolutionary`);
add one with :func:`register_method`. The engine, its options and its guarantees (no host
synchronisation, optimizer state follows the blocks): :mod:`.engine`.
"""

from sparsekernels.dst import evolutionary, rigl, set  # noqa: F401  (register the built-in methods)
from sparsekernels.dst.base import GrowthPruneMethod, LayerState, available_methods, register_method
from sparsekernels.dst.engine import DynamicSparsity
from sparsekernels.dst.evolutionary import Evolutionary, EvolutionaryGradient
from sparsekernels.dst.rigl import RigL
from sparsekernels.dst.schedules import SCHEDULES, FractionSchedule
from sparsekernels.dst.set import SET

__all__ = [
    "DynamicSparsity",
    "GrowthPruneMethod",
    "LayerState",
    "register_method",
    "available_methods",
    "FractionSchedule",
    "SCHEDULES",
    "SET",
    "RigL",
    "Evolutionary",
    "EvolutionaryGradient",
]

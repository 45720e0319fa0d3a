"""``sparsify``: replace a model's Linear/Conv2d layers by block-sparse ones, in place.

Per-layer densities come from a distribution (RigL, Evci et al. 2020, appendix):

* ``"uniform"``: every sparsified layer gets the global density.
* ``"er"`` (Erdős–Rényi): density ∝ (K + C) / (K·C) (kernel size ignored).
* ``"erk"`` (Erdős–Rényi-Kernel): density ∝ (K + C + R + S) / (K·C·R·S).

The proportionality factor is solved so that the parameter-weighted mean density of the
sparsified layers equals the request; a layer whose density would exceed 1 is capped at
1 (kept dense) and the factor re-solved over the rest. Each layer then keeps
``round(density_l × blocks_l)`` blocks, so the global density matches within one block per
layer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sparsekernels.conv_layout import conv_layout_shape
from sparsekernels.layout import BlockLayout, blocks_for_density, normalize_block_size
from sparsekernels.nn.conv import SparseConv2d
from sparsekernels.nn.linear import SparseLinear
from sparsekernels.ops.backends import check_backend

DISTRIBUTIONS = ("uniform", "er", "erk")
TOPOLOGIES = ("magnitude", "random")  # which blocks a layer keeps: largest, or at random
# Status of a layer chosen for sparsification whose density came out at 1: its ERK share was
# capped at 1, or rounding its density to whole blocks kept every block. Left dense.
CAPPED = "dense: capped at density 1"


@dataclass(frozen=True)
class LayerSummary:
    """What ``sparsify`` did to one Linear/Conv2d layer."""

    name: str
    kind: str  # "linear" | "conv2d"
    shape: tuple[int, ...]  # the dense weight's shape
    density: float  # fraction of weights kept (1.0 for dense layers)
    nnz: int  # active blocks (0 for layers left dense)
    block_size: int | None  # None for layers left dense
    status: str  # "sparse", or why the layer stayed dense ("dense: ...", "skipped: ...")

    @property
    def params(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class SparsifySummary(list):
    """A list of :class:`LayerSummary` with a table view and the achieved global density."""

    @property
    def sparse_layers(self) -> list[LayerSummary]:
        return [s for s in self if s.status == "sparse"]

    @property
    def global_density(self) -> float:
        """Parameter-weighted density over the layers chosen for sparsification (capped ones
        included at 1.0)."""
        chosen = [s for s in self if s.status in ("sparse", CAPPED)]
        total = sum(s.params for s in chosen)
        return sum(s.params * s.density for s in chosen) / total if total else 1.0

    def __str__(self) -> str:
        rows = [f"{'layer':<32} {'kind':<7} {'shape':<20} {'density':>8} {'nnz':>7} {'block':>5}  status"]
        for s in self:
            rows.append(
                f"{s.name:<32} {s.kind:<7} {str(s.shape):<20} {s.density:>8.4f} {s.nnz:>7} "
                f"{s.block_size if s.block_size else '-':>5}  {s.status}"
            )
        if self.sparse_layers:
            rows.append(
                f"{len(self.sparse_layers)} of {len(self)} layers sparse; "
                f"global density of sparsified layers: {self.global_density:.4f}"
            )
        else:
            rows.append(f"no layer was made sparse (0 of {len(self)}): the model is unchanged")
        return "\n".join(rows)


def _raw_score(shape: tuple[int, ...], distribution: str) -> float:
    if distribution == "uniform":
        return 1.0
    K, C = shape[0], shape[1]
    if distribution == "er":
        return (K + C) / (K * C)
    kernel = shape[2:] if len(shape) == 4 else (1, 1)
    return (K + C + sum(kernel)) / (K * C * kernel[0] * kernel[1])


def layer_densities(shapes: list[tuple[int, ...]], density: float, distribution: str) -> list[float]:
    """Per-layer densities meeting the global ``density`` (parameter-weighted), capped at 1."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}; got {distribution!r}")
    params = [float(_numel(s)) for s in shapes]
    scores = [_raw_score(s, distribution) for s in shapes]
    dense: set[int] = set()
    while True:
        budget = density * sum(params) - sum(params[i] for i in dense)
        free = [i for i in range(len(shapes)) if i not in dense]
        weight = sum(scores[i] * params[i] for i in free)
        eps = budget / weight if weight else 0.0
        newly_dense = {i for i in free if eps * scores[i] > 1.0}
        if not newly_dense:
            return [1.0 if i in dense else eps * scores[i] for i in range(len(shapes))]
        dense |= newly_dense


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def sparsify(
    model: nn.Module,
    density: float = 0.1,
    block_size: int = 32,
    distribution: str = "erk",
    exclude: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
    *,
    dense_first_conv: bool = True,
    dense_classifier: bool = True,
    backend: str = "auto",
    topology: str = "magnitude",
    generator: torch.Generator | None = None,
) -> SparsifySummary:
    """Replace the ``nn.Linear``/``nn.Conv2d`` layers of ``model`` in place by
    :class:`SparseLinear`/:class:`SparseConv2d`, keeping their weights' largest blocks
    (``topology="magnitude"``) or blocks drawn uniformly at random (``"random"``).

    Args:
        density: global fraction of weights kept over the sparsified layers, in (0, 1].
        block_size: square block size of every sparse layer.
        distribution: ``"uniform"``, ``"er"`` or ``"erk"`` (see module docstring).
        exclude: module names to leave dense, or a predicate ``(name, module) -> bool``.
        dense_first_conv / dense_classifier: leave the first Conv2d and the last Linear dense
            (default, as in RigL: they hold few parameters and matter most).
        backend: the ops backend the new layers use.
        topology: which blocks each layer keeps (its per-layer count is set by ``density`` and
            ``distribution`` either way). ``"magnitude"``: those of largest L2 norm, what pruning
            a trained model wants. ``"random"``: uniformly at random (``generator``, default
            torch's global one), what training from scratch wants: on a freshly initialised
            layer the largest blocks are a biased sample of the initial values (at block 1 the
            kept weights all sit near the init bound, ~1.7x the std of a random subset), while
            a random choice keeps them distributed as the init, as in the SET and RigL papers.
        generator: random source of ``topology="random"``.

    Layers whose channel/feature counts are not multiples of ``block_size``, or grouped
    convolutions, are skipped and reported. Returns a :class:`SparsifySummary`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1]; got {density!r}")
    bs = normalize_block_size(block_size)[0]
    if isinstance(block_size, (tuple, list)) and block_size[0] != block_size[1]:
        raise ValueError(f"block_size must be square for sparsify; got {block_size}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}; got {distribution!r}")
    check_backend(backend)
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}; got {topology!r}")
    excluded = _exclusion(exclude)

    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    last_linear = next((n for n, m in reversed(layers) if isinstance(m, nn.Linear)), None)

    statuses: dict[str, str] = {}
    for name, module in layers:
        out_dim, in_dim = module.weight.shape[:2]
        if excluded(name, module):
            statuses[name] = "dense: excluded"
        elif dense_first_conv and name == first_conv:
            statuses[name] = "dense: first conv"
        elif dense_classifier and name == last_linear:
            statuses[name] = "dense: classifier"
        elif isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            statuses[name] = "skipped: groups/padding mode not supported"
        elif out_dim % bs or in_dim % bs:
            statuses[name] = f"skipped: {out_dim}x{in_dim} channels not divisible by block {bs}"
        else:
            statuses[name] = "sparse"

    chosen = [(n, m) for n, m in layers if statuses[n] == "sparse"]
    densities = layer_densities([tuple(m.weight.shape) for _, m in chosen], float(density), distribution)

    summary = SparsifySummary()
    by_name = dict(chosen)
    target = dict(zip((n for n, _ in chosen), densities))
    for name, module in layers:
        shape = tuple(module.weight.shape)
        kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
        if name not in by_name:
            summary.append(LayerSummary(name, kind, shape, 1.0, 0, None, statuses[name]))
            continue
        if target[name] >= 1.0 or _blocks_kept(module, bs, target[name]) == _blocks_total(module, bs):
            # A "sparse" layer holding every block would only be a slower dense one.
            summary.append(LayerSummary(name, kind, shape, 1.0, 0, None, CAPPED))
            continue
        if topology == "random":
            if kind == "conv2d":
                matrix = conv_layout_shape(module.out_channels, module.in_channels, module.kernel_size, bs)[0]
            else:
                matrix = shape
            chosen = BlockLayout.random(matrix, bs, target[name], generator=generator, device=module.weight.device)
            keep = {"layout": chosen}
        else:
            keep = {"density": target[name], "block_size": bs}
        if kind == "conv2d":
            sparse = SparseConv2d.from_dense(module, **keep)
        else:
            sparse = SparseLinear.from_dense(module, **keep)
        sparse.backend = backend
        sparse.train(module.training)
        _set_submodule(model, name, sparse)
        summary.append(LayerSummary(name, kind, shape, sparse.density, sparse.nnz, bs, "sparse"))
    if not summary.sparse_layers:
        reasons = sorted({s.status for s in summary}) or ["the model has no nn.Linear/nn.Conv2d layer"]
        warnings.warn(
            f"sparsify(block_size={bs}, density={density}) made no layer sparse; the model is unchanged "
            f"({'; '.join(reasons)}). Try a block size dividing the layers' channel counts (e.g. 16 or 32).",
            UserWarning,
            stacklevel=2,
        )
    return summary


def _blocks_total(module: nn.Module, bs: int) -> int:
    """Blocks of the layer's weight matrix (``[out, in]``, or ``[R*S*K, C]`` for convolutions)."""
    if isinstance(module, nn.Conv2d):
        (M, N), _ = conv_layout_shape(module.out_channels, module.in_channels, module.kernel_size, bs)
    else:
        M, N = module.weight.shape
    return (M // bs) * (N // bs)


def _blocks_kept(module: nn.Module, bs: int, density: float) -> int:
    return blocks_for_density(density, _blocks_total(module, bs))


def _exclusion(exclude) -> Callable[[str, nn.Module], bool]:
    if exclude is None:
        return lambda name, module: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    names = set(exclude)
    return lambda name, module: name in names


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)

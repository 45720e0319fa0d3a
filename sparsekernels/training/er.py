"""Erdős–Rényi layer densities set by SET's ε instead of a global density (``--er-epsilon``).

SET (Mocanu et al. 2018) gives a sparse layer with ``n_in`` inputs and ``n_out`` outputs the
density ``ε (n_in + n_out) / (n_in · n_out)``; for the CIFAR-10 MLP 3072-4000-1000-4000-10 and
ε = 20 that is 1.151 %, 2.5 % and 2.5 % (the output layer is dense). ``sparsify(...,
distribution="er")`` allocates densities in the same proportion, ``∝ (K + C) / (K · C)``,
scaled to meet a *global* density. :func:`er_epsilon_density` is the global density at which
that scaling factor is exactly ε, so ``sparsify(model, er_epsilon_density(model, ε, b), b,
"er")`` reproduces the ε densities (layers where ``ε (K + C) / (K · C) > 1`` are dense in both).
"""

from __future__ import annotations

from torch import nn


def er_density(shape: tuple[int, ...], epsilon: float) -> float:
    """``min(1, ε (K + C) / (K · C))`` for a weight of shape ``[K, C, ...]`` (kernel ignored, as
    in sparsify's ``"er"``)."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive; got {epsilon}")
    k, c = shape[0], shape[1]
    return min(1.0, epsilon * (k + c) / (k * c))


def er_candidates(
    model: nn.Module, block_size: int, *, dense_first_conv: bool = True, dense_classifier: bool = True
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, weight shape) of the layers ``sparsify`` would make sparse with these options
    (no ``exclude``): every ``nn.Linear``/``nn.Conv2d`` but the first conv and the last Linear,
    grouped or non-zero-padded convs, and layers whose sizes ``block_size`` does not divide."""
    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    last_linear = next((n for n, m in reversed(layers) if isinstance(m, nn.Linear)), None)
    out = []
    for name, m in layers:
        if (dense_first_conv and name == first_conv) or (dense_classifier and name == last_linear):
            continue
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            continue
        k, c = m.weight.shape[:2]
        if k % block_size or c % block_size:
            continue
        out.append((name, tuple(m.weight.shape)))
    return out


def er_epsilon_density(model: nn.Module, epsilon: float, block_size: int) -> float:
    """The global density (parameter-weighted over the layers sparsify will make sparse) whose
    ``"er"`` allocation gives every such layer ``min(1, ε (K + C) / (K · C))``.

    Raises ValueError when no layer can be made sparse or ε makes every one of them dense.
    """
    shapes = [s for _, s in er_candidates(model, block_size)]
    if not shapes:
        raise ValueError(f"no layer of the model can be made sparse with block size {block_size}")
    params = [_numel(s) for s in shapes]
    kept = sum(er_density(s, epsilon) * p for s, p in zip(shapes, params))
    density = kept / sum(params)
    if density >= 1.0:
        raise ValueError(f"--er-epsilon {epsilon} makes every sparsifiable layer dense: use a smaller epsilon")
    return density


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n

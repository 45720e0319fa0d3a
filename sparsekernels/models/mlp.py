"""The SET multilayer perceptron for CIFAR-10 and its SReLU activation.

Mocanu et al. 2018 ("Scalable training of artificial neural networks with adaptive sparse
connectivity inspired by network science", Nature Communications 9:2383) train an MLP
3072-4000-1000-4000-10 on CIFAR-10: every hidden layer is a Linear layer followed by an
SReLU and dropout 0.3; the 10-way output layer stays dense. :func:`set_mlp` builds that net
dense; :func:`sparsekernels.sparsify` with ``distribution="er"`` (and the density of
:func:`sparsekernels.training.er.er_epsilon_density`) makes its hidden layers sparse.

Initialisation follows the reference's Keras defaults, so that a sparse layer made with
``SparseLinear.from_dense`` starts from the same values as a masked Keras ``Dense`` layer:
Glorot-uniform weights over the *dense* shape (``U(±sqrt(6 / (fan_in + fan_out)))``) and zero
biases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sparsekernels.ops import pointwise

SET_HIDDEN = (4000, 1000, 4000)
ACTIVATIONS = ("relu", "srelu")


class SReLU(nn.Module):
    """S-shaped rectified linear unit (Jin et al. 2016), one set of parameters per unit.

    With learnable thresholds ``t_l``, ``t_r = t_l + |r|`` and slopes ``a_l``, ``a_r``::

        f(x) = t_l + a_l (x - t_l)   for x < t_l
               x                     for t_l <= x <= t_r
               t_r + a_r (x - t_r)   for x > t_r

    ``|r|`` keeps the right threshold at or right of the left one whatever the optimizer
    does. Initialisation as in the SET reference (Keras-contrib defaults): ``t_l = 0``,
    ``a_l ~ U(0, 1)``, ``r ~ U(±sqrt(3 / sqrt(n)))`` (Glorot-uniform of a length-``n``
    vector), ``a_r = 1``.

    x: ``[..., num_features]`` (any float dtype) -> same shape and dtype.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int; got {num_features!r}")
        self.num_features = num_features
        self.t_left = nn.Parameter(torch.empty(num_features))
        self.a_left = nn.Parameter(torch.empty(num_features))
        self.t_right = nn.Parameter(torch.empty(num_features))
        self.a_right = nn.Parameter(torch.empty(num_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(3.0 / math.sqrt(self.num_features))
        with torch.no_grad():
            self.t_left.zero_()
            self.a_left.uniform_(0.0, 1.0)
            self.t_right.uniform_(-bound, bound)
            self.a_right.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"input must have {self.num_features} features in its last dimension; got {tuple(x.shape)}"
            )
        # One fused C++ pass on float32 CPU tensors, the ATen expression elsewhere.
        return pointwise.srelu(x, self.t_left, self.t_right, self.a_left, self.a_right)

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same expectation-preserving ``1 / (1 − p)`` scaling) through
    :func:`sparsekernels.ops.pointwise.dropout`: one fused C++ pass on float32 CPU tensors (its
    mask is regenerated in the backward, not stored), ``torch.rand_like(x) >= p`` elsewhere;
    on a CPU both are much faster than the ``bernoulli_`` of ``F.dropout``, which was the
    largest cost of an SET-MLP training step. Random numbers come from torch's global
    generator (checkpointed with the run)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        return pointwise.dropout(x, self.p)


def _activation(name: str, features: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "srelu":
        return SReLU(features)
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {name!r}")


class SetMLP(nn.Module):
    """Flatten, then ``Linear -> activation -> Dropout`` per hidden layer, then a Linear classifier.

    x: ``[B, 3, 32, 32]`` (or any ``[B, ...]`` with ``in_features`` elements per sample) ->
    logits ``[B, num_classes]``. The layers live in ``self.layers`` (an ``nn.Sequential``),
    so :func:`sparsekernels.sparsify` finds them by name (``layers.0``, ``layers.3``, ...) and
    keeps the last Linear (the classifier) dense.
    """

    def __init__(
        self,
        in_features: int = 3 * 32 * 32,
        hidden: Sequence[int] = SET_HIDDEN,
        num_classes: int = 10,
        activation: str = "srelu",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive sizes; got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {num_classes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
        self.in_features = in_features
        self.hidden = hidden
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation, h)]
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, SReLU):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))


def parse_hidden(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"4000,1000,4000"`` (or a sequence of ints) -> ``(4000, 1000, 4000)``; raises ValueError."""
    if isinstance(text, str):
        try:
            sizes = tuple(int(s) for s in text.split(",") if s.strip())
        except ValueError:
            raise ValueError(
                f"hidden sizes must be comma-separated positive ints, e.g. 4000,1000,4000; got {text!r}"
            ) from None
    else:
        sizes = tuple(int(s) for s in text)
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"hidden sizes must be comma-separated positive ints, e.g. 4000,1000,4000; got {text!r}")
    return sizes


def set_mlp(
    num_classes: int = 10,
    width: float = 1,
    hidden: Sequence[int] | str = SET_HIDDEN,
    activation: str = "srelu",
    dropout: float = 0.3,
) -> SetMLP:
    """The SET MLP (3072-4000-1000-4000-10, SReLU, dropout 0.3 by default).

    ``width`` multiplies every hidden size (rounded, at least 1), like the ResNets' channel
    multiplier; ``hidden`` is a sequence or a comma-separated string.
    """
    if width <= 0:
        raise ValueError(f"width must be positive; got {width}")
    sizes = tuple(max(1, int(round(h * width))) for h in parse_hidden(hidden))
    return SetMLP(3 * 32 * 32, sizes, num_classes, activation, dropout)

"""Fixed, seeded subsets of a training split: class-balanced fractions (``--train-fraction``)
and the probe set on which the training accuracy is measured without augmentation
(``--eval-train``)."""

from __future__ import annotations

import torch

from sparsekernels.data.cifar10 import CIFAR10, Split


def balanced_indices(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted int64 indices of a class-balanced ``fraction`` of ``labels`` (int64 ``[N]``).

    Every class ``c`` with ``n_c`` examples keeps ``max(1, round(fraction · n_c))`` of them,
    drawn without replacement by a CPU ``torch.Generator`` seeded with ``seed``: the subset
    depends only on the labels, the fraction and the seed (not on the device or on the
    training seed), so every run given the same three trains on the same images.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    labels = labels.detach().cpu().long()
    if fraction == 1.0:
        return torch.arange(labels.shape[0], dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        k = max(1, int(round(fraction * members.numel())))
        keep.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    return torch.sort(torch.cat(keep)).values


def balanced_subset(split: Split, fraction: float, seed: int = 0) -> Split:
    """The :func:`balanced_indices` subset of ``split``, on the split's device."""
    idx = balanced_indices(split.labels, fraction, seed).to(split.labels.device)
    return Split(split.images[idx], split.labels[idx])


def with_train_fraction(data: CIFAR10, fraction: float, seed: int = 0) -> CIFAR10:
    """``data`` with its training split replaced by :func:`balanced_subset` (test split unchanged)."""
    if fraction >= 1.0:
        return data
    source = f"{data.source} (class-balanced {fraction:g} of the training set, subset seed {seed})"
    return CIFAR10(balanced_subset(data.train, fraction, seed), data.test, data.classes, source)


def probe_subset(split: Split, size: int, seed: int = 0) -> Split:
    """A fixed random ``size`` images of ``split`` (all of them when ``size >= len(split)``),
    for measuring training accuracy in evaluation mode."""
    if size < 1:
        raise ValueError(f"size must be >= 1; got {size}")
    n = len(split)
    if size >= n:
        return split
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.sort(torch.randperm(n, generator=g)[:size]).values.to(split.labels.device)
    return Split(split.images[idx], split.labels[idx])

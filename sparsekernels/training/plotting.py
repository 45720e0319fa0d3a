"""PNG plots of run records: accuracy curves and mask churn (matplotlib, imported on use).

A record is the dict written by ``python -m sparsekernels.train`` (``record["epochs"]`` is a
list of per-epoch dicts with ``epoch``, ``test_acc`` and ``wall_clock``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from typing import Any

# Keys an engine's history entry may use for the fraction of active blocks that changed.
CHURN_KEYS = ("churn", "mask_churn", "changed_fraction", "fraction_changed", "turnover")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None (with a warning) if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plots written (pip install matplotlib)", stacklevel=3)
        return None
    return plt


def plot_accuracy(records: Sequence[dict[str, Any]], labels: Sequence[str], path: str | os.PathLike) -> bool:
    """Test accuracy vs epoch (left) and vs training wall-clock (right), one line per record.

    Returns whether the file was written.
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, (ax_epoch, ax_time) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for record, label in zip(records, labels):
        epochs = [e for e in record["epochs"] if e.get("test_acc") is not None]
        acc = [100 * e["test_acc"] for e in epochs]
        ax_epoch.plot([e["epoch"] for e in epochs], acc, marker="o", markersize=3, label=label)
        ax_time.plot([e["wall_clock"] for e in epochs], acc, marker="o", markersize=3, label=label)
    ax_epoch.set_xlabel("epoch")
    ax_time.set_xlabel("training wall-clock (s, evaluation excluded)")
    for ax in (ax_epoch, ax_time):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _entry_dict(entry: Any) -> dict[str, Any] | None:
    if isinstance(entry, dict):
        return entry
    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        return dataclasses.asdict(entry)
    return getattr(entry, "__dict__", None)


def churn_series(history: Sequence[Any] | None) -> tuple[list[float], list[float]] | None:
    """(steps, churn) from an engine's history, or None when it records no churn.

    Each entry is a dict (or dataclass) with a ``step`` and one of :data:`CHURN_KEYS`, either a
    number or a per-layer dict of numbers (averaged).
    """
    steps: list[float] = []
    churn: list[float] = []
    for i, raw in enumerate(history or ()):
        entry = _entry_dict(raw)
        if entry is None:
            return None
        key = next((k for k in CHURN_KEYS if k in entry), None)
        if key is None:
            continue
        value = entry[key]
        if isinstance(value, dict):
            numbers = [float(v) for v in value.values() if isinstance(v, (int, float))]
            if not numbers:
                continue
            value = sum(numbers) / len(numbers)
        if not isinstance(value, (int, float)):
            continue
        steps.append(float(entry.get("step", i)))
        churn.append(float(value))
    return (steps, churn) if steps else None


def plot_churn(histories: Sequence[Any], labels: Sequence[str], path: str | os.PathLike) -> bool:
    """Mask churn per topology update vs step, one line per history that has any.

    Returns whether the file was written (False when no history holds churn values).
    """
    series = [(churn_series(h), label) for h, label in zip(histories, labels)]
    series = [(s, label) for s, label in series if s is not None]
    if not series:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for (steps, churn), label in series:
        ax.plot(steps, churn, marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mask churn (fraction of active blocks replaced)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

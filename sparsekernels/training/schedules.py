"""Learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

SCHEDULES = ("one-cycle", "cosine", "constant")


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr at ``step``: linear from ~0 to 1 over ``warmup_steps``, then
    cosine from 1 to 0 at ``total_steps``."""
    if step < warmup_steps:
        # (step + 1) so the very first update already moves the weights.
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
) -> LRScheduler:
    """A per-step schedule over ``total_steps`` that peaks at each group's current ``lr``.

    ``"one-cycle"``: :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine annealing, warm-up over
    the first 30 %; momentum is left alone so AdamW and SGD behave alike).
    ``"cosine"``: linear warm-up over ``warmup_steps``, then cosine decay to zero.
    ``"constant"``: linear warm-up over ``warmup_steps``, then the peak lr to the end (SET's
    plain SGD).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive; got {total_steps}")
    if name == "one-cycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, cycle_momentum=False)
    if name == "cosine":
        warmup = min(max(0, int(warmup_steps)), total_steps)
        return LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup))
    if name == "constant":
        warmup = min(max(0, int(warmup_steps)), total_steps)
        return LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else 1.0)
    raise ValueError(f"schedule must be one of {SCHEDULES}; got {name!r}")

"""Keeping every rank's topology decision identical under ``torch.distributed``.

Design: every rank computes the decision itself from identical inputs, rather than rank 0
deciding and broadcasting masks.

* Scores are averaged over ranks before selection (one flattened all-reduce per update:
  the dense gradients of gradient-growth methods, then all prune/grow scores). The dense
  gradient of an update step is thus the gradient of the global batch, as in RigL; an
  all-reduce leaves bit-identical results on every rank.
* Random draws (tie-breaking, SET growth, exploration) come from the engine's generator,
  seeded with rank 0's seed at construction (one broadcast there), and every rank draws the
  same shapes in the same order (the swap counts are Python ints from the schedule).
* Selection (argsort, comparisons, index_put) is deterministic for identical inputs on
  identical devices, so every rank builds the same mask; values and optimizer state then
  stay identical because DDP keeps parameters and gradients identical.

All-reduces are queued on the device like any collective (no host synchronisation on GPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size(group=None) -> int:
    """Ranks in ``group`` when ``torch.distributed`` is initialised, else 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def all_reduce_mean_(tensors: list[torch.Tensor], group=None) -> None:
    """Average each tensor over the ranks in place, with one flattened all-reduce per dtype
    and device."""
    n = world_size(group)
    if n == 1 or not tensors:
        return
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.dtype, t.device), []).append(t)
    for bucket in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat.div_(n)
        for t, part in zip(bucket, flat.split([t.numel() for t in bucket])):
            t.copy_(part.view_as(t))


def broadcast_seed(seed: int, device: torch.device, group=None) -> int:
    """Rank 0's ``seed`` on every rank (synchronises; construction only)."""
    if world_size(group) == 1:
        return seed
    # Collectives on NCCL need device tensors; gloo accepts CPU ones.
    backend = dist.get_backend(group)
    where = device if backend == "nccl" else torch.device("cpu")
    buf = torch.tensor([seed], dtype=torch.int64, device=where)
    dist.broadcast(buf, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return int(buf.item())

"""Output allocation shared by every backend.

Kernels write into buffers from :func:`new_output`. Tests turn on poisoning
(``set_poison_outputs(True)``) so that fresh outputs start as NaN: an element a kernel
forgets to write then fails the comparison instead of passing on leftover memory.
"""

from __future__ import annotations

import torch

_poison = False


def set_poison_outputs(enabled: bool) -> None:
    global _poison
    _poison = bool(enabled)


def poisoning() -> bool:
    return _poison


def new_output(shape, dtype: torch.dtype, device: torch.device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``torch.empty`` (NaN-filled while poisoning is on)."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _poison:
        out.fill_(float("nan"))
    return out

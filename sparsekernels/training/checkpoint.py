"""Checkpoints that let a run continue exactly: weights, optimizer, schedule, engine, RNGs.

File format (version 1)::

    SPARSEKERNELS-CHECKPOINT 1 sha256=<64 hex digits> bytes=<payload length>\\n
    <payload: torch.save of the state dict>

Loading reads the header, checks the payload's length and SHA-256, and only then
deserialises it with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only, so a crafted file cannot run code, and a flipped, truncated or appended
byte is detected before anything is used. Every failure raises :class:`CheckpointError`
(a ``ValueError``) naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Any

import torch

MAGIC = b"SPARSEKERNELS-CHECKPOINT"
VERSION = 1
_HEADER = re.compile(rb"SPARSEKERNELS-CHECKPOINT (\d+) sha256=([0-9a-f]{64}) bytes=(\d+)\n")
_MAX_HEADER = 160


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, empty, truncated, corrupted or foreign."""


def rng_state() -> dict[str, Any]:
    """Python's and torch's (CPU and every CUDA device's) random generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when CUDA is present)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain containers) with a header carrying the payload's
    SHA-256; to a temporary name, then renamed, so an interrupted save never replaces a good
    checkpoint with a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = b"%s %d sha256=%s bytes=%d\n" % (
        MAGIC,
        VERSION,
        hashlib.sha256(payload).hexdigest().encode(),
        len(payload),
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
    tmp.replace(path)


def load_checkpoint(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, verified (see the module docstring).

    Raises :class:`CheckpointError` naming ``path`` for a missing, empty, truncated,
    corrupted, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({err})") from None
    if not data:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"checkpoint {path}: not a sparsekernels checkpoint (no {MAGIC.decode()} header; another program's file, "
            "or one written before checksummed checkpoints)"
        )
    end = data.find(b"\n", 0, _MAX_HEADER)
    match = _HEADER.fullmatch(data[: end + 1]) if end >= 0 else None
    if match is None:
        raise CheckpointError(f"checkpoint {path}: the header is damaged")
    version, digest, size = int(match[1]), match[2].decode(), int(match[3])
    if version != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version}; this sparsekernels reads {VERSION}")
    payload = data[end + 1 :]
    if len(payload) != size:
        what = "truncated" if len(payload) < size else "longer than written"
        raise CheckpointError(f"checkpoint {path}: {what} ({len(payload)} of {size} payload bytes)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path}: corrupted (the payload's SHA-256 does not match its header)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"checkpoint {path}: the payload cannot be loaded safely ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(state).__name__}, not a state dict")
    return state

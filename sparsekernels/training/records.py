"""Run records: the environment a run ran in, and JSON that any value can be written to."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    """A human-readable device name (the GPU model, or the CPU and its core count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _cpu_model() -> str:
    """The CPU's marketing name where Linux tells it (``platform.processor()`` is often empty)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The source tree's commit (with ``-dirty`` when modified), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, for the record of a benchmark run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import numpy

    import sparsekernels

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "numpy": numpy.__version__,
        "sparsekernels": sparsekernels.__version__,
        "git_commit": _git_commit(),
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": device_name(device),
        "platform": platform.platform(),
    }


def to_jsonable(value: Any) -> Any:
    """``value`` with tensors, numpy values, dataclasses, tuples and paths turned into JSON types.

    Non-finite floats become None (strict JSON has no NaN); unknown objects become their ``repr``.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars
        return to_jsonable(value.item())
    if hasattr(value, "tolist"):  # numpy arrays
        return to_jsonable(value.tolist())
    return repr(value)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a crash never leaves half a record)."""
    path = Path(path)
    # One temporary name per process: processes sharing a --compare folder write compare.json.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    tmp.replace(path)

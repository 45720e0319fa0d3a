"""Helpers shared by the kernel benchmarks: device naming, timing, and writing results.

Every benchmark writes under ``benchmarks/results/<device-slug>/``: a JSON record (device
name, library versions, date, configuration, one row per case), a plain-text table and a
plot. GPU times come from ``triton.testing.do_bench`` (median, L2 flushed between runs);
CPU times from ``torch.utils.benchmark.Timer.blocked_autorange`` (median).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def device_name(device: torch.device) -> str:
    """Human-readable name: the GPU's, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_slug(device: torch.device) -> str:
    """Folder name for a device's results, e.g. ``cuda-nvidia-h100-80gb-hbm3``."""
    return f"{device.type}-" + re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")[:40]


def _git_revision() -> str | None:
    """Short hash of the checkout's HEAD (``+dirty`` when tracked files changed), if any."""
    root = Path(__file__).parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True).returncode
    except OSError:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "") if rev.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Device and library versions for a results record."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "git_revision": _git_revision(),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cpu":
        env["cpu_threads"] = torch.get_num_threads()
        # Other processes on a shared machine skew CPU timings: record how busy it was.
        env["load_average_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return env


def time_ms(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.5) -> float:
    """Median milliseconds of one call of ``fn`` (after warm-up, which also autotunes)."""
    if device.type == "cuda":
        import triton.testing

        fn()
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    from torch.utils.benchmark import Timer

    fn()
    # Timer runs with num_threads=1 unless told otherwise: time with the threads torch is set to.
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def results_dir(device: torch.device, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / device_slug(device)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2) + "\n")


def write_table(path: Path, rows: list[dict], columns: list[str], floatfmt: str = ".3f") -> str:
    """Write ``rows`` (dicts) as a GitHub-flavoured table with the given columns; returns it."""
    from tabulate import tabulate

    table = tabulate([[r[c] for c in columns] for r in rows], headers=columns, tablefmt="github", floatfmt=floatfmt)
    path.write_text(table + "\n")
    return table


def plot_lines(
    path: Path,
    panels: dict[str, dict[str, tuple[list[float], list[float]]]],
    xlabel: str,
    ylabel: str,
    title: str,
    reference_y: float | None = 1.0,
    logx: bool = True,
) -> None:
    """One subplot per panel, one line per series ``{label: (xs, ys)}``; a dashed
    horizontal line at ``reference_y`` (the dense baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        if reference_y is not None:
            ax.axhline(reference_y, color="black", linestyle="--", linewidth=1, label="dense")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

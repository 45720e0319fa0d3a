"""The benchmark suite's entry point runs end to end at tiny sizes (what a GPU run will do)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_run_suite_smoke(tmp_path):
    suite = str(ROOT / "benchmarks" / "run_suite.py")
    result = subprocess.run(
        [sys.executable, suite, "--smoke", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["matmul", "conv", "layout", "train"]
    assert all(s["exit_code"] == 0 for s in summary["steps"])
    layout = json.loads((tmp_path / "layout_rebuild.json").read_text())
    assert layout["rows"] and all(r["median_ms"] > 0 for r in layout["rows"])
    compare = json.loads((tmp_path / "train" / "compare.json").read_text())
    assert [r["label"] for r in compare["runs"]] == ["dense", "rigl"]
    assert compare["runs"][1]["structure_history"], "the RigL run recorded no topology update"

"""Corrupted layouts fuzzed against the Triton backend (under the interpreter on CPU) and the
native backend, in a subprocess: an out-of-bounds read that crashes the process fails this
test with the worker's output instead of killing pytest. See tests/layout_fuzz.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_layout_corruption_fuzz_in_a_subprocess(seed):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "SPARSEKERNELS_DEBUG_CHECKS": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tests.layout_fuzz", "150", str(seed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    assert "fuzz ok" in proc.stdout, report

"""benchmarks/gpu_proof.py runs end to end on the CPU (``--smoke``: interpreter, tiny sizes) and
writes the record a GPU run would (issue 12, point 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["compile", "ceilings", "correctness", "matmul", "conv", "layout", "train", "graph"]


def test_gpu_proof_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_proof.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "GPU proof summary" in result.stdout
    record = json.loads((tmp_path / "proof.json").read_text())
    assert (tmp_path / "proof.md").read_text().startswith("# GPU proof")
    assert record["smoke"] is True and record["meta"]["versions"]["torch"]
    sections = record["sections"]
    assert list(sections) == SECTIONS
    bad = {name: sec.get("error") or sec.get("reason") for name, sec in sections.items() if sec["status"] != "ok"}
    assert not bad, bad
    correctness = sections["correctness"]["results"]
    assert correctness["total"] >= 20
    failed = [c for c in correctness["cases"] if not c.get("passed")]
    assert not failed, failed
    ops = {c["op"] for c in correctness["cases"]}
    assert {"sdd", "dsd", "dsd_t", "dds", "dds_t", "conv_fwd", "conv_dx", "conv_dw"} <= ops
    matmul = [r for r in sections["matmul"]["results"]["rows"] if r["op"] in ("sdd", "dsd", "dds")]
    assert {r["op"] for r in matmul} == {"sdd", "dsd", "dds"} and all(r["ms"] > 0 for r in matmul)
    conv = sections["conv"]["results"]["rows"]
    assert {r["op"] for r in conv} == {"conv_fwd", "conv_dx", "conv_dw"} and all(r["ms"] > 0 for r in conv)
    assert sections["layout"]["results"]["layers"]
    assert sections["compile"]["results"]["kernel_configs"] >= sections["compile"]["results"]["launches"] > 20
    train = sections["train"]["results"]
    assert train["dense_median_ms"] > 0 and train["sparse_d0.1_b32_median_ms"] > 0


def test_gpu_proof_budget_skips_sections(tmp_path):
    """A budget too small for any section: every section is skipped, and the record still says so."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_proof.py"), "--smoke", "--budget", "1", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    sections = json.loads((tmp_path / "proof.json").read_text())["sections"]
    assert list(sections) == SECTIONS
    assert all(sec["status"] == "skipped" and "budget" in sec["reason"] for sec in sections.values())

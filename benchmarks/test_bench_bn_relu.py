"""bench_bn_relu.py: one tiny round into a temporary folder (every layer and step case ran on and
off, the table and JSON hold the same rows, speed-ups are the ratios of the rows' own times).
No speed assertions."""

from __future__ import annotations

import json

import bench_bn_relu as bbr
import pytest

from sparsekernels.ops.batchnorm import fused_batch_norm_available


@pytest.mark.skipif(not fused_batch_norm_available(), reason="native extension without the fused BatchNorm")
def test_smoke_round_writes_table_and_json(tmp_path):
    assert bbr.main(["--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bn_relu.json").read_text())
    rows = result["rows"]
    assert [r["kind"] for r in rows] == ["layer"] * 6 + ["step"] * 2
    assert [r["case"] for r in rows if r["kind"] == "step"] == ["dense", "sparse"]
    for r in rows:
        assert r["aten_ms"] > 0 and r["fused_ms"] > 0 and r["speedup"] == pytest.approx(r["aten_ms"] / r["fused_ms"])
    table = (tmp_path / "bn_relu.md").read_text()
    assert table.count("\n| layer | ") == 6 and table.count("\n| step | ") == 2 and "Sparse vs dense step" in table

"""bench_set_mlp.py: one tiny round into a temporary folder (every case ran, the table and the
JSON hold what the rows say, ratios against dense of the same run). No speed assertions."""

from __future__ import annotations

import json

import bench_set_mlp as bsm
import pytest

from sparsekernels.ops import pointwise


@pytest.mark.skipif(not pointwise.fused_available(), reason="native extension without pointwise ops")
def test_one_round_writes_table_and_json(tmp_path):
    cases = ["dense", "sparse-b8", "sparse-b8-aten"]
    argv = ["--threads", "1", "--rounds", "1", "--images", "200", "--cases", *cases, "--out", str(tmp_path)]
    assert bsm.main(argv) == 0
    rows = json.loads((tmp_path / "set_mlp_step.json").read_text())
    assert [r["case"] for r in rows] == cases and all(r["threads"] == 1 and r["rounds"] == 1 for r in rows)
    dense = rows[0]
    assert dense["speedup_wall_vs_dense"] == 1.0
    for r in rows:
        assert r["wall_ms_per_step"] > 0 and r["cpu_ms_per_step"] > 0 and r["max_load1"] >= 0
        assert r["speedup_wall_vs_dense"] == pytest.approx(dense["wall_ms_per_step"] / r["wall_ms_per_step"])
    table = (tmp_path / "set_mlp_step.md").read_text()
    assert table.count("\n| 1 | ") == 3 and "| 1 | sparse-b8-aten |" in table

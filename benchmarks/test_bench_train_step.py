"""bench_train_step.py: a --smoke run into a temporary folder (structure of its results, every case
ran), the amortisation arithmetic, and the one-line skip of a missing peer. No speed assertions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import bench_train_step as bts
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPARSE_CASES = [f"sparse-{d}-b{b}" for d in ("uniform", "erk") for b in (16, 32)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_step")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "train_step.json").read_text()), proc.stdout


def _finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_smoke_record_structure(smoke):
    out, record, _ = smoke
    assert record["benchmark"] == "train_step"
    for key in ("environment", "config", "native", "peers", "rows"):
        assert key in record
    assert record["environment"]["device"] and record["environment"]["torch"]
    assert record["config"]["smoke"] is True and record["config"]["batch"] == [2]
    assert (out / "train_step.md").stat().st_size > 0
    assert (out / "train_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_every_case_ran(smoke):
    out, record, _ = smoke
    rows = record["rows"]
    peers = [name for name, p in record["peers"].items() if p["ran"]]
    train = {r["case"]: r for r in rows if r["mode"] == "train"}
    assert sorted(train) == sorted(["dense-nchw", "dense-cl", *SPARSE_CASES, *peers])
    infer = [(r["batch"], r["case"]) for r in rows if r["mode"] == "inference"]
    assert sorted(infer) == sorted((b, c) for b in (1, 2) for c in ["dense-nchw", "dense-cl", *SPARSE_CASES])
    md = (out / "train_step.md").read_text()
    for r in rows:
        assert r["samples"] >= 1 and r["threads"] == 1, r
        for key in ("step_ms", "amortized_ms", "speedup", "speedup_step", "load_1min_max"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert _finite_positive(r["amortized_ms"]), r
        assert r["oversubscribed"] == (r["load_1min_max"] > bts.CORES + 0.5), r
        assert r["case"] in md
    assert train["dense-cl"]["speedup"] == 1.0
    # Every DST case timed its update step and amortised it over the period.
    for name in SPARSE_CASES + [p for p in peers if p == "rigl-torch"]:
        r = train[name]
        assert r["update_samples"] >= 1 and _finite_positive(r["update_step_ms"]), r
        u = record["config"]["update_every"]
        assert r["amortized_ms"] == pytest.approx(((u - 1) * r["step_ms"] + r["update_step_ms"]) / u)
    for name in SPARSE_CASES:
        assert 0 < train[name]["global_density"] < 1 and train[name]["sparse_layers"] > 0
    for name, p in record["peers"].items():
        assert p["ran"] or p["reason"], (name, p)


def test_summarise_amortises_and_compares_to_dense_cl():
    dense = bts.Case("dense-cl", "dense", [], {"memory": "channels-last"}, plain=[0.3, 0.1, 0.2])
    sparse = bts.Case("sparse-uniform-b32", "sparse", [], {"memory": "channels-last"}, plain=[0.05], update=[0.5])
    rows = bts.summarise([dense, sparse], "train", 64, 2, [0.5, 1.5, 1.0], update_every=10)
    d, s = rows
    assert d["step_ms"] == pytest.approx(200.0) and d["amortized_ms"] == pytest.approx(200.0)
    assert s["amortized_ms"] == pytest.approx((9 * 50.0 + 500.0) / 10)
    assert s["speedup"] == pytest.approx(200.0 / 95.0) and s["speedup_step"] == pytest.approx(4.0)
    assert s["update_over_step"] == pytest.approx(10.0) and s["dst_overhead_pct"] == pytest.approx(90.0)
    assert s["load_1min_max"] == 1.5 and s["load_1min_median"] == 1.0


def test_missing_peer_is_skipped_with_a_reason(monkeypatch):
    monkeypatch.setattr(bts.importlib.util, "find_spec", lambda name, *a, **k: None)
    for name in bts.PEERS:
        ok, reason = bts.find_peer(name)
        assert not ok and "not installed" in reason and bts.PEERS[name][1] in reason

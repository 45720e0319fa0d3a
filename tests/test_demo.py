"""The README's main job: the demo checks every op on every backend here and trains briefly."""

from __future__ import annotations

import json

from sparsekernels import demo


def test_demo_runs_and_checks(tmp_path, capsys):
    code = demo.main(["--quick", "--device", "cpu", "--train-steps", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "all op checks passed" in out
    for backend in demo.available_backends(__import__("torch").device("cpu")):
        assert f" {backend} " in out
    record = json.loads((tmp_path / "compare.json").read_text())
    assert [r["label"] for r in record["runs"]] == ["dense", "rigl"]

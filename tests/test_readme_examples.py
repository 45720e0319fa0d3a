"""The README's examples run as written: every ```python block is executed (CPU-sized), and
every ``python -m sparsekernels.train`` command of a ```bash block parses.

Convention for blocks that must not run here: an HTML comment on the line just before the
fence (invisible on the rendered page):

* ``<!-- readme-test: cuda -->``: runs only when CUDA is available (the GPU suite runs it);
* ``<!-- readme-test: skip (reason) -->``: never executed; the reason is required.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(
    r"(?:<!--\s*readme-test:\s*(?P<marker>[^>]*?)\s*-->\s*\n)?```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.S
)


def _blocks(lang: str) -> list[tuple[int, str, str]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        if m.group("lang") == lang:
            line = text.count("\n", 0, m.start("code")) + 1
            out.append((line, (m.group("marker") or "").strip(), m.group("code")))
    return out


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_examples_and_valid_markers():
    assert len(PYTHON_BLOCKS) >= 3
    for line, marker, _ in PYTHON_BLOCKS:
        assert marker in ("", "cuda") or re.fullmatch(r"skip \(.+\)", marker), f"README.md:{line}: {marker!r}"


@pytest.mark.filterwarnings("ignore:Sparse BSR tensor support is in beta state")
@pytest.mark.parametrize(("line", "marker", "code"), PYTHON_BLOCKS, ids=[f"README.md:{b[0]}" for b in PYTHON_BLOCKS])
def test_readme_python_block_runs(line, marker, code, tmp_path, monkeypatch, capsys):
    if marker.startswith("skip"):
        pytest.skip(f"README.md:{line} is marked {marker}")
    if marker == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"README.md:{line} needs CUDA")
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README's own code
    capsys.readouterr()


def _train_commands() -> list[tuple[int, list[str]]]:
    commands = []
    for line, _, code in _blocks("bash"):
        joined = code.replace("\\\n", " ")
        for cmd in joined.splitlines():
            if not cmd.lstrip().startswith("#") and "python -m sparsekernels.train" in cmd:
                argv = shlex.split(cmd.split("python -m sparsekernels.train", 1)[1])
                commands.append((line, argv))
    return commands


def test_readme_training_commands_parse():
    from sparsekernels import train

    commands = _train_commands()
    assert commands, "the README shows training commands"
    for line, argv in commands:
        try:
            train.parse_args(argv)
        except SystemExit as err:  # argparse's error exit
            raise AssertionError(f"README.md:{line}: {' '.join(argv)} does not parse") from err

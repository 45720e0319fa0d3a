"""The training CLI's front door: ``--help`` is quick (no torch import) and documents every flag."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from sparsekernels import train

ROOT = Path(__file__).resolve().parents[1]


def _flag_actions() -> list[argparse.Action]:
    parser = train.build_parser()
    return [a for a in parser._actions if a.option_strings and a.default is not argparse.SUPPRESS]


def test_help_is_quick_and_imports_no_torch():
    """A build/UX check with a generous margin, not a speed claim: the help must not wait for
    torch (seconds on a cold machine). Run in a fresh interpreter, as a user does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = (
        "import runpy, sys; sys.argv = ['train', '--help']\n"
        "try:\n    runpy.run_module('sparsekernels.train', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'triton', 'numpy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "usage: python -m sparsekernels.train" in result.stdout
    assert "HEAVY []" in result.stdout, result.stdout[-300:]
    assert seconds < 3.0, f"--help took {seconds:.1f} s"
    # and the real entry point answers too
    result = subprocess.run(
        [sys.executable, "-m", "sparsekernels.train", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0 and "--block-size" in result.stdout


def test_every_flag_has_help_and_exactly_one_default():
    formatter = train.build_parser()._get_formatter()
    for action in _flag_actions():
        assert action.help, f"{action.option_strings[0]} has no help text"
        text = formatter._get_help_string(action)  # what --help prints, before %-expansion
        assert text.count("(default:") == 1, f"{action.option_strings[0]}: {text!r}"


def test_static_names_match_the_registries():
    """The parser is built without importing torch, so it repeats these names: keep them equal."""
    from sparsekernels.models import MODELS
    from sparsekernels.training.schedules import SCHEDULES

    assert set(train.MODEL_NAMES) == set(MODELS)
    assert tuple(train.SCHEDULE_NAMES) == tuple(SCHEDULES)
    assert set(train.AMP_NAMES) == set(train.AMP_DTYPES)
    from sparsekernels.dst.engine import ADAPT_FLOOR

    assert train.DEFAULT_ADAPT_FLOOR == ADAPT_FLOOR


def test_default_block_size_can_rewire_the_default_model():
    """With the defaults at density 0.1 (resnet20, block 16) the first topology update swaps
    blocks; block 32, the old default, leaves no layer a block to swap."""
    import torch

    from sparsekernels.dst import DynamicSparsity
    from sparsekernels.models import build_model
    from sparsekernels.nn import sparsify

    def first_update_swaps(block_size: int) -> bool:
        args = train.parse_args(["--density", "0.1", "--method", "rigl", "--block-size", str(block_size)])
        model = build_model(args.model, num_classes=10, width=args.width)
        sparsify(model, density=args.density, block_size=args.block_size, distribution=args.distribution)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        engine = DynamicSparsity(
            model,
            optimizer,
            method=args.method,
            update_every=args.update_every,
            fraction=args.update_fraction,
            schedule=args.update_schedule,
            stop_after=10 * args.update_every,
        )
        return engine.is_update_step(args.update_every)

    assert train.parse_args([]).block_size == 16
    assert first_update_swaps(16)
    assert not first_update_swaps(32)

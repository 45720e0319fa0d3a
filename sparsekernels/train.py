"""End-to-end CIFAR-10 training benchmark: dense vs. static vs. dynamic block-sparse ResNets.

Usage::

    python -m sparsekernels.train --model resnet20 --epochs 30 --data-dir ~/data --out runs/r20
    python -m sparsekernels.train --model resnet18 --density 0.1 --method rigl --amp bf16 --channels-last
    python -m sparsekernels.train --compare dense,rigl,evolutionary --density 0.1 --epochs 30

Each run writes under ``--out``: ``record.json`` (configuration, versions, device, per-epoch
loss/accuracy/time/throughput, parameters, FLOPs, sparsity summary, structure history),
``accuracy.png`` (test accuracy vs. epoch and vs. wall-clock), ``churn.png`` (when a dynamic
method recorded mask churn) and, with ``--checkpoint-every``, ``checkpoint-epochNNN.pt``.
``--compare`` runs each configuration in a sub-folder and adds ``compare.json``,
``compare.txt`` (the table) and ``compare.png``.

Timing: epoch seconds cover the training steps only (evaluation is timed separately) and
end with a device synchronisation, so GPU timings are complete.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The command line is defined before torch is imported (see _answer_help_early): these names
# repeat registries of torch-importing modules, and tests/test_train_cli.py checks they agree.
MODEL_NAMES = ("resnet18", "resnet20", "resnet32", "resnet56", "set-mlp")  # sparsekernels.models.MODELS
SCHEDULE_NAMES = ("one-cycle", "cosine", "constant")  # sparsekernels.training.schedules.SCHEDULES
AMP_NAMES = ("bf16", "fp16", "none")  # AMP_DTYPES below
METHODS = ("static", "set", "rigl", "evolutionary", "evolutionary-gradient")
DISTRIBUTIONS = ("uniform", "er", "erk")
BACKENDS = ("auto", "triton", "reference", "native")
DEFAULT_ADAPT_FLOOR = 0.1  # sparsekernels.dst.engine.ADAPT_FLOOR
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 5e-2}
# Sparse entries of --compare use --density, or this when --density is left at 1.0.
DEFAULT_COMPARE_DENSITY = 0.1
# A resumed run must be the same run: these options shape the model, the data order or the
# schedule, so a checkpoint only continues under equal values.
RESUME_KEYS = (
    "model", "width", "density", "block_size", "distribution", "method", "update_every", "update_fraction",
    "update_schedule", "stop_after", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs",
    "label_smoothing", "batch_size", "epochs", "max_steps", "seed", "synthetic", "synthetic_size",
)  # fmt: skip
# Options that change how the steps compute (precision, kernels, memory format, compilation):
# a resumed run must use the same ones, or its record would describe a run that never happened.
# Each resumed segment also records them with its device (record["segments"]).
COMPUTE_KEYS = ("amp", "backend", "channels_last", "compile", "fused_bn_relu")

# Options of the SET MLP, its data pipeline and the sample-efficiency runs (issue 15).
RESUME_KEYS += (
    "hidden", "activation", "dropout", "augment", "er_epsilon", "update_unit", "train_fraction", "subset_seed",
    "eval_train", "nesterov", "initial_topology", "adapt_floor", "grace_updates",
)  # fmt: skip
# Options added after checkpoints existed: a checkpoint without the key trained with this value.
OPTION_DEFAULTS_BEFORE = {
    "initial_topology": "magnitude",
    "adapt_floor": DEFAULT_ADAPT_FLOOR,
    "grace_updates": None,
    "fused_bn_relu": False,
}


# ----------------------------------------------------------------------------- command line
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparsekernels.train",
        description="Train a (block-sparse) ResNet on CIFAR-10 and record accuracy, time and cost.",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default="resnet20", choices=MODEL_NAMES, help="network: CIFAR ResNets, or SET's MLP (set-mlp)"
    )
    g.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    g.add_argument(
        "--max-steps", type=int, default=None, help="cap on optimizer steps, for smoke runs (default: no cap)"
    )
    g.add_argument("--batch-size", type=int, default=128, help="training images per optimizer step")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="sgd: Nesterov momentum 0.9")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: sgd 0.1, adamw 1e-3)")
    g.add_argument(
        "--weight-decay", type=float, default=None, help="on conv/linear weights only (default: sgd 5e-4, adamw 0.05)"
    )
    g.add_argument("--schedule", default="cosine", choices=SCHEDULE_NAMES, help="lr schedule, stepped every step")
    g.add_argument(
        "--warmup-epochs",
        type=float,
        default=1.0,
        help="linear warm-up of the cosine schedule (at most a fifth of the run's steps)",
    )
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing, in [0, 1)")
    g.add_argument("--amp", default="none", choices=AMP_NAMES, help="autocast dtype (fp16 adds loss scaling)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory for model and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--fused-bn-relu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ResNets: BatchNorm + (residual add +) ReLU as one native op in training where it applies (float32 "
        "CPU tensors, --channels-last); --no-fused-bn-relu: ATen's separate ops (default: on for a new ResNet "
        "run; a resumed run keeps its checkpoint's choice)",
    )
    g = p.add_argument_group("sparsity")
    g.add_argument("--density", type=float, default=1.0, help="fraction of weights kept (1.0 = dense)")
    g.add_argument(
        "--block-size",
        type=int,
        default=16,
        help="square block size of the sparse layers. 16 leaves every ResNet-20 layer (16-64 channels) "
        "several blocks to rewire at density 0.1, where 32 leaves about one (nothing to swap); "
        "32 or 64 suit wide models such as resnet18 on a GPU",
    )
    g.add_argument("--distribution", default="erk", choices=DISTRIBUTIONS, help="per-layer density allocation")
    g.add_argument("--method", default="static", choices=METHODS, help="topology update method")
    g.add_argument("--update-every", type=int, default=100, help="optimizer steps between topology updates")
    g.add_argument("--update-fraction", type=float, default=0.3, help="fraction of active blocks replaced")
    g.add_argument(
        "--update-schedule",
        default="cosine",
        choices=("constant", "cosine", "linear"),
        help="decay of --update-fraction over the updates (cosine: RigL's)",
    )
    g.add_argument("--stop-after", type=float, default=0.75, help="no updates after this fraction of the steps")
    g.add_argument(
        "--adapt-floor",
        type=float,
        default=DEFAULT_ADAPT_FLOOR,
        help="smallest adaptive multiplier of the swap count (evolutionary methods; in [0, 1]): a settled "
        "structure still swaps this share of the scheduled blocks; 0 lets it fall to one block per layer",
    )
    g.add_argument(
        "--grace-updates",
        type=int,
        default=None,
        help="updates during which a grown block is pruned only if nothing else is left (default: the "
        "method's own, 0 for set/rigl, 1 for the evolutionary methods)",
    )
    g.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="sparse kernel backend; auto: triton on CUDA, native on CPU when built, else reference",
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of the model init, data order and topology updates")
    g.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto, cuda when available, else cpu)"
    )
    g.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py (default: $SPARSEKERNELS_DATA)")
    g.add_argument("--synthetic", action="store_true", help="random CIFAR-shaped data (smoke runs only!)")
    g.add_argument("--synthetic-size", type=int, default=2048, help="training images of --synthetic (test: 1/4)")
    g.add_argument(
        "--no-verify-md5",
        action="store_true",
        help="skip the official MD5 check of the CIFAR-10 files (for a trusted re-encoded copy; files are still "
        "read with the restricted unpickler)",
    )
    g.add_argument("--out", default=None, help="output folder (default: runs/<model>-<method>-<time>)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="epochs between checkpoints (0: none)")
    g.add_argument(
        "--resume",
        default=None,
        help="checkpoint to continue from, or 'auto': the newest checkpoint in --out (a fresh start when there "
        "is none; with --compare, each configuration's sub-folder, finished ones are not trained again) "
        "(default: none, a fresh run)",
    )
    g.add_argument(
        "--compare",
        default=None,
        help="comma-separated configurations run in sequence on the same budget, e.g. dense,rigl,evolutionary "
        f"(sparse ones use --density, {DEFAULT_COMPARE_DENSITY} if it is 1.0; NAME@DENSITY overrides) "
        "(default: none, a single run)",
    )
    p.add_argument(
        "--compare-only",
        default=None,
        help="comma-separated entries of --compare to train in this process; the other entries' records "
        "already in --out join the table, so several processes (cores, machines sharing --out) can each train "
        "part of one comparison (default: all entries)",
    )
    _add_set_arguments(p)
    return p


def _add_set_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the SET MLP (``--model set-mlp``), its data pipeline, SET's ε-densities and
    per-epoch updates, and the sample-efficiency options (issue 15)."""
    g = p.add_argument_group("SET MLP and reproduction")
    g.add_argument(
        "--hidden", default="4000,1000,4000", help="set-mlp: comma-separated hidden layer sizes (SET: 4000,1000,4000)"
    )
    g.add_argument("--activation", default="srelu", choices=("relu", "srelu"), help="set-mlp: hidden activation")
    g.add_argument("--dropout", type=float, default=0.3, help="set-mlp: dropout after every hidden activation")
    g.add_argument(
        "--augment",
        default="standard",
        choices=("standard", "set", "none"),
        help="training data pipeline: standard = per-channel normalisation + pad-4 crop + flip; set = SET's "
        "per-pixel standardisation + rotation ±10°, shifts ±10 %%, flip (on the device); none = normalisation only",
    )
    g.add_argument(
        "--er-epsilon",
        type=float,
        default=None,
        help="with --distribution er: give each sparse layer SET's density eps*(n_in+n_out)/(n_in*n_out) "
        "(replaces --density; eps=20 on set-mlp gives 1.15/2.5/2.5 %%)",
    )
    g.add_argument(
        "--update-unit",
        default="step",
        choices=("step", "epoch"),
        help="unit of --update-every; epoch: the topology changes once per N epochs, after the test evaluation "
        "(at the first step of the next epoch), as in SET",
    )
    g.add_argument(
        "--train-fraction", type=float, default=1.0, help="train on a fixed class-balanced fraction of the training set"
    )
    g.add_argument("--subset-seed", type=int, default=0, help="seed of the --train-fraction subset (not --seed)")
    g.add_argument(
        "--initial-topology",
        choices=("magnitude", "random"),
        default="magnitude",
        help="which blocks each sparse layer starts with: the largest of the dense initialisation (magnitude), "
        "or drawn at random (random, as SET/RigL: the kept initial values stay distributed as the init; "
        "magnitude keeps the largest, at block 1 all near the init bound); see sparsekernels.sparsify",
    )
    g.add_argument(
        "--eval-train",
        type=int,
        default=0,
        help="also evaluate (no augmentation, eval mode) on this many fixed training images per epoch: "
        "train_eval_acc and the generalisation gap train_eval_acc - test_acc (0: off)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="evaluate (test set and --eval-train) every N epochs, and always after the last epoch and at a "
        "--stop-at-epoch pause; epochs in between have no test_acc in the record (for long runs on a "
        "--train-fraction subset, where evaluation would cost more than training)",
    )
    g.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SGD with Nesterov momentum (--no-nesterov: classical momentum 0.9, as SET's Keras SGD)",
    )
    g.add_argument(
        "--stop-at-epoch",
        type=int,
        default=None,
        help="pause once this many epochs are done (a checkpoint is written; needs --checkpoint-every); "
        "continue later with the same command plus --resume",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line; fills the optimizer-dependent defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.weight_decay is None:
        args.weight_decay = DEFAULT_WEIGHT_DECAY[args.optimizer]
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1; got {args.epochs}"),
        (args.max_steps is None or args.max_steps >= 1, f"--max-steps must be >= 1; got {args.max_steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1; got {args.batch_size}"),
        (args.width > 0, f"--width must be positive; got {args.width}"),
        (0.0 < args.density <= 1.0, f"--density must be in (0, 1]; got {args.density}"),
        (args.block_size >= 1, f"--block-size must be >= 1; got {args.block_size}"),
        (args.update_every >= 1, f"--update-every must be >= 1; got {args.update_every}"),
        (0.0 < args.update_fraction < 1.0, f"--update-fraction must be in (0, 1); got {args.update_fraction}"),
        (0.0 <= args.stop_after <= 1.0, f"--stop-after must be in [0, 1]; got {args.stop_after}"),
        (0.0 <= args.adapt_floor <= 1.0, f"--adapt-floor must be in [0, 1]; got {args.adapt_floor}"),
        (
            args.grace_updates is None or args.grace_updates >= 0,
            f"--grace-updates must be >= 0; got {args.grace_updates}",
        ),
        (args.lr > 0, f"--lr must be positive; got {args.lr}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0; got {args.weight_decay}"),
        (args.warmup_epochs >= 0, f"--warmup-epochs must be >= 0; got {args.warmup_epochs}"),
        (0.0 <= args.label_smoothing < 1.0, f"--label-smoothing must be in [0, 1); got {args.label_smoothing}"),
        (args.checkpoint_every >= 0, f"--checkpoint-every must be >= 0; got {args.checkpoint_every}"),
        (args.synthetic_size >= 1, f"--synthetic-size must be >= 1; got {args.synthetic_size}"),
        (
            args.compare is None or args.resume in (None, AUTO_RESUME),
            "--compare resumes only with --resume auto (each configuration from its own sub-folder)",
        ),
        (args.resume != AUTO_RESUME or args.out is not None, "--resume auto needs --out (the folder to resume)"),
        (args.compare_only is None or args.compare is not None, "--compare-only selects entries of --compare: give it"),
        (
            args.compare_only is None or args.out is not None,
            "--compare-only needs --out (the folder where the other entries' records are)",
        ),
        *_set_checks(args),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    if args.er_epsilon is not None:
        _resolve_er_epsilon(args, parser)
    if args.compare_only is not None:
        try:
            compare_only_labels(args)  # bad entries fail here, before any data is loaded
        except SystemExit as err:
            parser.error(str(err).removeprefix("error: "))
    if args.compare is None and args.method != "static" and args.density >= 1.0:
        parser.error(f"--method {args.method} changes a sparse topology: give --density < 1")
    if args.fused_bn_relu:  # given explicitly (None: decided in run())
        if args.model == "set-mlp":
            parser.error("--fused-bn-relu fuses the ResNets' BatchNorm + ReLU; --model set-mlp has no BatchNorm")
        if not args.channels_last:
            warn("--fused-bn-relu needs --channels-last (the fused op reads NHWC rows): ATen's ops run instead")
    return args


def _resolve_er_epsilon(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Set ``args.density`` to the global density whose ER allocation gives SET's ε-densities."""
    import torch as _torch
    from torch import nn as _nn

    from sparsekernels.models import build_model as _build_model
    from sparsekernels.training.er import er_candidates, er_epsilon_density

    with _torch.device("meta"):  # shapes only: no memory, no random numbers drawn
        meta_model = _build_model(args.model, num_classes=10, width=args.width, **model_options(args))
    try:
        args.density = er_epsilon_density(meta_model, args.er_epsilon, args.block_size)
    except ValueError as err:
        parser.error(f"--er-epsilon: {err}")
    skipped = [n for n, m in meta_model.named_modules() if isinstance(m, _nn.Linear)][:-1]
    skipped = [n for n in skipped if n not in dict(er_candidates(meta_model, args.block_size))]
    if skipped:
        warn(
            f"--block-size {args.block_size} does not divide the sizes of layer(s) {', '.join(skipped)}: "
            "they stay dense (for blocks 16/32 use --hidden 4096,1024,4096)"
        )


def _set_checks(args: argparse.Namespace) -> list[tuple[bool, str]]:
    from sparsekernels.models.mlp import parse_hidden

    try:
        parse_hidden(args.hidden)
        hidden_ok = True
    except ValueError:
        hidden_ok = False
    return [
        (hidden_ok, f"--hidden must be comma-separated positive ints, e.g. 4000,1000,4000; got {args.hidden!r}"),
        (0.0 <= args.dropout < 1.0, f"--dropout must be in [0, 1); got {args.dropout}"),
        (args.er_epsilon is None or args.er_epsilon > 0, f"--er-epsilon must be positive; got {args.er_epsilon}"),
        (
            args.er_epsilon is None or args.distribution == "er",
            f"--er-epsilon sets Erdős–Rényi densities: use --distribution er (got {args.distribution})",
        ),
        (
            args.er_epsilon is None or args.compare is None,
            "--er-epsilon sets the density of one run; --compare entries take NAME@DENSITY instead",
        ),
        (0.0 < args.train_fraction <= 1.0, f"--train-fraction must be in (0, 1]; got {args.train_fraction}"),
        (args.eval_train >= 0, f"--eval-train must be >= 0; got {args.eval_train}"),
        (args.eval_every >= 1, f"--eval-every must be >= 1 (epochs); got {args.eval_every}"),
        (
            args.stop_at_epoch is None or args.stop_at_epoch >= 1,
            f"--stop-at-epoch must be >= 1; got {args.stop_at_epoch}",
        ),
        (
            args.stop_at_epoch is None or args.checkpoint_every >= 1,
            "--stop-at-epoch pauses a run: give --checkpoint-every so it can be resumed",
        ),
    ]


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Builder options beyond ``num_classes``/``width`` (the MLP's; none for the ResNets)."""
    if args.model != "set-mlp":
        return {}
    return {"hidden": args.hidden, "activation": args.activation, "dropout": args.dropout}


def _answer_help_early() -> None:
    """``python -m sparsekernels.train --help`` prints the help and exits here, before the
    imports below load torch (seconds on a cold machine) for nothing."""
    if __name__ == "__main__" and any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        build_parser().parse_args(sys.argv[1:])  # exits after printing


_answer_help_early()

# ----------------------------------------------------------------------------- the training run (needs torch)
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sparsekernels.data import CIFAR10, DeviceLoader, load_cifar10, synthetic_cifar10  # noqa: E402
from sparsekernels.models import build_model  # noqa: E402
from sparsekernels.training.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sparsekernels.training.metrics import count_flops, count_parameters  # noqa: E402
from sparsekernels.training.plotting import plot_accuracy, plot_churn  # noqa: E402
from sparsekernels.training.progress import ProgressBar  # noqa: E402
from sparsekernels.training.records import environment, to_jsonable, write_json  # noqa: E402
from sparsekernels.training.schedules import build_scheduler  # noqa: E402

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available in this PyTorch build/machine")
    return device


def warn(message: str) -> None:
    print(f"\n*** {message} ***\n", file=sys.stderr, flush=True)


def load_data(args: argparse.Namespace, device: torch.device) -> CIFAR10:
    """The real dataset, or synthetic data with a loud warning under ``--synthetic``."""
    if args.synthetic:
        warn(
            "--synthetic: training on RANDOM CIFAR-shaped data, not CIFAR-10. Accuracies are meaningless; "
            "use this for smoke tests only"
        )
        n = args.synthetic_size
        return synthetic_cifar10(n, max(1, n // 4), seed=args.seed, device=device)
    try:
        return load_cifar10(args.data_dir, device=device, verify_md5=not getattr(args, "no_verify_md5", False))
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}\n(for a smoke run without the dataset, add --synthetic)") from err
    except ValueError as err:  # a file that is not an official CIFAR-10 file (MD5, structure, pickle)
        raise SystemExit(f"error: {err}") from err


# ----------------------------------------------------------------------------- sparsity integration
def sparsify_model(model: nn.Module, args: argparse.Namespace) -> Any:
    """Make ``model`` block-sparse in place when ``--density < 1``; returns ``sparsify``'s summary
    (a list of per-layer records) or None for a dense run."""
    if args.density >= 1.0:
        return None
    from sparsekernels.nn import sparsify

    return sparsify(
        model,
        density=args.density,
        block_size=args.block_size,
        distribution=args.distribution,
        backend=args.backend,
        topology=getattr(args, "initial_topology", "magnitude"),
    )


def build_engine(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    total_steps: int,
    steps_per_epoch: int = 1,
):
    """The :class:`sparsekernels.dst.DynamicSparsity` engine for ``--method`` (None when static).

    ``--stop-after`` is a fraction of the run; the engine takes a step count. With
    ``--update-unit epoch``, ``--update-every`` counts epochs of ``steps_per_epoch`` steps.
    """
    if args.method == "static" or args.density >= 1.0:
        if args.method == "static" and args.density < 1.0 and _engine_options_given(args):
            warn("--adapt-floor/--grace-updates have no effect with --method static (the topology never changes)")
        return None
    stop = math.floor(args.stop_after * total_steps)
    if stop < args.update_every:
        # The engine refuses a configuration without a single update; the CLI says so and trains static.
        warn(
            f"--method {args.method} will never change the topology in this run: --stop-after {args.stop_after} "
            f"of {total_steps} steps ends updates at step {stop}, before the first update step (--update-every "
            f"{args.update_every}); the topology stays static"
        )
        return None
    from sparsekernels.dst import DynamicSparsity

    engine = DynamicSparsity(
        model,
        optimizer,
        method=args.method,
        update_every=update_every_steps(args, steps_per_epoch),
        fraction=args.update_fraction,
        schedule=args.update_schedule,
        stop_after=args.stop_after * total_steps,
        adapt_floor=args.adapt_floor,
        seed=args.seed,
        # The method's own default unless given (evolutionary: 1, set/rigl: 0).
        **({} if args.grace_updates is None else {"grace_updates": args.grace_updates}),
    )
    if not engine.adaptive and args.adapt_floor != DEFAULT_ADAPT_FLOOR:
        warn(f"--adapt-floor has no effect with --method {args.method}: its swap count is not adaptive")
    return engine


def _engine_options_given(args: argparse.Namespace) -> bool:
    return args.grace_updates is not None or args.adapt_floor != DEFAULT_ADAPT_FLOOR


def update_every_steps(args: argparse.Namespace, steps_per_epoch: int) -> int:
    """``--update-every`` in optimizer steps (× ``steps_per_epoch`` under ``--update-unit epoch``)."""
    if getattr(args, "update_unit", "step") == "epoch":
        return args.update_every * steps_per_epoch
    return args.update_every


# ----------------------------------------------------------------------------- one run
def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD (Nesterov, momentum 0.9) or AdamW; weight decay on conv/linear weights only.

    Parameters with two or more dimensions are weights (dense ``[K, C, R, S]``/``[out, in]``,
    sparse ``[nnz, bm, bn]``); vectors are biases and BatchNorm affine terms, which decay
    would only pull towards zero without regularising anything.
    """
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=getattr(args, "nesterov", True))
    return torch.optim.AdamW(groups, lr=args.lr)


class Trainer:
    """Model, optimizer, schedule, loss scaler and sparsity engine of one run, with
    ``state_dict``/``load_state_dict`` covering all of them (and the RNGs)."""

    def __init__(self, args: argparse.Namespace, data: CIFAR10, device: torch.device) -> None:
        self.args = args
        self.device = device
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        augment = getattr(args, "augment", "standard")
        if augment == "set":
            from sparsekernels.data.augment import set_loaders

            self.train_loader, self.test_loader = set_loaders(data.train, data.test, args.batch_size, seed=args.seed)
        else:
            self.train_loader = DeviceLoader(
                data.train,
                args.batch_size,
                train=True,
                augment=augment == "standard",
                channels_last=args.channels_last,
                seed=args.seed,
            )
            self.test_loader = DeviceLoader(
                data.test, max(args.batch_size, 256), train=False, channels_last=args.channels_last
            )
        self.probe_loader = None
        if getattr(args, "eval_train", 0):
            # The training images without augmentation, in eval mode: the generalisation gap.
            from sparsekernels.training.subset import probe_subset

            self.probe_loader = copy.copy(self.test_loader)
            self.probe_loader.split = probe_subset(data.train, args.eval_train, seed=0)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = args.epochs * self.steps_per_epoch
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        model = build_model(args.model, num_classes=len(data.classes), width=args.width, **model_options(args))
        if args.fused_bn_relu:
            model.set_fused_bn_relu(True)  # a ResNet (parse_args rejects it for the MLP)
        model = model.to(device)
        self.dense_parameters = count_parameters(model)["total"]
        self.sparsity = sparsify_model(model, args)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # The compiled wrapper runs the steps; the plain module is what gets saved.
        self.forward = torch.compile(model) if args.compile else model
        self.optimizer = make_optimizer(model, args)
        warmup = min(round(args.warmup_epochs * self.steps_per_epoch), self.total_steps // 5)
        self.scheduler = build_scheduler(self.optimizer, args.schedule, self.total_steps, warmup)
        self.amp_dtype = AMP_DTYPES[args.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self.engine = build_engine(model, self.optimizer, args, self.total_steps, self.steps_per_epoch)
        self.update_every_steps = update_every_steps(args, self.steps_per_epoch)
        # Per-epoch updates happen after the epoch's evaluation, at the first step of the next
        # epoch (SET evaluates, then rewires): the engine skips the run's very first step, so
        # its step t is the run's step t + 1.
        self.engine_lag = 1 if getattr(args, "update_unit", "step") == "epoch" else 0
        self.step = 0

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_epoch(self, epoch: int, bar: ProgressBar) -> dict[str, float]:
        """Run the steps of ``epoch`` (0-based) left in the budget; returns loss/accuracy/timing."""
        steps = min(self.steps_per_epoch, self.total_steps - self.step)
        self.model.train()
        self.train_loader.set_epoch(epoch)
        # Running sums stay on the device; reading them (a sync) happens only when the bar draws.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        self.sync()
        start = time.perf_counter()
        # CPU time of this process: on a shared machine it measures the work, not the load.
        cpu_start = time.process_time()
        for i, (x, y) in enumerate(self.train_loader):
            if i >= steps:
                break
            with self.autocast():
                logits = self.forward(x)
                loss = self.criterion(logits, y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.engine is not None and self.step >= self.engine_lag:
                # After the weights moved, before their gradients are cleared (gradient-based
                # growth reads them).
                self.engine.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            loss_sum += loss.detach().float() * y.shape[0]
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += y.shape[0]
            if bar.due(i + 1):
                rate = seen / (time.perf_counter() - start)
                acc = 100 * correct.item() / seen
                bar.update(i + 1, **{"img/s": f"{rate:.0f}", "loss": loss_sum.item() / seen, "acc": f"{acc:.1f}%"})
        self.sync()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        bar.close()
        return {
            "steps": steps,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
            "epoch_seconds": seconds,
            "epoch_cpu_seconds": cpu_seconds,
            "images_per_second": seen / seconds if seconds > 0 else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    @torch.no_grad()
    def evaluate(self, loader: DeviceLoader | None = None, prefix: str = "test") -> dict[str, float]:
        """Loss and accuracy on the test set, or on ``loader`` (keys ``{prefix}_loss``,
        ``{prefix}_acc``, ``eval_seconds``/``{prefix}_seconds``); BN in eval mode, no augmentation."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        n = 0
        start = time.perf_counter()
        for x, y in self.test_loader if loader is None else loader:
            with self.autocast():
                logits = self.forward(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            n += y.shape[0]
        self.sync()
        self.model.train()
        seconds_key = "eval_seconds" if prefix == "test" else f"{prefix}_seconds"
        return {
            f"{prefix}_loss": loss_sum.item() / n,
            f"{prefix}_acc": correct.item() / n,
            seconds_key: time.perf_counter() - start,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "engine": self.engine.state_dict() if self.engine is not None else None,
            "step": self.step,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.engine is not None:
            if state.get("engine") is None:
                raise ValueError("the checkpoint holds no sparsity-engine state, but this run has an engine")
            self.engine.load_state_dict(state["engine"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "compare"}


def setup_difference(args: argparse.Namespace, saved: dict[str, Any], keys: Sequence[str]) -> tuple[str, Any] | None:
    """The first of ``keys`` whose value in the saved config differs from ``args``: (key, saved value).

    A saved config without a key (written before the option existed) used its old default."""
    for key in keys:
        used = saved.get(key, OPTION_DEFAULTS_BEFORE.get(key))
        if used != getattr(args, key):
            return key, used
    return None


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_resume(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    if (diff := setup_difference(args, saved, COMPUTE_KEYS)) is not None:
        key, used = diff
        raise SystemExit(
            f"error: {_flag(key)} is {getattr(args, key)!r} but the checkpoint's run computed with {used!r}; "
            f"resume with the same {_flag(key)} (it changes the numbers, and the record describes one run)"
        )
    if (diff := setup_difference(args, saved, RESUME_KEYS)) is not None:
        key, used = diff
        raise SystemExit(
            f"error: {_flag(key)} is {getattr(args, key)!r} but the checkpoint's run used {used!r}; "
            "--resume continues the same run, so pass the same options"
        )


AUTO_RESUME = "auto"
_CHECKPOINT_NAME = re.compile(r"checkpoint-epoch(\d+)\.pt$")


def newest_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-epochNNN.pt`` in ``folder`` that passes its integrity check
    (None without one). A newer one that fails is reported and skipped, never loaded."""
    if not folder.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.search(p.name))), reverse=True
    )
    for _, path in found:
        try:
            load_checkpoint(path, map_location="cpu")
        except CheckpointError as err:
            warn(f"--resume auto: skipping {path}: {err}")
            continue
        return str(path)
    return None


def _bn_relu_fused(args: argparse.Namespace, device: torch.device) -> bool:
    """Whether the ResNet's BatchNorm + ReLU run the fused native op in this run's training steps
    (float32 CPU activations in channels-last memory, eager mode)."""
    from sparsekernels.ops.batchnorm import fused_batch_norm_enabled

    return bool(
        args.fused_bn_relu
        and device.type == "cpu"
        and args.channels_last
        and args.amp == "none"
        and not args.compile
        and fused_batch_norm_enabled()
    )


def run(
    args: argparse.Namespace, data: CIFAR10, device: torch.device, out: Path, label: str | None = None
) -> dict[str, Any]:
    """Train one configuration; write its record, plots and checkpoints under ``out``.

    Returns the run record (the dict written to ``out/record.json``).
    """
    out.mkdir(parents=True, exist_ok=True)
    label = label or (f"{args.method} d={args.density:g}" if args.density < 1 else "dense")
    inherit_fused = args.fused_bn_relu is None  # not given: a new run's default, or the checkpoint's
    if inherit_fused:
        args = copy.copy(args)
        args.fused_bn_relu = args.model != "set-mlp"
    trainer = Trainer(args, data, device)
    record: dict[str, Any] = {
        "label": label,
        "config": _config(args),
        "environment": environment(device),
        "data": {
            "source": data.source,
            "synthetic": args.synthetic,
            "train_images": len(data.train),
            "test_images": len(data.test),
        },
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "dense_parameters": trainer.dense_parameters,
        "sparsity": None,
        "epochs": [],
        "resumed_from": None,
        # One entry per (resumed) segment of the run: where it started and how it computed.
        "segments": [],
    }
    segment = {key: getattr(args, key) for key in COMPUTE_KEYS}
    segment["device"] = record["environment"].get("device_name")
    # Which code trained this segment: a resumed run may continue under a newer checkout.
    segment["git_commit"] = record["environment"].get("git_commit")
    from sparsekernels.ops import pointwise

    fused = trainer.device.type == "cpu" and not args.compile and pointwise.fused_enabled()
    segment["pointwise"] = "fused" if fused else "aten"  # SReLU/dropout implementation (set-mlp)
    if trainer.sparsity is not None:
        record["sparsity"] = {
            "global_density": getattr(trainer.sparsity, "global_density", None),
            "layers": to_jsonable(list(trainer.sparsity)),
        }
        print(trainer.sparsity, flush=True)

    engine = trainer.engine
    if engine is not None and hasattr(engine, "is_update_step"):
        every = trainer.update_every_steps
        steps = range(every, trainer.total_steps + 1 - trainer.engine_lag, every)
        if not any(engine.is_update_step(t) for t in steps):
            warn(
                f"--method {args.method} will never change the topology in this run: no update step within "
                f"{trainer.total_steps} steps swaps a block (layers hold too few blocks for --update-fraction "
                f"{args.update_fraction}, or --update-every/--stop-after leave no update); try a smaller --block-size"
            )

    start_epoch = 0
    if args.resume == AUTO_RESUME:
        args = copy.copy(args)
        args.resume = newest_checkpoint(out)
        if args.resume is None:
            print(f"--resume auto: no checkpoint in {out}, starting fresh", flush=True)
    if args.resume is not None:
        try:
            ckpt = load_checkpoint(args.resume, map_location=device)
            missing = [k for k in ("config", "epoch", "epochs", "trainer") if k not in ckpt]
            if missing:
                raise CheckpointError(f"checkpoint {args.resume}: not a training checkpoint (missing {missing})")
        except CheckpointError as err:
            raise SystemExit(f"error: --resume: {err}") from None
        if inherit_fused:
            saved = ckpt["config"].get("fused_bn_relu", OPTION_DEFAULTS_BEFORE["fused_bn_relu"])
            args.fused_bn_relu = record["config"]["fused_bn_relu"] = segment["fused_bn_relu"] = saved
            if hasattr(trainer.model, "set_fused_bn_relu"):
                trainer.model.set_fused_bn_relu(saved)
        _check_resume(args, ckpt["config"])
        try:
            trainer.load_state_dict(ckpt["trainer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise SystemExit(
                f"error: --resume: checkpoint {args.resume} does not fit this run's model/optimizer/engine: {err!r}"
            ) from None
        start_epoch = int(ckpt["epoch"])
        record["epochs"] = ckpt["epochs"]
        record["segments"] = list(ckpt.get("segments", []))
        record["resumed_from"] = str(args.resume)
        print(f"resumed from {args.resume}: epoch {start_epoch}, step {trainer.step}", flush=True)

    if hasattr(trainer.model, "set_fused_bn_relu"):  # the ResNets: where their BatchNorm + ReLU ran
        segment["bn_relu"] = "fused" if _bn_relu_fused(args, trainer.device) else "aten"
    record["segments"].append({"start_epoch": start_epoch, "start_step": trainer.step, **segment})
    budget = f"{trainer.num_epochs} epochs × {trainer.steps_per_epoch} steps"
    if trainer.total_steps < trainer.num_epochs * trainer.steps_per_epoch:
        budget += f" (capped at {trainer.total_steps} steps)"
    print(
        f"[{label}] {args.model} width {args.width:g} | {budget} | batch {args.batch_size} | "
        f"{record['environment']['device_name']} | out {out}",
        flush=True,
    )

    def save(epoch: int, finished: bool) -> None:
        save_checkpoint(
            out / f"checkpoint-epoch{epoch:03d}.pt",
            {
                "config": _config(args),
                "epoch": epoch,
                "finished": finished,
                "epochs": record["epochs"],
                "segments": record["segments"],
                "trainer": trainer.state_dict(),
            },
        )

    wall_clock = record["epochs"][-1]["wall_clock"] if record["epochs"] else 0.0
    # --stop-at-epoch pauses the run there (checkpoint written); --resume continues it.
    stop_at = getattr(args, "stop_at_epoch", None)
    end_epoch = trainer.num_epochs if stop_at is None else min(trainer.num_epochs, stop_at)
    for epoch in range(start_epoch, end_epoch):
        bar = ProgressBar(trainer.steps_per_epoch, prefix=f"epoch {epoch + 1}/{trainer.num_epochs}")
        stats = trainer.train_epoch(epoch, bar)
        finished = trainer.step >= trainer.total_steps
        paused = epoch + 1 == end_epoch and not finished
        evaluate = (epoch + 1) % args.eval_every == 0 or finished or epoch + 1 == end_epoch
        if evaluate:
            stats.update(trainer.evaluate())
            if trainer.probe_loader is not None:
                stats.update(trainer.evaluate(trainer.probe_loader, prefix="train_eval"))
                stats["generalization_gap"] = stats["train_eval_acc"] - stats["test_acc"]
        wall_clock += stats["epoch_seconds"]
        stats = {"epoch": epoch + 1, **stats, "wall_clock": wall_clock}
        record["epochs"].append(stats)
        test = f"test acc {100 * stats['test_acc']:5.2f}%" if evaluate else "(not evaluated)"
        print(
            f"epoch {epoch + 1:3d}/{trainer.num_epochs}  train loss {stats['train_loss']:.4f}  "
            f"train acc {100 * stats['train_acc']:5.2f}%  {test}  "
            f"{stats['epoch_seconds']:7.1f} s  {stats['images_per_second']:7.0f} img/s",
            flush=True,
        )
        if args.checkpoint_every and ((epoch + 1) % args.checkpoint_every == 0 or finished or paused):
            save(epoch + 1, finished)
        if paused:
            print(f"paused after epoch {epoch + 1} (--stop-at-epoch); continue with --resume", flush=True)
        # Rewritten every epoch so a crash keeps the curve so far.
        write_json(out / "record.json", _finish(record, trainer, final=False))
    if start_epoch >= trainer.num_epochs:
        print(f"nothing to do: the checkpoint already completed the run's {trainer.total_steps} steps", flush=True)

    record = _finish(record, trainer, final=True)
    write_json(out / "record.json", record)
    plot_accuracy([record], [label], out / "accuracy.png")
    plot_churn([record["structure_history"]], [label], out / "churn.png")
    return record


def _finish(record: dict[str, Any], trainer: Trainer, final: bool) -> dict[str, Any]:
    """The record with the end-of-run fields (history, summary numbers and, when ``final``,
    parameters and FLOPs of the trained model, which cost a forward pass)."""
    epochs = record["epochs"]
    evaluated = [e for e in epochs if "test_acc" in e]  # --eval-every > 1 skips some
    # Throughput of steady epochs: the first one pays for warm-up (compilation, autotuning).
    steady = epochs[1:] if len(epochs) > 1 else epochs
    history = getattr(trainer.engine, "history", None) if trainer.engine is not None else None
    summary = {
        **record,
        "steps_done": trainer.step,
        "structure_history": to_jsonable(history) if history is not None else None,
        "final_test_acc": evaluated[-1]["test_acc"] if evaluated else None,
        "best_test_acc": max((e["test_acc"] for e in evaluated), default=None),
        "train_seconds": sum(e["epoch_seconds"] for e in epochs),
        "steady_images_per_second": (
            sum(e["steps"] for e in steady) * trainer.args.batch_size / sum(e["epoch_seconds"] for e in steady)
            if steady
            else None
        ),
    }
    if final:
        # FLOPs do not depend on pixel values: one blank image is enough for the shape trace.
        example = torch.zeros(1, 3, 32, 32, device=trainer.device)
        summary["parameters"] = count_parameters(trainer.model)
        summary["flops_per_image"] = count_flops(trainer.model, example)
    return summary


# ----------------------------------------------------------------------------- comparison
def parse_compare(spec: str, args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    """``"dense,rigl,evolutionary@0.05"`` -> (label, args) per configuration."""
    runs = []
    sparse_density = args.density if args.density < 1.0 else DEFAULT_COMPARE_DENSITY
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, density_text = item.partition("@")
        sub = copy.copy(args)
        sub.compare = sub.compare_only = None
        if name == "dense":
            if density_text:
                raise SystemExit(f"error: --compare entry {item!r}: dense takes no density")
            sub.density, sub.method = 1.0, "static"
        elif name in METHODS:
            sub.method = name
            try:
                sub.density = float(density_text) if density_text else sparse_density
            except ValueError:
                raise SystemExit(f"error: --compare entry {item!r}: density must be a number") from None
            if not 0.0 < sub.density < 1.0:
                raise SystemExit(f"error: --compare entry {item!r}: density must be in (0, 1)")
        else:
            raise SystemExit(f"error: --compare entry {item!r}: use dense or one of {', '.join(METHODS)}")
        runs.append((item, sub))
    if not runs:
        raise SystemExit("error: --compare needs at least one configuration")
    return runs


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def compare_table(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: accuracy, time per epoch, speedup over dense, parameters, FLOPs.

    Time per epoch is the training-set size over the steady-state throughput (epochs after
    the first), so capped smoke runs and full runs read alike.
    """
    dense = next((r for r in records if r["config"]["density"] >= 1.0), None)
    header = ["run", "density", "test acc %", "best %", "s/epoch", "speedup", "params", "fwd FLOPs/img"]
    rows = []
    for r in records:
        ips = r["steady_images_per_second"]
        speedup = ips / dense["steady_images_per_second"] if dense is not None and ips else None
        rows.append(
            [
                r["label"],
                f"{r['config']['density']:g}",
                f"{100 * r['final_test_acc']:.2f}" if r["final_test_acc"] is not None else "-",
                f"{100 * r['best_test_acc']:.2f}" if r["best_test_acc"] is not None else "-",
                f"{r['data']['train_images'] / ips:.1f}" if ips else "-",
                f"{speedup:.2f}×" if speedup is not None else "-",
                # A record still being written by another process (--compare-only) has no counts yet.
                _si(r["parameters"]["total"]) if "parameters" in r else "-",
                _si(r["flops_per_image"]["effective"]) if "flops_per_image" in r else "-",
            ]
        )
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-style table (tabulate when installed, else a plain aligned one)."""
    try:
        from tabulate import tabulate

        return tabulate(rows, headers=header, tablefmt="github")
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in (header, *rows)]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)


def compare_only_labels(args: argparse.Namespace) -> set[str] | None:
    """The ``--compare-only`` entries (None: all of ``--compare``); each must be an entry of it."""
    if args.compare_only is None:
        return None
    labels = [label for label, _ in parse_compare(args.compare, args)]
    wanted = [s.strip() for s in args.compare_only.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in labels]
    if unknown or not wanted:
        raise SystemExit(f"error: --compare-only {args.compare_only!r}: expected entries of --compare {labels}")
    return set(wanted)


def _other_record(folder: Path, label: str, sub: argparse.Namespace) -> dict[str, Any] | None:
    """The record another process wrote for entry ``label`` (options ``sub``) of a shared
    comparison; None when there is none yet, or it is not this entry's (wrong label, or a run
    of other options, e.g. a comparison with other --epochs under the same --out)."""
    try:
        record = json.loads((folder / "record.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        print(f"warning: --compare-only: {folder / 'record.json'} unreadable ({err}); left out of the table",
              file=sys.stderr, flush=True)  # fmt: skip
        return None
    if not isinstance(record, dict) or record.get("label") != label:
        print(f"warning: --compare-only: {folder / 'record.json'} is not a record of {label!r}; left out of the table",
              file=sys.stderr, flush=True)  # fmt: skip
        return None
    saved = record.get("config")
    if not isinstance(saved, dict):
        print(f"warning: --compare-only: {folder / 'record.json'} holds no config; left out of the table",
              file=sys.stderr, flush=True)  # fmt: skip
        return None
    if (diff := setup_difference(sub, saved, RESUME_KEYS)) is not None:
        key, used = diff
        print(f"warning: --compare-only: {folder / 'record.json'} is a run with {_flag(key)} {used!r}, not this "
              f"comparison's {getattr(sub, key)!r}; left out of the table", file=sys.stderr, flush=True)  # fmt: skip
        return None
    return record


def run_compare(args: argparse.Namespace, data: CIFAR10, device: torch.device, out: Path) -> list[dict[str, Any]]:
    """Each configuration of ``--compare`` in its sub-folder of ``out``, then the combined table,
    ``compare.json`` and plots. With ``--compare-only``, only those entries train here; the others
    join the table with the record their own process wrote last (a running one: its epochs so far)."""
    only = compare_only_labels(args)
    entries = [(label, sub, out / label.replace("@", "-d")) for label, sub in parse_compare(args.compare, args)]
    trained = {
        label: run(sub, data, device, folder, label=label)
        for label, sub, folder in entries
        if only is None or label in only
    }
    # The other processes' records are read only now, after this one's training: read before,
    # an entry that another process finished meanwhile would join with its epochs of then.
    records = []
    for label, sub, folder in entries:
        record = trained[label] if label in trained else _other_record(folder, label, sub)
        if record is not None:
            records.append(record)
    header, rows = compare_table(records)
    table = format_table(header, rows)
    print(table, flush=True)
    (out / "compare.txt").write_text(table + "\n")
    write_json(out / "compare.json", {"table": {"header": header, "rows": rows}, "runs": records})
    labels = [r["label"] for r in records]
    plot_accuracy(records, labels, out / "compare.png")
    plot_churn([r["structure_history"] for r in records], labels, out / "compare-churn.png")
    return records


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.out is None:
        tag = "compare" if args.compare else (f"{args.method}-d{args.density:g}" if args.density < 1 else "dense")
        args.out = str(Path("runs") / f"{args.model}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(args.out)
    data = load_data(args, device)
    if args.train_fraction < 1.0:
        from sparsekernels.training.subset import with_train_fraction

        data = with_train_fraction(data, args.train_fraction, args.subset_seed)
    if args.compare:
        run_compare(args, data, device, out)
    else:
        run(args, data, device, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

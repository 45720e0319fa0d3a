"""One CIFAR ResNet-18 training step on the CPU: dense against block-sparse (+ RigL), and the peers.

A training step is forward + backward + SGD step (Nesterov momentum 0.9, weight decay 5e-4 on
conv/linear weights, as the training CLI) on a fixed random batch (32x32, 10 classes). Cases, at
every batch size and thread count:

* ``dense-nchw``, ``dense-cl``: the dense ResNet-18 in NCHW and channels-last memory.
  ``dense-cl`` is the baseline of every ratio.
* ``sparse-<distribution>-b<block>``: ``sparsify(model, density, block_size, distribution)``
  (uniform and ERK, blocks 16 and 32; stem conv and classifier dense), channels-last, with
  ``DynamicSparsity(method="rigl", fraction=0.3)``. Its plain steps are timed on an engine whose
  update period is ``--update-every``; its *update* steps (dense-gradient forward/backward +
  rewiring) on a second copy whose engine updates at every step. Shown: the plain step, the
  update step, and the step amortised over the period, ``((U - 1) * plain + update) / U``.
* peers, when installed (each skipped with one printed line otherwise):
  ``rigl-torch`` 0.5.2 (``RigLScheduler``: masked dense weights, random unstructured masks at
  ``1 - density`` sparsity, stem and linear dense, ``delta=--update-every``; its update steps timed
  on a second copy with ``delta=2``), NCHW (its update step fails on channels-last weights);
  ``sparseprop`` 0.1.14 (its ``swap_modules_with_sparse`` on the ResNet-18 after magnitude
  pruning every conv but the stem to
  ``1 - density`` unstructured sparsity; static mask, NCHW as its kernels expect; the library keeps
  a layer dense when its own timing finds dense faster; ``--sparseprop-convert all`` makes every
  conv but the stem sparse).

With inference on (default), the same models in ``eval()`` under ``torch.inference_mode()`` at
``--inference-batches`` (dense and our sparse models).

Every case of one (batch, threads) configuration is built in the same process and timed in
rounds, in a rotating order, so that the ratios come from the same minutes; the median of all
samples is reported. The 1-minute load average (``/proc/loadavg``) is read before every round and
its maximum printed beside each figure: on a shared machine, figures taken at a load above the
thread count are not meaningful. Besides the ratio to ``dense-cl``, each row has the ratio to the
dense model of its own memory layout (the peers run NCHW).
Results: ``benchmarks/results/<device>/train_step.{json,md,png}``.

    python benchmarks/bench_train_step.py                         # batch 64, 128; threads 1, 2
    python benchmarks/bench_train_step.py --batch 64 --threads 2 --rounds 3 --no-peers
    python benchmarks/bench_train_step.py --smoke --out /tmp/x    # tiny net, one round (a test)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import importlib.util
import io
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import environment, results_dir, write_json
from torch import nn

import sparsekernels
from sparsekernels import native_available, sparsify
from sparsekernels.dst import DynamicSparsity
from sparsekernels.models import resnet18

CPU = torch.device("cpu")
CORES = os.cpu_count() or 1
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4  # the training CLI's SGD defaults
RIGL_FRACTION = 0.3  # the CLI's --update-fraction (its cosine schedule starts there)
BASELINE = "dense-cl"
PEERS = {"rigl-torch": ("rigl_torch", "0.5.2"), "sparseprop": ("sparseprop", "0.1.14")}
INSTALL_HINT = {
    "rigl-torch": "pip install --no-deps rigl-torch==0.5.2",
    "sparseprop": "pip install pybind11 scipy && pip install --no-build-isolation sparseprop==0.1.14",
}


# ----------------------------------------------------------------------------- measurement
def load_average() -> float:
    """The 1-minute load average (first field of /proc/loadavg)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]


@dataclass
class Instance:
    """One model + optimizer whose ``step()`` runs one step and says whether it was an update step.

    ``next_is_update`` (instances that time update steps): whether the next ``step()`` updates;
    such an instance gets ``--update-steps`` samples per round, each preceded by untimed steps
    until the next one is an update step."""

    step: Callable[[], bool]
    next_is_update: Callable[[], bool] | None = None


@dataclass
class Case:
    """A row of the table: one or two instances, their samples (seconds) split by step kind."""

    name: str
    kind: str  # "dense" | "sparse" | "peer"
    instances: list[Instance]
    info: dict = field(default_factory=dict)
    plain: list[float] = field(default_factory=list)
    update: list[float] = field(default_factory=list)
    inner: int = 1  # calls per sample (inference at batch 1 is short)


def run_rounds(
    cases: list[Case], rounds: int, steps: int, warmup: int, min_sample_s: float, update_steps: int = 1
) -> list[float]:
    """Warm every instance up, then time ``steps`` samples of each instance per round
    (``update_steps`` for the instances timing update steps), the cases in an order rotated by one
    each round. Returns the load averages read before each round and after the last."""
    for case in cases:
        for inst in case.instances:
            t = math.inf
            for _ in range(max(1, warmup)):
                t0 = time.perf_counter()
                inst.step()
                t = min(t, time.perf_counter() - t0)
        if case.inner == 0:  # inference: repeat short calls so that one sample lasts min_sample_s
            case.inner = max(1, min(1000, math.ceil(min_sample_s / max(t, 1e-6))))
    print(f"    warm-up done ({len(cases)} cases)", flush=True)
    loads = []
    for r in range(rounds):
        loads.append(load_average())
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        for case in order:
            for inst in case.instances:
                for _ in range(steps if inst.next_is_update is None else update_steps):
                    while inst.next_is_update is not None and not inst.next_is_update():
                        inst.step()  # untimed: bring the instance to its next update step
                    t0 = time.perf_counter()
                    was_update = False
                    for _ in range(case.inner):
                        was_update |= bool(inst.step())
                    dt = (time.perf_counter() - t0) / case.inner
                    (case.update if was_update else case.plain).append(dt)
        print(f"    round {r + 1}/{rounds} done (load {loads[-1]:.2f})", flush=True)
    loads.append(load_average())
    return loads


# ----------------------------------------------------------------------------- models and steps
def make_optimizer(model: nn.Module) -> torch.optim.SGD:
    """The CLI's SGD: weight decay on weights (>= 2-D; sparseprop's flat ``W_val`` too), none on
    biases and BatchNorm terms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 or name.endswith("W_val") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, nesterov=True)


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    engine: DynamicSparsity | None = None,
) -> Callable[[], bool]:
    """fwd + bwd + SGD, and ``engine.step()`` between ``opt.step()`` and ``zero_grad`` (the CLI's order)."""
    model.train()

    def step() -> bool:
        updates = engine is not None and engine.is_update_step(engine.step_count + 1)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if engine is not None:
            engine.step()
        opt.zero_grad(set_to_none=True)
        return updates

    return step


def inference_step(model: nn.Module, x: torch.Tensor) -> Callable[[], bool]:
    model.eval()

    def step() -> bool:
        with torch.inference_mode():
            model(x)
        return False

    return step


def sparse_model(base: nn.Module, density: float, block: int, distribution: str) -> tuple[nn.Module, dict]:
    """A sparsified, channels-last copy of ``base`` (public API only: ``sparsify``)."""
    model = copy.deepcopy(base)
    summary = sparsify(model, density=density, block_size=block, distribution=distribution)
    info = {
        "global_density": round(float(summary.global_density), 4),
        "sparse_layers": len(summary.sparse_layers),
        "memory": "channels-last",
    }
    return model.to(memory_format=torch.channels_last), info


def sparse_train_case(base, density, block, distribution, x, y, update_every: int) -> Case:
    """Plain steps on an engine of period ``update_every``; update steps on a copy whose engine
    updates at every step (each of its steps: dense-gradient fwd/bwd + SGD + rewiring)."""
    instances, info = [], {}
    for period in (update_every, 1):
        model, info = sparse_model(base, density, block, distribution)
        opt = make_optimizer(model)
        engine = DynamicSparsity(
            model, opt, method="rigl", update_every=period, fraction=RIGL_FRACTION, schedule="constant", seed=0
        )
        upcoming = (lambda engine=engine: engine.is_update_step(engine.step_count + 1)) if period == 1 else None
        instances.append(Instance(train_step(model, opt, x, y, engine), upcoming))
    return Case(f"sparse-{distribution}-b{block}", "sparse", instances, info)


# ----------------------------------------------------------------------------- peers
def _stub_torchvision() -> None:
    """rigl-torch imports torchvision only for ``isinstance(p, torchvision.models.resnet.BasicBlock /
    Bottleneck)``, and PyPI's torchvision does not import beside a CPU-only torch: put empty
    stand-ins in ``sys.modules`` (no instance of them exists, so those checks are False, as they
    would be for our ResNet with the real torchvision)."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # a failed import can leave half-initialised modules behind
    tv, models, resnet = (
        types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.resnet")
    )
    resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
    resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
    models.resnet, tv.models = resnet, models
    tv.__stub__ = True
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


def find_peer(name: str) -> tuple[bool, str]:
    """(usable, version or the reason it is skipped)."""
    module, wanted = PEERS[name]
    if importlib.util.find_spec(module) is None:
        return False, f"not installed ({INSTALL_HINT[name]})"
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        if name == "rigl-torch":
            try:
                import torchvision  # noqa: F401
            except Exception:  # ImportError, or the operator registration errors of a mismatched build
                _stub_torchvision()
            import rigl_torch.RigL  # noqa: F401
        else:
            import sparseprop.utils  # noqa: F401
    except Exception as e:  # a broken install is skipped like a missing one
        return False, f"installed ({version}) but does not import: {type(e).__name__}: {e}"
    note = "" if version == wanted else f" (benchmarked against {wanted})"
    return True, version + note


def _first_conv_and_classifier(model: nn.Module) -> tuple[str, str]:
    names = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    first = next(n for n, m in names if isinstance(m, nn.Conv2d))
    last = next(n for n, m in reversed(names) if isinstance(m, nn.Linear))
    return first, last


def rigl_torch_case(base: nn.Module, density: float, x, y, update_every: int) -> Case:
    """rigl-torch's RigLScheduler on the dense NCHW model (its update step ``.view``s the weights,
    which fails for channels-last ones): its loop is
    ``loss.backward(); if scheduler(): optimizer.step()`` (an update step skips the SGD step).
    Plain steps at ``delta=update_every``; update steps from a copy at ``delta=2`` (every other step)."""
    from rigl_torch.RigL import RigLScheduler

    instances = []
    for delta in (update_every, 2):
        model = copy.deepcopy(base)
        opt = make_optimizer(model)
        sched = RigLScheduler(
            model, opt, dense_allocation=density, T_end=10**9, delta=delta, alpha=RIGL_FRACTION, static_topo=False
        )

        def upcoming(sched=sched) -> bool:
            return (sched.step + 1) % sched.delta_T == 0 and sched.step + 1 < sched.T_end

        def step(model=model, opt=opt, sched=sched, upcoming=upcoming) -> bool:
            updates = upcoming()
            F.cross_entropy(model(x), y).backward()
            if sched():
                opt.step()
            opt.zero_grad(set_to_none=True)
            return updates

        model.train()
        instances.append(Instance(step, upcoming if delta == 2 else None))
    return Case("rigl-torch", "peer", instances, {"masks": "unstructured, random init", "memory": "nchw"})


def sparseprop_case(base: nn.Module, density: float, x_nchw, y, convert: str = "auto") -> Case:
    """sparseprop: magnitude-prune every conv but the stem to ``density`` (per layer, unstructured),
    then convert (stem and classifier stay dense, as with our ``sparsify``); static mask.

    ``convert="auto"``: the library's ``swap_modules_with_sparse``, which times dense and its two
    sparse variants of each layer once and keeps the fastest (so some layers may stay dense);
    ``"all"``: every pruned conv becomes a sparseprop ``SparseConv2d`` (``sparsify_conv2d_auto``
    picks between its two sparse variants)."""
    from sparseprop.modules import SparseConv2d as SpConv
    from sparseprop.modules import SparseLinear as SpLinear
    from sparseprop.modules import sparsify_conv2d_auto
    from sparseprop.utils import generate_intermediate_shapes, swap_module, swap_modules_with_sparse

    model = copy.deepcopy(base)
    first, last = _first_conv_and_classifier(model)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and name != first:
                w = m.weight
                keep = max(1, int(round(density * w.numel())))
                threshold = w.abs().flatten().kthvalue(w.numel() - keep + 1).values
                w.mul_(w.abs() >= threshold)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints one line per layer
        if convert == "auto":
            model = swap_modules_with_sparse(model, tuple(x_nchw.shape), inplace=True, skip_modules=f"{first},{last}")
        else:
            inshapes, _ = generate_intermediate_shapes(model, tuple(x_nchw.shape[1:]))
            convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != first]
            for name, conv in convs:
                swap_module(model, name, sparsify_conv2d_auto(conv, (x_nchw.shape[0], *inshapes[name])))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, SpConv))]
    converted = sum(isinstance(m, (SpConv, SpLinear)) for m in model.modules())
    opt = make_optimizer(model)
    info = {
        "converted_layers": converted,
        "conv_layers": len(convs),
        "convert": convert,
        "masks": "unstructured, static",
        "memory": "nchw",
    }
    return Case("sparseprop", "peer", [Instance(train_step(model, opt, x_nchw, y))], info)


# ----------------------------------------------------------------------------- one configuration
def build_train_cases(args, base: nn.Module, batch: int, peers: list[str]) -> list[Case]:
    gen = torch.Generator().manual_seed(batch)
    x_nchw = torch.randn(batch, 3, args.image_size, args.image_size, generator=gen)
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=gen)
    cases = []
    for name, fmt, x in (("dense-nchw", torch.contiguous_format, x_nchw), (BASELINE, torch.channels_last, x_cl)):
        model = copy.deepcopy(base).to(memory_format=fmt)
        memory = {"memory": "nchw" if fmt == torch.contiguous_format else "channels-last"}
        cases.append(Case(name, "dense", [Instance(train_step(model, make_optimizer(model), x, y))], memory))
    for distribution in args.distributions:
        for block in args.blocks:
            t0 = time.perf_counter()
            cases.append(sparse_train_case(base, args.density, block, distribution, x_cl, y, args.update_every))
            print(f"    {cases[-1].name} built in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    if "rigl-torch" in peers:
        cases.append(rigl_torch_case(base, args.density, x_nchw, y, args.update_every))
        print(f"    rigl-torch built in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    if "sparseprop" in peers:
        cases.append(sparseprop_case(base, args.density, x_nchw, y, args.sparseprop_convert))
        # its conversion times dense and two sparse variants of every layer to pick the fastest
        print(f"    sparseprop converted in {time.perf_counter() - t0:.1f} s", flush=True)
    return cases


def build_inference_cases(args, base: nn.Module, batch: int) -> list[Case]:
    x_nchw = torch.randn(batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(batch))
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    cases = []
    for name, fmt, x in (("dense-nchw", torch.contiguous_format, x_nchw), (BASELINE, torch.channels_last, x_cl)):
        memory = {"memory": "nchw" if fmt == torch.contiguous_format else "channels-last"}
        model = copy.deepcopy(base).to(memory_format=fmt)
        cases.append(Case(name, "dense", [Instance(inference_step(model, x))], memory))
    for distribution in args.distributions:
        for block in args.blocks:
            model, info = sparse_model(base, args.density, block, distribution)
            cases.append(
                Case(f"sparse-{distribution}-b{block}", "sparse", [Instance(inference_step(model, x_cl))], info)
            )
    for case in cases:
        case.inner = 0  # chosen at warm-up
    return cases


def warn_if_loaded(rows: list[dict]) -> None:
    if rows and rows[0]["oversubscribed"]:
        print(
            f"WARNING: load average reached {rows[0]['load_1min_max']:.2f} on {CORES} cores: other processes "
            "competed for the CPU, these figures are unreliable (OpenMP threads degrade badly when oversubscribed)"
        )


def _ms(seconds: list[float]) -> float | None:
    return statistics.median(seconds) * 1e3 if seconds else None


def summarise(
    cases: list[Case], mode: str, batch: int, threads: int, loads: list[float], update_every: int
) -> list[dict]:
    """One row per case; ratios against the dense channels-last case of the same run."""
    rows = []
    for case in cases:
        plain, update = _ms(case.plain), _ms(case.update)
        if plain is None and update is not None:  # only update steps ran (not expected)
            plain = update
        has_dst = mode == "train" and case.kind != "dense" and update is not None
        amortised = ((update_every - 1) * plain + update) / update_every if has_dst else plain
        rows.append(
            {
                "mode": mode,
                "batch": batch,
                "threads": threads,
                "case": case.name,
                "kind": case.kind,
                "step_ms": plain,
                "update_step_ms": update if has_dst else None,
                "amortized_ms": amortised,
                "update_over_step": update / plain if has_dst else None,
                "dst_overhead_pct": 100 * (amortised / plain - 1) if has_dst else None,
                "samples": len(case.plain),
                "update_samples": len(case.update) if has_dst else 0,
                "calls_per_sample": case.inner,
                "load_1min_max": max(loads),
                "load_1min_median": statistics.median(loads),
                "oversubscribed": max(loads) > CORES + 0.5,
                **case.info,
            }
        )
    base = next(r for r in rows if r["case"] == BASELINE)
    for r in rows:
        r["speedup"] = base["amortized_ms"] / r["amortized_ms"]
        r["speedup_step"] = base["step_ms"] / r["step_ms"]
        same = next((d for d in rows if d["kind"] == "dense" and d.get("memory") == r.get("memory")), base)
        r["speedup_same_layout"] = same["amortized_ms"] / r["amortized_ms"]
        if mode == "train":
            r["images_per_s"] = 1e3 * batch / r["amortized_ms"]
    return rows


COLUMNS = {
    "case": "case",
    "batch": "batch",
    "threads": "thr",
    "step_ms": "step ms",
    "update_step_ms": "update step ms",
    "amortized_ms": "amortised ms",
    "speedup": "× dense-cl",
    "speedup_step": "× (plain step)",
    "speedup_same_layout": "× dense same layout",
    "load_1min_max": "load",
}
INFER_COLUMNS = {
    "case": "case",
    "batch": "batch",
    "threads": "thr",
    "step_ms": "ms",
    "speedup": "× dense-cl",
    "load_1min_max": "load",
}


def table(rows: list[dict], columns: dict[str, str]) -> str:
    from tabulate import tabulate

    def cell(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else v

    body = [[cell(r[c]) for c in columns] for r in rows]
    return tabulate(body, headers=list(columns.values()), tablefmt="github", disable_numparse=True)


def plot(path: Path, rows: list[dict], title: str) -> None:
    """One panel per (mode, batch): bars of the speedup over dense channels-last per case, one
    bar per thread count; dashed line at 1 (dense channels-last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["mode"], r["batch"]) for r in rows}, key=lambda p: (p[0] != "train", p[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (mode, batch) in zip(axes[0], panels):
        sub = [r for r in rows if r["mode"] == mode and r["batch"] == batch]
        cases = list(dict.fromkeys(r["case"] for r in sub))
        threads = sorted({r["threads"] for r in sub})
        width = 0.8 / len(threads)
        for i, t in enumerate(threads):
            by_case = {r["case"]: r["speedup"] for r in sub if r["threads"] == t}
            xs = [j + (i - (len(threads) - 1) / 2) * width for j in range(len(cases))]
            ax.bar(xs, [by_case.get(c, 0.0) for c in cases], width, label=f"{t} thread{'s' * (t > 1)}")
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(cases)), cases, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("speedup over dense channels-last" + (" (amortised step)" if mode == "train" else ""))
        ax.set_title(f"{mode}, batch {batch}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 128], help="training batch sizes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch.set_num_threads values")
    p.add_argument("--density", type=float, default=0.1, help="sparsify density (peers: 1 - sparsity)")
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32])
    p.add_argument("--distributions", nargs="+", default=["uniform", "erk"], choices=("uniform", "er", "erk"))
    p.add_argument("--update-every", type=int, default=100, help="DST update period the update cost is amortised over")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds per configuration (cases interleaved)")
    p.add_argument("--steps", type=int, default=2, help="timed samples of plain steps per instance per round")
    p.add_argument("--update-steps", type=int, default=1, help="timed update steps per round (their cost is amortised)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per instance before the rounds")
    p.add_argument("--inference-batches", type=int, nargs="*", default=[1, 64], help="eval() batch sizes; none: off")
    p.add_argument("--min-sample-s", type=float, default=0.2, help="inference: repeat calls to fill one sample")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS), help="peers to run if installed")
    p.add_argument("--no-peers", action="store_true", help="same as --peers with no names")
    p.add_argument(
        "--sparseprop-convert",
        default="auto",
        choices=("auto", "all"),
        help="auto: sparseprop's swap_modules_with_sparse (keeps a layer dense where its timing finds dense "
        "faster); all: every conv but the stem sparse",
    )
    p.add_argument("--width", type=float, default=1.0, help="ResNet-18 channel multiplier (1: 64-512)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny net and batch, one round (a functional test, no figures)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device>/)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.threads, args.width, args.image_size = [2], [1], 0.5, 8
        args.rounds, args.steps, args.update_steps, args.warmup, args.min_sample_s = 1, 1, 1, 1, 0.0
        args.inference_batches = [1, 2]
    if args.no_peers:
        args.peers = []
    checks = [
        (0.0 < args.density < 1.0, f"--density must be in (0, 1); got {args.density}"),
        (args.update_every >= 2, f"--update-every must be >= 2; got {args.update_every}"),
        (min(args.threads) >= 1, f"--threads must be >= 1; got {args.threads}"),
        (min(args.batch) >= 1, f"--batch must be >= 1; got {args.batch}"),
        (
            min(args.rounds, args.steps, args.update_steps) >= 1,
            f"--rounds, --steps, --update-steps must be >= 1; got {args.rounds}, {args.steps}, {args.update_steps}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    native = {"available": native_available()}
    info_fn = getattr(sparsekernels, "native_info", None)
    if info_fn is not None:
        try:
            native["info"] = {
                k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in dict(info_fn()).items()
            }
        except Exception as e:  # reporting only
            native["info"] = f"{type(e).__name__}: {e}"
    if not native["available"]:
        print(
            "native extension not built: the sparse layers run on the reference backend (slow); "
            "build it with `python setup.py build_ext --inplace`"
        )
    peers, peer_record = [], {}
    for name in PEERS:
        if name not in args.peers:
            peer_record[name] = {"ran": False, "reason": "not requested"}
            continue
        ok, detail = find_peer(name)
        peer_record[name] = {"ran": ok, ("version" if ok else "reason"): detail}
        if ok:
            peers.append(name)
        else:
            print(f"peer {name}: {detail}; skipped")
    torch.manual_seed(args.seed)
    base = resnet18(num_classes=10, width=args.width)
    rows: list[dict] = []
    started = time.perf_counter()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch:
                print(f"train, batch {batch}, {threads} thread(s): building", flush=True)
                cases = build_train_cases(args, base, batch, peers)
                loads = run_rounds(cases, args.rounds, args.steps, args.warmup, 0.0, args.update_steps)
                part = summarise(cases, "train", batch, threads, loads, args.update_every)
                print(table(part, COLUMNS), flush=True)
                warn_if_loaded(part)
                rows += part
                del cases
            for batch in args.inference_batches:
                print(f"inference, batch {batch}, {threads} thread(s): building", flush=True)
                cases = build_inference_cases(args, base, batch)
                loads = run_rounds(cases, args.rounds, args.steps, args.warmup, args.min_sample_s)
                part = summarise(cases, "inference", batch, threads, loads, args.update_every)
                print(table(part, INFER_COLUMNS), flush=True)
                warn_if_loaded(part)
                rows += part
                del cases
    finally:
        torch.set_num_threads(threads_before)
    elapsed = time.perf_counter() - started

    env = environment(CPU)
    env.pop("cpu_threads", None)  # per row instead
    config = {k: v for k, v in vars(args).items() if k not in ("out", "no_peers")}
    config.update(
        model="resnet18",
        optimizer=f"SGD nesterov momentum {MOMENTUM} lr {LR} wd {WEIGHT_DECAY}",
        dst="rigl",
        dst_fraction=RIGL_FRACTION,
        baseline=BASELINE,
        elapsed_s=round(elapsed, 1),
    )
    record = {
        "benchmark": "train_step",
        "environment": env,
        "config": config,
        "native": native,
        "peers": peer_record,
        "rows": rows,
    }
    out = results_dir(CPU, args.out)
    write_json(out / "train_step.json", record)
    train_rows = [r for r in rows if r["mode"] == "train"]
    infer_rows = [r for r in rows if r["mode"] == "inference"]
    header = (
        f"# Training step, CIFAR ResNet-18 (width {args.width}), {env['device']}\n\n"
        f"torch {env['torch']}, git {env['git_revision']}, {env['date']}; density {args.density}, RigL fraction "
        f"{RIGL_FRACTION} every {args.update_every} steps; {args.rounds} rounds x {args.steps} samples "
        f"({args.update_steps} of update steps), medians; "
        f"load = max 1-min load average during the case's rounds. Peers: "
        + ", ".join(f"{k} {v['version'] if v['ran'] else '(' + v['reason'] + ')'}" for k, v in peer_record.items())
        + "\n\n"
    )
    md = header + "## Training (fwd + bwd + SGD; DST update amortised)\n\n" + table(train_rows, COLUMNS) + "\n"
    if infer_rows:
        md += "\n## Inference (eval, inference_mode)\n\n" + table(infer_rows, INFER_COLUMNS) + "\n"
    md += (
        "\nstep: median plain training step; update step: median step that rewires (dense-gradient "
        "fwd/bwd + update); amortised: ((U-1) step + update) / U with U = "
        f"{args.update_every}; ratios against dense-cl of the same batch and thread count, same run.\n"
    )
    loaded = dict.fromkeys(
        (r["mode"], r["batch"], r["threads"], r["load_1min_max"]) for r in rows if r["oversubscribed"]
    )
    for mode, batch, threads, load in loaded:
        md += (
            f"\n**{mode}, batch {batch}, {threads} thread(s): load {load:.2f} > {CORES} cores: figures unreliable.**\n"
        )
    for r in rows:
        if r["case"] == "sparseprop":
            md += (
                f"\nsparseprop, batch {r['batch']}, {r['threads']} thread(s): {r['converted_layers']} of "
                f"{r['conv_layers']} convs converted (--sparseprop-convert {r['convert']}; auto keeps a layer dense "
                "where sparseprop's own timing finds dense faster)."
            )
    (out / "train_step.md").write_text(md)
    plot(out / "train_step.png", rows, f"ResNet-18 step on {env['device']} (density {args.density})")
    print(f"\n{md}\nwrote {out}/train_step.{{json,md,png}} in {elapsed:.0f} s")
    return record


if __name__ == "__main__":
    main()

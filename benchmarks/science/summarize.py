"""Tables and plots of the issue-15 science runs from whatever records exist (partial or final).

    python benchmarks/science/summarize.py [--results benchmarks/results/cpu-amd-epyc/science]

Reads ``<results>/<run>/record.json`` (copied there by ``run_queue.py``) and writes into
``<results>``: ``SUMMARY.md`` (the tables) and the plots ``accuracy_vs_epoch.png`` (ours beside
the published SET, dense and static curves), ``accuracy_vs_wallclock.png``,
``churn_vs_epoch.png`` and ``train_fraction.png``. Every table says how many epochs each run
has done; a run that has not reached an epoch shows ``-`` there, never an extrapolation.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "cpu-amd-epyc" / "science"

# Test accuracy (%) of the SET authors' Keras runs (Mocanu et al. 2018; their repository's
# SET-MLP-Keras-Weights-Mask/results), at the epochs quoted in issue 15.
PUBLISHED_EPOCHS = (10, 50, 100, 200, 500, 1000)
PUBLISHED = {
    "set": (42.8, 57.1, 60.8, 66.0, 70.3, 73.3),
    "dense": (51.3, 60.3, 63.8, 65.7, 69.1, 70.2),
    "static": (42.3, 55.7, 59.9, 63.8, 67.1, 68.8),
}
# The same runs per epoch, epochs 1-200 (published_set_keras.json: source and rounding inside).
PUBLISHED_CURVES: dict[str, list[float]] = json.loads(
    (Path(__file__).resolve().parent / "published_set_keras.json").read_text()
)["test_acc_percent"]


def mean_difference(record: dict, kind: str, first: int = 1, last: int = 200) -> tuple[float, int] | None:
    """Mean of (ours − published) over the evaluated epochs in [first, last] both have, and
    how many epochs that is; None when there is none."""
    curve = PUBLISHED_CURVES[kind]
    diffs = [100 * e["test_acc"] - curve[e["epoch"] - 1] for e in evaluated(record) if first <= e["epoch"] <= last]
    return (statistics.mean(diffs), len(diffs)) if diffs else None


TABLE_EPOCHS = (1, 10, 50, 100, 200)
THRESHOLDS = (60.8, 66.0)  # the published SET's epoch-100 and epoch-200 accuracy
CHURN_SETTLED = 0.01
RUN_NAME = re.compile(r"^(?P<config>.+?)(?:-f(?P<fraction>[0-9.]+))?-s(?P<seed>\d+)$")


def load_records(results: Path) -> dict[str, dict]:
    """The records of the queue's runs (folders named ``<config>[-f<fraction>]-s<seed>``; other
    folders, such as an archived partial record, are not runs of the plan and are left out)."""
    records = {}
    for path in sorted(results.glob("*/record.json")):
        if RUN_NAME.match(path.parent.name) is None:
            continue
        try:
            records[path.parent.name] = json.loads(path.read_text())
        except ValueError:
            continue
    return records


def parse_name(name: str) -> tuple[str, float, int]:
    """``set-b8-f0.1-s0`` -> (``"set-b8"``, 0.1, 0); full-data runs have fraction 1.0."""
    m = RUN_NAME.match(name)
    if m is None:
        return name, 1.0, 0
    return m.group("config"), float(m.group("fraction") or 1.0), int(m.group("seed"))


def reference_kind(config: str) -> str | None:
    """Which published curve a configuration is compared with."""
    if config == "dense":
        return "dense"
    if config.startswith("set-"):
        return "set"
    if config.startswith("static-"):
        return "static"
    return None


def evaluated(record: dict) -> list[dict]:
    """The epochs that have a test accuracy (``--eval-every N`` evaluates every N-th only)."""
    return [e for e in record["epochs"] if e.get("test_acc") is not None]


def last_evaluated(record: dict) -> dict | None:
    found = evaluated(record)
    return found[-1] if found else None


def best_acc(record: dict) -> float | None:
    return max((100 * e["test_acc"] for e in evaluated(record)), default=None)


def acc_at(record: dict, epoch: int) -> float | None:
    for e in evaluated(record):
        if e["epoch"] == epoch:
            return 100 * e["test_acc"]
    return None


def entry_at(record: dict, epoch: int) -> dict | None:
    """The evaluated epoch entry ``epoch`` of ``record`` (None if not run or not evaluated)."""
    return next((e for e in evaluated(record) if e["epoch"] == epoch), None)


# Train-fraction runs are compared at equal optimizer steps: epoch e of a run on a fraction f of
# the training set takes as many steps as epoch e·f of a full-data run.
STEP_EQUIVALENTS = (50, 100)


def at_equal_steps(records: dict[str, dict], equivalent: int) -> dict[float, dict[str, dict]]:
    """fraction -> config -> the evaluated epoch entry after as many steps as ``equivalent``
    full-data epochs (seed 0; full-data runs as fraction 1.0), for the configurations that have a
    train-fraction run."""
    configs = {parse_name(n)[0] for n in records if parse_name(n)[1] < 1.0}
    out: dict[float, dict[str, dict]] = {}
    for name, r in records.items():
        config, fraction, seed = parse_name(name)
        if config not in configs or seed != 0:
            continue
        entry = entry_at(r, round(equivalent / fraction))
        if entry is not None:
            out.setdefault(fraction, {})[config] = entry
    return out


def first_reaching(record: dict, threshold: float) -> tuple[int, float] | None:
    """(epoch, training wall-clock s) of the first epoch whose test accuracy is >= threshold %."""
    for e in evaluated(record):
        if 100 * e["test_acc"] >= threshold:
            return e["epoch"], e["wall_clock"]
    return None


def seconds_per_epoch(record: dict, key: str = "epoch_seconds") -> float | None:
    """Mean of ``key`` over the epochs after the first (those that have it)."""
    steady = record["epochs"][1:] or record["epochs"]
    values = [e[key] for e in steady if e.get(key) is not None]
    return statistics.mean(values) if values else None


def code_of_epochs(record: dict) -> list[str]:
    """Per epoch, the SReLU/dropout implementation of the segment that trained it ("aten" for
    segments from before the fused ops existed, which do not record it)."""
    starts = sorted((s.get("start_epoch", 0), s.get("pointwise", "aten")) for s in record.get("segments") or [])
    out = []
    for e in record["epochs"]:
        code = "aten"
        for start, c in starts:
            if e["epoch"] > start:
                code = c
        out.append(code)
    return out


def cpu_seconds_by_code(record: dict) -> dict[str, float]:
    """Mean training CPU s/epoch per implementation, each over its epochs except the first of
    every segment (warm-up)."""
    starts = {s.get("start_epoch", 0) + 1 for s in record.get("segments") or []} | {1}
    values: dict[str, list[float]] = {}
    for e, code in zip(record["epochs"], code_of_epochs(record)):
        if e["epoch"] not in starts and e.get("epoch_cpu_seconds") is not None:
            values.setdefault(code, []).append(e["epoch_cpu_seconds"])
    return {code: statistics.mean(v) for code, v in values.items()}


def cpu_hours(record: dict) -> list[float] | None:
    """Cumulative training CPU time (h) per epoch, or None when an epoch lacks it."""
    if not record["epochs"] or any(e.get("epoch_cpu_seconds") is None for e in record["epochs"]):
        return None
    total, out = 0.0, []
    for e in record["epochs"]:
        total += e["epoch_cpu_seconds"]
        out.append(total / 3600)
    return out


def accuracy_by_cpu_hours(record: dict) -> list[tuple[float, float]]:
    """(cumulative training CPU h, test accuracy %) of every evaluated epoch ([] when an epoch
    lacks its CPU time)."""
    hours = cpu_hours(record)
    if hours is None:
        return []
    return [(h, 100 * e["test_acc"]) for h, e in zip(hours, record["epochs"]) if e.get("test_acc") is not None]


def churn_by_epoch(record: dict) -> list[tuple[float, float]]:
    """(epoch after which the update happened, churn) per topology update."""
    history = record.get("structure_history") or []
    spe = record["steps_per_epoch"]
    return [(h["step"] / spe, h["churn"]) for h in history if "churn" in h]


def established_churn_by_epoch(record: dict) -> list[tuple[float, float]]:
    """(epoch, share of the active blocks replaced that were *not* grown at the update before)
    per update: the change of the established structure, without the blocks an update grows
    and the next one prunes again (``reverted`` in the history)."""
    history = record.get("structure_history") or []
    spe = record["steps_per_epoch"]
    out = []
    for h in history:
        layers = h.get("layers") or {}
        changed = sum(v.get("changed", 0) for v in layers.values())
        if "churn" not in h or changed == 0:
            if "churn" in h:
                out.append((h["step"] / spe, 0.0))
            continue
        established = sum(v.get("changed", 0) - v.get("reverted", 0) for v in layers.values())
        out.append((h["step"] / spe, h["churn"] * established / changed))
    return out


def settled_epoch(series: list[tuple[float, float]], level: float = CHURN_SETTLED) -> float | None:
    """The epoch after which every later update's churn stays below ``level`` (None: never yet)."""
    if not series or series[-1][1] >= level:
        return None
    for i in range(len(series) - 1, -1, -1):
        if series[i][1] >= level:
            return series[i + 1][0]
    return series[0][0]


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def mean_spread(values: list[float], digits: int = 2) -> str:
    """``mean ± half-range (n seeds)`` of the values of several seeds."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    half = (max(values) - min(values)) / 2
    return f"{statistics.mean(values):.{digits}f} ± {half:.{digits}f} ({len(values)} seeds)"


def reached_by_seeds(records: list[dict], threshold: float) -> str:
    """First epoch reaching ``threshold`` % over the seeds: mean ± half-range of the seeds that
    got there, and how many of them did when not all."""
    hits = [h[0] for h in (first_reaching(r, threshold) for r in records) if h is not None]
    if not hits:
        return "not yet"
    cell = mean_spread([float(h) for h in hits], digits=0)
    return cell if len(hits) == len(records) else f"{cell}; {len(records) - len(hits)} seed(s) not yet"


def status(record: dict) -> str:
    total = record["total_steps"] // record["steps_per_epoch"]
    return f"{len(record['epochs'])}/{total}" + (
        "" if record.get("steps_done") == record["total_steps"] else " partial"
    )


# ----------------------------------------------------------------------------- tables
def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def summary_markdown(records: dict[str, dict], comparisons: dict[str, dict[str, dict]] | None = None) -> str:
    comparisons = comparisons or {}
    full = {n: r for n, r in records.items() if parse_name(n)[1] == 1.0}
    fractional = {n: r for n, r in records.items() if parse_name(n)[1] < 1.0}
    partial = any(r.get("steps_done") != r["total_steps"] for r in records.values())
    dense_spe = [seconds_per_epoch(r, "epoch_cpu_seconds") for n, r in full.items() if parse_name(n)[0] == "dense"]
    dense_spe = [s for s in dense_spe if s]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Science runs (issue 15): summary" + (" — PARTIAL RESULTS" if partial else ""),
        "",
        f"Generated {now} by `benchmarks/science/summarize.py` from the records in this folder.",
        "Runs still in progress are marked *partial*: their numbers cover the epochs done so far only.",
        "Published numbers: the SET authors' Keras runs (Mocanu et al. 2018), as quoted in issue 15.",
        "",
        "## Test accuracy (%) at equal epochs vs the published curves",
        "",
    ]
    header = ["run", "epochs", *[f"ep {e}" for e in TABLE_EPOCHS], "published (10/50/100/200)", "best", "s/epoch",
              "CPU s/epoch (aten · fused)", "CPU speed vs dense"]  # fmt: skip
    rows = []
    for name, r in sorted(full.items()):
        config = parse_name(name)[0]
        kind = reference_kind(config)
        pub = "/".join(f"{v:.1f}" for v in PUBLISHED[kind][:4]) if kind else "-"
        spe, by_code = seconds_per_epoch(r), cpu_seconds_by_code(r)
        cpu = " · ".join(fmt(by_code.get(c)) for c in ("aten", "fused"))
        speed = " · ".join(
            f"{statistics.mean(dense_spe) / by_code[c]:.1f}×" if c in by_code and dense_spe else "-"
            for c in ("aten", "fused")
        )
        best = best_acc(r)
        rows.append([name, status(r), *[fmt(acc_at(r, e), 2) for e in TABLE_EPOCHS], pub, fmt(best, 2), fmt(spe),
                     cpu, speed])  # fmt: skip
    lines += table(header, rows)
    lines += [
        "",
        "s/epoch: training wall-clock per epoch (evaluation excluded), mean over the epochs after the first, one",
        "torch thread, `nice -n 19` on a shared 2-core machine: it varies with the load and includes SIGSTOP",
        "pauses. CPU s/epoch: process CPU time of the training steps (the work done, nearly load-independent),",
        "per implementation of SReLU and dropout: `aten` (ATen expressions, the code before 2026-12-01 16:30)",
        "and `fused` (csrc/pointwise.cpp); runs resumed across the change have both. The speed vs dense is the",
        "ratio of CPU s/epoch (dense: all its epochs; the fused ops change its step by < 1 %,",
        "`benchmarks/results/cpu-amd-epyc/set_mlp_step.md`).",
        "",
        "## Difference to the published curve (points; the bar is |Δ| ≤ 1.5 at epochs 50, 100, 200)",
        "",
    ]
    rows = []
    for name, r in sorted(full.items()):
        kind = reference_kind(parse_name(name)[0])
        if kind is None:
            continue
        cells = []
        for e in (10, 50, 100, 200):
            ours = acc_at(r, e)
            pub = PUBLISHED[kind][PUBLISHED_EPOCHS.index(e)]
            cells.append("-" if ours is None else f"{ours - pub:+.2f}")
        for first, last in ((41, 60), (91, 110), (181, 200)):
            found = mean_difference(r, kind, first, last)
            cells.append("-" if found is None else f"{found[0]:+.2f} ({found[1]} ep)")
        rows.append([name, kind, *cells])
    lines += table(["run", "published curve", "Δ ep 10", "Δ ep 50", "Δ ep 100", "Δ ep 200", "mean Δ ep 41-60",
                    "mean Δ ep 91-110", "mean Δ ep 181-200"], rows)  # fmt: skip
    lines += [
        "",
        "Single epochs are noisy (after epoch 50 the published curves change by up to 1.2 (SET, static) and",
        "2.6 (dense) points from one epoch to the next); the means over the 20 epochs around 50, 100 and 200",
        "compare with the published per-epoch values.",
    ]

    lines += ["", "## Seeds: mean ± half-range of the test accuracy (%)", ""]
    by_config: dict[str, list[dict]] = {}
    for name, r in full.items():
        by_config.setdefault(parse_name(name)[0], []).append(r)
    rows = []
    for config, rs in sorted(by_config.items()):
        cells = []
        for e in (10, 50, 100, 200):
            vals = [v for v in (acc_at(r, e) for r in rs) if v is not None]
            cells.append(mean_spread(vals))
        rows.append([config, *cells, reached_by_seeds(rs, THRESHOLDS[0])])
    lines += table(["config", "ep 10", "ep 50", "ep 100", "ep 200", f"first epoch ≥ {THRESHOLDS[0]} %"], rows)

    lines += ["", "## Convergence: first epoch (and training wall-clock) reaching the published SET's accuracy", ""]
    rows = []
    for name, r in sorted(full.items()):
        cells = []
        hours = cpu_hours(r)
        for t in THRESHOLDS:
            hit = first_reaching(r, t)
            if hit is None:
                cells.append(f"not yet ({len(r['epochs'])} ep)")
            elif hours is not None:
                cells.append(f"epoch {hit[0]} ({hours[hit[0] - 1]:.2f} CPU h)")
            else:
                cells.append(f"epoch {hit[0]} ({hit[1] / 3600:.2f} h wall)")
        rows.append([name, *cells])
    lines += table(["run", f"≥ {THRESHOLDS[0]} % (SET ep 100)", f"≥ {THRESHOLDS[1]} % (SET ep 200)"], rows)

    lines += ["", f"## Structure: mask churn per update; epoch after which it stays below {CHURN_SETTLED:.0%}", ""]
    rows = []
    for name, r in sorted(records.items()):
        series = churn_by_epoch(r)
        if not series:
            continue
        settled = settled_epoch(series)
        core = established_churn_by_epoch(r)
        core_settled = settled_epoch(core)
        recent = [c for _, c in core[-10:]]
        ever = (r.get("structure_history") or [{}])[-1].get("layers", {})
        ever_active = statistics.mean(v["ever_active"] for v in ever.values()) if ever else None
        rows.append([name, str(len(series)), f"{series[0][1]:.3f}", f"{series[-1][1]:.3f}",
                     fmt(settled, 0) if settled is not None else "not yet",
                     f"{statistics.mean(recent):.3f}" if recent else "-",
                     fmt(core_settled, 0) if core_settled is not None else "not yet", fmt(ever_active, 3)])  # fmt: skip
    lines += table(["run", "updates", "first churn", "last churn", "churn < 1 % after epoch",
                    "established replaced (last 10 updates)", "established < 1 % after epoch",
                    "ever active (mean)"], rows)  # fmt: skip
    lines += [
        "",
        "Churn: share of the active blocks swapped at an update. Established replaced: the part of it that",
        "prunes blocks *not* grown at the update before (churn × (changed − reverted) / changed): the change",
        "of the structure that persists. Ever active: share of each layer's grid cells active at some point",
        "so far (mean over the sparse layers). SET's churn is ζ = 0.3 at every update by construction",
        "(constant schedule, no adaptation); the evolutionary methods' adaptive rate has a floor of 0.1·ζ",
        "per layer by default (at least 3 % churn), so their churn cannot fall below 1 % in that",
        "configuration; runs named `-floor0` use `--adapt-floor 0` (down to one block per layer and update).",
    ]

    lines += ["", "## Fewer training samples (--train-fraction; epochs × fraction = 100 full-data epochs)", ""]
    rows = []
    for name, r in sorted(fractional.items()):
        last = last_evaluated(r)
        best = best_acc(r)
        gap = last.get("generalization_gap") if last else None
        rows.append([name, status(r), fmt(100 * last["test_acc"], 2) if last else "-", fmt(best, 2),
                     fmt(100 * gap, 2) if gap is not None else "-"])  # fmt: skip
    if rows:
        lines += table(["run", "epochs", "test acc % (last)", "best %", "gap (train_eval − test, points)"], rows)
    else:
        lines += ["No train-fraction run has a record yet."]
    for equivalent in STEP_EQUIVALENTS:
        found = at_equal_steps(records, equivalent)
        if not any(f < 1.0 for f in found):
            continue
        lines += ["", f"At equal optimizer steps: as many as {equivalent} full-data epochs (epoch {equivalent}/f):", ""]
        configs = sorted({c for g in found.values() for c in g})
        rows = []
        for fraction in sorted(found, reverse=True):
            row = [f"{fraction:g}"]
            for c in configs:
                e = found[fraction].get(c)
                if e is None:
                    row.append("-")
                    continue
                gap = e.get("generalization_gap")
                row.append(f"{100 * e['test_acc']:.2f} (gap {fmt(100 * gap, 2) if gap is not None else '-'})")
            rows.append(row)
        lines += table(["fraction", *[f"{c}: test % (gap)" for c in configs]], rows)
    lines += [
        "",
        "## Generalisation gap of the full-data runs (points, last epoch done)",
        "",
        "Gap = accuracy on 10,000 fixed training images (eval mode, no augmentation) minus test accuracy.",
        "",
    ]
    rows = []
    for name, r in sorted(full.items()):
        last = last_evaluated(r)
        if last and last.get("generalization_gap") is not None:
            rows.append([name, str(last["epoch"]), fmt(100 * last["train_eval_acc"], 2), fmt(100 * last["test_acc"], 2),
                         fmt(100 * last["generalization_gap"], 2)])  # fmt: skip
    lines += table(["run", "epoch", "train (eval) %", "test %", "gap"], rows)
    lines += comparison_markdown(comparisons)
    return "\n".join(lines) + "\n"


def load_comparisons(results: Path) -> dict[str, dict[str, dict]]:
    """``--compare`` runs: folder name -> {configuration folder -> record}."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(results.glob("*/*/record.json")):
        try:
            out.setdefault(path.parent.parent.name, {})[path.parent.name] = json.loads(path.read_text())
        except ValueError:
            continue
    return out


def torch_threads(record: dict) -> str:
    """The torch thread counts a record's segments trained with ("1", or "1, 2" for a run resumed
    with another count), read from their device description ("... 2 torch threads)"); "?" when
    the record does not say."""
    devices = [seg.get("device", "") for seg in record.get("segments") or []]
    devices = devices or [(record.get("environment") or {}).get("device_name", "")]
    counts = [m.group(1) for d in devices if (m := re.search(r"(\d+) torch threads?", d or ""))]
    return ", ".join(dict.fromkeys(counts)) or "?"


def comparison_markdown(comparisons: dict[str, dict[str, dict]]) -> list[str]:
    lines = ["", "## Convolutional comparison (`--compare`, equal budget)", ""]
    if not comparisons:
        return [*lines, "No comparison has a record yet."]
    for name, runs in comparisons.items():
        dense = runs.get("dense")
        dense_cpu = seconds_per_epoch(dense, "epoch_cpu_seconds") if dense else None
        total = max(r["config"]["epochs"] for r in runs.values())
        marks = comparison_epochs(total)
        rows = []
        for sub, r in runs.items():
            epochs = r["epochs"]
            cpu = seconds_per_epoch(r, "epoch_cpu_seconds")
            hours = cpu_hours(r)
            rows.append([
                sub, f"{len(epochs)}/{r['config']['epochs']}", f"{r['config']['density']:g}",
                *[fmt(acc_at(r, e), 2) for e in marks],
                fmt(100 * last_evaluated(r)["test_acc"], 2) if evaluated(r) else "-",
                fmt(best_acc(r), 2),
                fmt(seconds_per_epoch(r)), torch_threads(r), fmt(cpu), fmt(hours[-1], 2) if hours else "-",
                f"{dense_cpu / cpu:.2f}×" if dense_cpu and cpu else "-",
            ])  # fmt: skip
        lines += [f"`{name}` (plot: `{name}.png`):", ""]
        lines += table(["configuration", "epochs", "density", *[f"ep {e}" for e in marks], "test acc % (last)",
                        "best %", "s/epoch", "torch threads", "CPU s/epoch", "CPU h so far", "CPU speed vs dense"],
                       rows)  # fmt: skip
        lines += [
            "",
            "Test accuracy % at equal epochs (each configuration's own schedule over the same total epochs), the",
            "last and best so far, and the training CPU time (evaluation excluded): process CPU time, which sums",
            "the torch threads, so it compares runs of the same thread count only.",
            "",
        ]
    return lines


def comparison_epochs(total: int) -> list[int]:
    """The epochs the comparison table compares at: thirds of the run (10, 20, 30 for 30)."""
    return sorted({max(1, round(total * k / 3)) for k in (1, 2, 3)})


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


ABLATIONS = ("-rand", "-grace", "-floor")


def line_styles(names: list[str]) -> dict[str, dict]:
    """One colour per run (20 before any repeats, where 10 repeated with 14 runs) and dotted
    lines for the ablations (random initial mask, grace, no rate floor)."""
    plt = _pyplot()
    colours = plt.get_cmap("tab20").colors
    return {
        name: {"color": colours[i % len(colours)], "ls": ":" if any(a in name for a in ABLATIONS) else "-"}
        for i, name in enumerate(sorted(names))
    }


def full_data_runs(records: dict[str, dict]) -> dict[str, dict]:
    return {n: r for n, r in sorted(records.items()) if parse_name(n)[1] == 1.0 and r["epochs"]}


def plot_accuracy_vs_epoch(records: dict[str, dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    runs = full_data_runs(records)
    styles = line_styles(list(runs))
    for name, r in runs.items():
        points = evaluated(r)
        ax.plot([e["epoch"] for e in points], [100 * e["test_acc"] for e in points], label=name, lw=1.2, **styles[name])
    for kind, marker in (("set", "o"), ("dense", "s"), ("static", "^")):
        curve = PUBLISHED_CURVES[kind]
        ax.plot(range(1, len(curve) + 1), curve, ls="--", color="k", alpha=0.45, lw=0.8, marker=marker,
                markevery=25, ms=4, label=f"published {kind} (Mocanu et al., per epoch)")  # fmt: skip
        ax.plot(PUBLISHED_EPOCHS[4:], PUBLISHED[kind][4:], ls="none", marker=marker, color="k", alpha=0.45)
    longest = max((len(r["epochs"]) for r in runs.values()), default=10)  # full-data runs: the x axis is epochs
    ax.set_xlim(0, max(210, longest + 10) if longest <= 200 else longest + 10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    partial = any(r.get("steps_done") != r["total_steps"] for r in records.values())
    ax.set_title("SET-MLP on CIFAR-10: ours (solid) vs published (dashed)" + (" — PARTIAL" if partial else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_wallclock(records: dict[str, dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    runs = full_data_runs(records)
    styles = line_styles(list(runs))
    for name, r in runs.items():
        pairs = accuracy_by_cpu_hours(r)
        if pairs:
            ax.plot([h for h, _ in pairs], [a for _, a in pairs], label=name, **styles[name])
    for t in THRESHOLDS:
        ax.axhline(t, color="k", ls=":", lw=0.8)
    # CPU time, not wall-clock: on the shared machine wall-clock measures the load and pauses.
    ax.set_xlabel("training CPU time (h, one thread, evaluation excluded; 2-core AMD EPYC)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_churn(records: dict[str, dict], path: Path) -> bool:
    # Full-data runs only: a train-fraction run's epochs are not comparable on this x axis.
    series = {n: churn_by_epoch(r) for n, r in full_data_runs(records).items()}
    series = {n: s for n, s in series.items() if s}
    if not series:
        return False
    plt = _pyplot()
    styles = line_styles(list(series))
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for name, s in series.items():
        ax.plot([x for x, _ in s], [y for _, y in s], marker=".", ms=3, label=name, **styles[name])
    ax.axhline(CHURN_SETTLED, color="k", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (update after it)")
    ax.set_ylabel("mask churn (fraction of active blocks replaced)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_comparison(name: str, runs: dict[str, dict], path: Path) -> None:
    """Test accuracy of every configuration of ``--compare`` run ``name`` against the epoch
    (left) and against the training CPU time (right: what each point cost on this CPU)."""
    plt = _pyplot()
    fig, (by_epoch, by_cpu) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for sub, r in sorted(runs.items()):
        points = evaluated(r)
        (line,) = by_epoch.plot([e["epoch"] for e in points], [100 * e["test_acc"] for e in points], marker=".",
                                label=sub)  # fmt: skip
        pairs = accuracy_by_cpu_hours(r)
        if pairs:
            by_cpu.plot([h for h, _ in pairs], [a for _, a in pairs], marker=".", color=line.get_color(), label=sub)
    partial = any(r.get("steps_done") != r["total_steps"] for r in runs.values())
    by_epoch.set_title(f"{name}" + (" — PARTIAL" if partial else ""))
    by_epoch.set_xlabel("epoch")
    by_cpu.set_xlabel("training CPU time (h; one thread, evaluation excluded)")
    for ax in (by_epoch, by_cpu):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_train_fraction(records: dict[str, dict], path: Path) -> bool:
    """Bars per training fraction at equal optimizer steps (one column per step equivalent any
    train-fraction run has reached): test accuracy (top) and generalisation gap (bottom)."""
    panels = [(eq, at_equal_steps(records, eq)) for eq in STEP_EQUIVALENTS]
    panels = [(eq, groups) for eq, groups in panels if any(f < 1.0 for f in groups)]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7), constrained_layout=True, squeeze=False)
    # One slot and one colour per configuration in every panel, so that a run that has not
    # reached a panel's step count leaves its slot empty (marked) instead of shifting the others.
    configs = sorted({c for _, groups in panels for g in groups.values() for c in g})
    colours = {c: f"C{i % 10}" for i, c in enumerate(configs)}
    width = 0.8 / max(1, len(configs))
    for col, (equivalent, groups) in enumerate(panels):
        fractions = sorted(groups)
        for row, (key, label) in enumerate((("test_acc", "test accuracy (%)"), ("generalization_gap", "gap (points)"))):
            ax = axes[row][col]
            for i, c in enumerate(configs):
                for j, f in enumerate(fractions):
                    x, value = j + i * width, groups[f].get(c, {}).get(key)
                    if value is not None:
                        ax.bar(x, 100 * value, width, color=colours[c])
                    else:  # not run, or not this far yet
                        ax.text(x, 0.5, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color=colours[c])
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(fractions))], [f"{f:g}" for f in fractions])
            ax.set_xlabel(f"fraction of the training set (steps of {equivalent} full-data epochs)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, axis="y")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in configs]
    fig.legend(handles, configs, loc="outside upper center", ncol=len(configs), fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Tables and plots of the issue-15 science runs.")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    records = load_records(args.results)
    if not records:
        print(f"no records under {args.results}/*/record.json")
        return 1
    comparisons = load_comparisons(args.results)
    (args.results / "SUMMARY.md").write_text(summary_markdown(records, comparisons))
    for name, runs in comparisons.items():
        plot_comparison(name, runs, args.results / f"{name}.png")
    plot_accuracy_vs_epoch(records, args.results / "accuracy_vs_epoch.png")
    plot_accuracy_vs_wallclock(records, args.results / "accuracy_vs_wallclock.png")
    plot_churn(records, args.results / "churn_vs_epoch.png")
    plot_train_fraction(records, args.results / "train_fraction.png")
    print(f"wrote {args.results / 'SUMMARY.md'} and plots for {len(records)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The SET-MLP training epoch on the CPU: dense against block-sparse, fused pointwise ops on/off.

What the issue-15 science runs train, measured through the training CLI itself
(``python -m sparsekernels.train --model set-mlp``, SET's recipe: batch 100, SGD momentum 0.9,
SReLU, dropout 0.3, SET augmentation, ER ε = 20 at block 8 with per-epoch SET updates) on
synthetic CIFAR-shaped data (``--synthetic``): every step includes the augmentation, the
forward, the backward, the optimizer and the engine. Each sample is one subprocess training
two epochs of ``--images`` images; the second epoch's time per step is the figure (the first
pays for warm-up). The sparse case updates its topology every 2 epochs, so the timed epoch has
plain steps only: in the science runs the SET update runs once per 500 steps.

Cases: ``dense`` and ``sparse-b8``, each with the fused SReLU/dropout ops (default) and with
``SPARSEKERNELS_FUSED_POINTWISE=0`` (the ATen expressions, ``-aten``); on request
``sparse-b4`` and ``sparse-b1`` (element sparsity, as the published SET), which run the
native small-block path. Cases are run in
rounds, in a rotating order, so that ratios come from the same minutes; the median over the
rounds is reported with the highest 1-minute load average seen (``/proc/loadavg``) beside it.
Ratios are against ``dense`` of the same thread count (a speed-up > 1 means faster than it).

    python benchmarks/bench_set_mlp.py                    # threads 1 and 2, 3 rounds
    python benchmarks/bench_set_mlp.py --threads 1 --rounds 1 --images 400   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sparse(block: int) -> list[str]:
    return (
        f"--distribution er --er-epsilon 20 --block-size {block} --method set --update-every 2 --update-unit epoch "
        "--update-fraction 0.3 --update-schedule constant --stop-after 1.0"
    ).split()


CASES = {"dense": ([], "1"), "dense-aten": ([], "0"), "sparse-b8": (sparse(8), "1"), "sparse-b8-aten": (sparse(8), "0")}
# Blocks 4 and 1 (element sparsity, as the published SET) on the same net; not in the default set.
EXTRA_CASES = {"sparse-b4": (sparse(4), "1"), "sparse-b1": (sparse(1), "1")}
CASES.update(EXTRA_CASES)
RECIPE = [
    "--model", "set-mlp", "--device", "cpu", "--batch-size", "100", "--optimizer", "sgd", "--lr", "0.01",
    "--weight-decay", "0", "--no-nesterov", "--schedule", "constant", "--warmup-epochs", "0", "--augment", "set",
    "--activation", "srelu", "--dropout", "0.3", "--backend", "native", "--synthetic", "--epochs", "2",
]  # fmt: skip


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def sample(case: str, threads: int, images: int) -> dict:
    """One subprocess run of ``case``: CPU and wall seconds per step of its second epoch."""
    extra, fused = CASES[case]
    with tempfile.TemporaryDirectory() as out:
        argv = [*RECIPE, *extra, "--synthetic-size", str(images), "--out", out]
        code = (
            "import sys, torch\n"
            f"torch.set_num_threads({threads})\n"
            "from sparsekernels import train\n"
            "sys.exit(train.main(sys.argv[1:]))\n"
        )
        env = {**os.environ, "SPARSEKERNELS_FUSED_POINTWISE": fused, "OMP_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        subprocess.run([sys.executable, "-c", code, *argv], env=env, check=True, capture_output=True, text=True)
        record = json.loads((Path(out) / "record.json").read_text())
    epoch = record["epochs"][-1]
    return {
        "cpu_ms_per_step": 1e3 * epoch["epoch_cpu_seconds"] / epoch["steps"],
        "wall_ms_per_step": 1e3 * epoch["epoch_seconds"] / epoch["steps"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=3000, help="synthetic training images per epoch (batch 100)")
    default_cases = [c for c in CASES if c not in EXTRA_CASES]
    p.add_argument("--cases", nargs="+", default=default_cases, choices=list(CASES))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-amd-epyc")
    args = p.parse_args(argv)

    results = []
    for threads in args.threads:
        samples: dict[str, list[dict]] = {c: [] for c in args.cases}
        loads = []
        for r in range(args.rounds):
            order = args.cases[r % len(args.cases) :] + args.cases[: r % len(args.cases)]
            for case in order:
                loads.append(load1())
                samples[case].append(sample(case, threads, args.images))
                s = samples[case][-1]
                print(f"threads {threads} round {r + 1} {case:15s} {s['wall_ms_per_step']:7.1f} ms/step wall "
                      f"{s['cpu_ms_per_step']:7.1f} ms CPU  load {loads[-1]:.2f}", flush=True)  # fmt: skip
        med = {c: {k: statistics.median(s[k] for s in v) for k in v[0]} for c, v in samples.items()}
        for case in args.cases:
            row = {"threads": threads, "case": case, **med[case], "rounds": args.rounds, "max_load1": max(loads)}
            if "dense" in med:
                row["speedup_wall_vs_dense"] = med["dense"]["wall_ms_per_step"] / med[case]["wall_ms_per_step"]
                row["speedup_cpu_vs_dense"] = med["dense"]["cpu_ms_per_step"] / med[case]["cpu_ms_per_step"]
            results.append(row)

    lines = [
        "# SET-MLP training step on the CPU (issue 15's runs): dense vs block-sparse",
        "",
        "Measured with `benchmarks/bench_set_mlp.py`: the training CLI's SET recipe (3072-4000-1000-4000-10,",
        "SReLU, dropout 0.3, SET augmentation, batch 100, SGD momentum 0.9; sparse: ER ε = 20 at block 8,",
        "layer densities 1.15/2.5/2.5 %; plain steps, without the once-per-epoch SET update), synthetic",
        f"CIFAR-shaped images, fp32, native backend; median of {args.rounds} interleaved rounds, each the second",
        "epoch of a fresh process.",
        "`-aten`: SReLU and dropout as ATen expressions (`SPARSEKERNELS_FUSED_POINTWISE=0`) instead of the",
        "fused C++ ops. Speed-up: dense (fused) of the same thread count / this case.",
        "",
        "| threads | case | ms/step (wall) | ms/step (CPU) | speed-up vs dense (wall) | max 1-min load |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['threads']} | {row['case']} | {row['wall_ms_per_step']:.1f} | {row['cpu_ms_per_step']:.1f} | "
            f"{row.get('speedup_wall_vs_dense', float('nan')):.2f}× | {row['max_load1']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "set_mlp_step.md").write_text("\n".join(lines) + "\n")
    (args.out / "set_mlp_step.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A performance MODEL of the Triton kernels on one H200 — predictions, not measurements.

    python -m benchmarks.roofline                      # compile, model, write the tables
    python -m benchmarks.roofline --checkout /work/wt12b

Nothing here runs on a GPU. The kernels' actual tiling is read from their sm_90 compile
(``sparsekernels/ops/_aot.py``): for every kept autotune config, the grid (programs), the dot
tile of the main loop (M x N x K per iteration, from the TTGIR), the bytes its loads move per
iteration, the MMA path in the SASS (HGMMA / HMMA), registers and shared memory (occupancy).
So a kernel redesign changes the prediction. Per config the model predicts

    t = max(t_mma, t_l2, t_hbm) + t_fill + t_launch
    t_mma  = useful FLOPs / (EFFICIENCY * PEAK_BF16 * path factor * tile-shape factor)
    t_l2   = (iterations * bytes loaded per iteration + output bytes) / L2_BW
    t_hbm  = compulsory bytes (each operand read once, output written once) / HBM_BW
    t_fill = waves * FILL_S        (waves = programs / (SMs * programs resident per SM))

and keeps the best config (what autotuning would pick, if the model is right). The dense
baseline (cuBLAS / cuDNN) is modelled at EFFICIENCY of the same peak. Speedup = dense / sparse.

Constants, and where each comes from:
* PEAK_BF16 = 790 TFLOP/s: MEASURED on this workplace's H200 (8192^3 bf16 torch matmul, random
  data, 769-798 TFLOP/s). Datasheet: 989 TFLOP/s dense.
* HBM_BW = 4.3 TB/s: MEASURED device-to-device copy (bytes read + written). Datasheet: 4.8 TB/s.
* EFFICIENCY = 0.75: the issue's convention (kernels and dense baseline at 75 % of peak).
* L2_BW = 7 TB/s: ASSUMPTION (not measured here, no datasheet figure); gpu_proof.py measures an
  L2-resident copy so this can be replaced.
* HMMA_FACTOR = 0.5: ASSUMPTION for mma.sync (pre-Hopper MMA) relative to warpgroup MMA.
* wgmma tile-shape factor min(1, (N/2) / (N/4 + 16)): DERIVED from the datasheet (1024 dense bf16
  FMA/clk/SM per m64nNk16 issue: N/2 clocks) and 128 B/clk of shared-memory bandwidth per SM
  (B tile 32N bytes + A tile 2 KB read per instruction).
* FILL_S = 1 us per wave (pipeline fill + epilogue), LAUNCH_S = 3 us per launch: ASSUMPTIONS.
* SMS = 132, SMEM_PER_SM = 228 KB, 64K registers per SM: datasheet (the SM count and L2 size
  were read off the device by torch on this workplace's H200).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sparsekernels.ops import _aot  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "model-h200"

PEAK_BF16 = 790e12  # measured
HBM_BW = 4.3e12  # measured
EFFICIENCY = 0.75  # convention of issue 12
L2_BW = 7.0e12  # assumption
HMMA_FACTOR = 0.5  # assumption
FMA_PEAK = 67e12  # datasheet fp32 (non-tensor) rate
FILL_S = 1e-6  # assumption
LAUNCH_S = 3e-6  # assumption
SMS = 132
SMEM_PER_SM = 228 * 1024
REGS_PER_SM = 65536
CONSTANTS = {
    "PEAK_BF16": [PEAK_BF16, "measured (H200, 8192^3 bf16 torch matmul)"],
    "HBM_BW": [HBM_BW, "measured (device copy, read+write)"],
    "EFFICIENCY": [EFFICIENCY, "convention (issue 12: 75 % of peak, sparse and dense)"],
    "L2_BW": [L2_BW, "assumption"],
    "HMMA_FACTOR": [HMMA_FACTOR, "assumption"],
    "FMA_PEAK": [FMA_PEAK, "datasheet"],
    "FILL_S": [FILL_S, "assumption"],
    "LAUNCH_S": [LAUNCH_S, "assumption"],
    "SMS": [SMS, "datasheet / read off the device"],
    "SMEM_PER_SM": [SMEM_PER_SM, "datasheet"],
}
TARGETS = {32: 4.0, 64: 6.0}  # matmul speedup targets at density 0.1 (issue 12)
CONV_TARGET = 3.0  # ResNet-18 3x3 convs fwd+dx+dW over cuDNN
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
M = N = K = 4096


def matmul_cases(densities=(0.1,), blocks=(32, 64, 128)) -> list[_aot.Case]:
    return [_aot.Case(op, "bf16", b, "4096", d) for op in ("sdd", "dsd", "dds") for b in blocks for d in densities]


def conv_cases(blocks=(32, 64)) -> list[_aot.Case]:
    return [
        _aot.Case(op, "bf16", b, shape)
        for op in _aot.CONV_OPS
        for b in blocks
        for shape in _aot.RESNET18_CONVS
        if _aot._conv_fits(shape, b)
    ]


def problem(case: _aot.Case) -> dict:
    """Useful FLOPs and compulsory HBM bytes of the sparse op, and the dense op's."""
    e, b = BYTES[case.dtype], case.block
    if case.op in _aot.MATMUL_OPS:
        nnz = max(1, round(case.density * (M // b) * (K // b)))
        flops = 2.0 * nnz * b * b * N
        vals = nnz * b * b * e
        dense_in = M * K * e
        out = vals if case.op == "sdd" else M * N * e
        hbm = (2 * dense_in if case.op == "sdd" else dense_in + vals) + out
        return {
            "nnz": nnz,
            "flops": flops,
            "hbm": hbm,
            "out": out,
            "dense_flops": 2.0 * M * N * K,
            "dense_hbm": 3 * M * K * e,
        }
    n, c, h, w, k, stride = _aot.CONV_SHAPE_TABLE[case.shape]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    nnz = max(1, round(case.density * (9 * k // b) * (c // b)))
    pix = n * ho * wo
    flops = 2.0 * nnz * b * b * pix
    x, y, vals = n * h * w * c * e, pix * k * e, nnz * b * b * e
    dense_flops = 2.0 * pix * k * c * 9
    out = {"conv_fwd": y, "conv_dx": x, "conv_dw": vals}[case.op]
    return {
        "nnz": nnz,
        "flops": flops,
        "hbm": x + y + vals,
        "out": out,
        "dense_flops": dense_flops,
        "dense_hbm": x + y + 9 * k * c * e,
    }


def mma_rate(record: dict, loop: dict) -> tuple[float, str]:
    """Sustained MMA rate of a compiled kernel's main loop (FLOP/s) and its path."""
    sass = record["sass"]
    if sass["hgmma"] > 0:
        n = min(dm[1] for dm in loop["dot_mnk"]) if loop["dot_mnk"] else 64
        shape = min(1.0, (n / 2) / (n / 4 + 16))
        return EFFICIENCY * PEAK_BF16 * shape, f"wgmma N={n} ({shape:.2f})"
    if sass["hmma"] > 0:
        return EFFICIENCY * PEAK_BF16 * HMMA_FACTOR, "mma.sync"
    return EFFICIENCY * FMA_PEAK, "fma"


def resident(record: dict) -> int:
    """Programs resident per SM (shared memory, registers, 32-block cap)."""
    threads = 32 * record["num_warps"]
    by_smem = SMEM_PER_SM // max(record["shared_bytes"] + 1024, 1)
    by_regs = REGS_PER_SM // max((record.get("regs") or 32) * threads, 1)
    return max(1, min(by_smem, by_regs, 32))


def predict(record: dict, prob: dict) -> dict | None:
    """The model's time for one compiled (launch, config) record, or None without a dot loop."""
    if not record.get("compiled") or not record.get("loops"):
        return None
    loop = max(record["loops"], key=lambda lp: sum(m * n * k for m, n, k in lp["dot_mnk"]) or 0)
    flops_iter = sum(2.0 * m * n * k for m, n, k in loop["dot_mnk"])
    if flops_iter == 0:
        return None
    iters = prob["flops"] / flops_iter
    l2_bytes = iters * loop["load_bytes_per_iter"] + prob["out"]
    rate, path = mma_rate(record, loop)
    t_mma, t_l2, t_hbm = prob["flops"] / rate, l2_bytes / L2_BW, prob["hbm"] / HBM_BW
    programs = record.get("programs") or 1
    waves = math.ceil(programs / (SMS * resident(record)))
    t = max(t_mma, t_l2, t_hbm) + waves * FILL_S + LAUNCH_S
    bound = max((t_mma, "mma"), (t_l2, "L2"), (t_hbm, "HBM"))[1]
    return {
        "config": record["config"],
        "kernel": record["kernel"].rsplit(".", 1)[-1],
        "path": path,
        "tile": "x".join(map(str, loop["dot_mnk"][0]))
        + (f" x{len(loop['dot_mnk'])}" if len(loop["dot_mnk"]) > 1 else ""),
        "flop_per_l2_byte": round(flops_iter / max(loop["load_bytes_per_iter"], 1), 1),
        "programs": programs,
        "waves": waves,
        "t_mma_us": t_mma * 1e6,
        "t_l2_us": t_l2 * 1e6,
        "t_hbm_us": t_hbm * 1e6,
        "t_us": t * 1e6,
        "bound": bound,
    }


def dataflow_bound(case: _aot.Case) -> dict:
    """The model's best case for ANY kernel in which each program owns an output tile and
    streams the nonzero blocks it needs (sdd, dsd, dds as written here, and every other
    output-stationary design without atomics): each element of the dense operand is read from
    L2 once per nonzero block that uses it, so L2 moves at least FLOPs / (2 b / itemsize)
    bytes whatever the tile (b FLOP per byte in bf16). With the MMA ceiling that bounds the
    time from below, and the speedup over dense from above."""
    prob = problem(case)
    intensity = 2.0 * case.block / BYTES[case.dtype]
    t = max(prob["flops"] / (EFFICIENCY * PEAK_BF16), prob["flops"] / (intensity * L2_BW))
    return {"flop_per_l2_byte": intensity, "min_us": t * 1e6, "max_speedup": dense_time(prob) / t}


def dense_time(prob: dict) -> float:
    return max(prob["dense_flops"] / (EFFICIENCY * PEAK_BF16), prob["dense_hbm"] / HBM_BW) + LAUNCH_S


def model(records: list[dict], case_list: list[_aot.Case]) -> list[dict]:
    """One row per case: the best config's prediction (summed over launches), dense, speedup."""
    rows = []
    for case in case_list:
        prob = problem(case)
        mine = [r for r in records if r["case"] == case.name]
        total, parts, error = 0.0, [], None
        for launch in sorted({r.get("launch", 0) for r in mine}):
            preds = [p for r in mine if r.get("launch", 0) == launch and (p := predict(r, prob))]
            if preds:
                best = min(preds, key=lambda p: p["t_us"])
                total += best["t_us"]
                parts.append(best)
            elif any(not r.get("compiled") for r in mine if r.get("launch", 0) == launch):
                error = next(r.get("error") for r in mine if not r.get("compiled"))
        dense_us = dense_time(prob) * 1e6
        row = {
            "case": case.name,
            "op": case.op,
            "block": case.block,
            "density": case.density,
            "shape": case.shape,
            "predicted_us": round(total, 2) if parts else None,
            "dense_predicted_us": round(dense_us, 2),
            "predicted_speedup": round(dense_us / total, 2) if parts and total > 0 else None,
            "launches": parts,
            "error": error,
        }
        rows.append(row)
    return rows


def conv_totals(rows: list[dict]) -> list[dict]:
    """ResNet-18 3x3 convs, fwd + dx + dW summed over the network's layers, per block size."""
    out = []
    for block in sorted({r["block"] for r in rows if r["op"] in _aot.CONV_OPS}):
        sparse = dense = 0.0
        missing = []
        for shape, count in _aot.RESNET18_CONVS.items():
            for op in _aot.CONV_OPS:
                row = next((r for r in rows if r["op"] == op and r["block"] == block and r["shape"] == shape), None)
                if row is None or row["predicted_us"] is None:
                    missing.append(f"{op}/{shape}")
                    continue
                sparse += count * row["predicted_us"]
                dense += count * row["dense_predicted_us"]
        out.append(
            {
                "block": block,
                "predicted_us": round(sparse, 1),
                "dense_predicted_us": round(dense, 1),
                "predicted_speedup": round(dense / sparse, 2) if sparse and not missing else None,
                "target": CONV_TARGET,
                "missing": missing,
            }
        )
    return out


def markdown(rows: list[dict], conv: list[dict], meta: dict) -> str:
    lines = [
        "# H200 performance MODEL of the Triton kernels (predictions, not measurements)",
        "",
        f"Kernels of {meta['checkout']} @ {meta['revision']}, compiled for sm_90 with triton {meta['triton']} "
        f"({meta['date']}); model in `benchmarks/roofline.py`. No GPU ran. bf16, dense baseline at "
        f"{EFFICIENCY:.0%} of the measured {PEAK_BF16 / 1e12:.0f} TFLOP/s. Configs modelled: {meta['configs']}.",
        "",
        "Constants: " + "; ".join(f"{k} = {v[0]:g} ({v[1]})" for k, v in CONSTANTS.items()) + ".",
        "",
        "## Matmul, 4096^3 (predicted)",
        "",
        "| case | best config | path | tile MxNxK | FLOP/B (L2) | t_mma | t_L2 | t_HBM | bound | "
        "predicted us | dense us | predicted speedup | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["op"] not in _aot.MATMUL_OPS:
            continue
        p = r["launches"][0] if r["launches"] else {}
        target = TARGETS.get(r["block"]) if r["density"] == 0.1 else None
        verdict = (
            ""
            if target is None or r["predicted_speedup"] is None
            else (f">= {target:g}: {'meets' if r['predicted_speedup'] >= target else 'MISSES'}")
        )
        lines.append(
            f"| {r['case']} | {p.get('config', r['error'])} | {p.get('path', '')} | {p.get('tile', '')} | "
            f"{p.get('flop_per_l2_byte', '')} | {p.get('t_mma_us', 0):.1f} | {p.get('t_l2_us', 0):.1f} | "
            f"{p.get('t_hbm_us', 0):.1f} | {p.get('bound', '')} | {r['predicted_us']} | {r['dense_predicted_us']} | "
            f"{r['predicted_speedup']} | {verdict} |"
        )
    lines += [
        "",
        "Upper bound of the same model for any output-stationary dataflow (each program owns an output "
        "tile and streams its nonzero blocks; the dense operand is re-read from L2 once per nonzero block "
        "that uses it, so the L2 traffic is at least FLOPs / b bytes in bf16, whatever the tile):",
        "",
        "| block | FLOP/B (L2) at best | min us | max predicted speedup | target |",
        "|---|---|---|---|---|",
    ]
    for block in sorted({r["block"] for r in rows if r["op"] in _aot.MATMUL_OPS}):
        bound = dataflow_bound(_aot.Case("dsd", "bf16", block, "4096"))
        target = TARGETS.get(block)
        reach = (
            ""
            if target is None
            else f">= {target:g}: {'reachable' if bound['max_speedup'] >= target else 'NOT reachable'}"
        )
        lines.append(
            f"| {block} | {bound['flop_per_l2_byte']:.0f} | {bound['min_us']:.1f} | "
            f"{bound['max_speedup']:.2f} | {reach} |"
        )
    lines += [
        "",
        "## ResNet-18 CIFAR 3x3 convs, batch 256, density 0.1: fwd + dx + dW over all layers (predicted)",
        "",
        "| block | predicted us | dense (cuDNN model) us | predicted speedup | target |",
        "|---|---|---|---|---|",
    ]
    for c in conv:
        verdict = (
            "" if c["predicted_speedup"] is None else ("meets" if c["predicted_speedup"] >= c["target"] else "MISSES")
        )
        lines.append(
            f"| {c['block']} | {c['predicted_us']} | {c['dense_predicted_us']} | {c['predicted_speedup']} | "
            f">= {c['target']:g}: {verdict} {'(missing ' + ', '.join(c['missing']) + ')' if c['missing'] else ''} |"
        )
    lines += ["", "## Conv layers (predicted)", "", "| case | best config | path | tile | bound | predicted us | "
              "dense us | predicted speedup |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["op"] in _aot.CONV_OPS:
            p = r["launches"][0] if r["launches"] else {}
            lines.append(
                f"| {r['case']} | {p.get('config', r['error'])} | {p.get('path', '')} | {p.get('tile', '')} | "
                f"{p.get('bound', '')} | {r['predicted_us']} | {r['dense_predicted_us']} | {r['predicted_speedup']} |"
            )
    return "\n".join(lines) + "\n"


def load(path: Path = OUT / "roofline.json") -> dict | None:
    """The committed model results (for gpu_proof.py to print beside measurements), if any."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(ROOT), help="repository whose kernels are modelled")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--first-config", action="store_true", help="only the first kept config (faster)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    import subprocess

    import triton

    case_list = matmul_cases() + conv_cases()
    checkout = Path(args.checkout).resolve()
    # Every kept config: the full sweep's records are reused from its cache (same kernel sources
    # and triton) and the cases only the model needs are added to it.
    cache = _aot.default_cache("full") if not args.first_config and checkout == ROOT else None
    records = _aot.run_cases(
        case_list, all_configs=not args.first_config, jobs=args.jobs, pythonpath=str(checkout), cache=cache
    )
    rows = model(records, case_list)
    conv = conv_totals(rows)
    rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    meta = {
        "what": "MODEL predictions for one H200, not measurements",
        "checkout": str(checkout),
        "revision": rev.stdout.strip(),
        "triton": triton.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "constants": CONSTANTS,
        "configs": "first kept config of each launch (--first-config)" if args.first_config else "best kept config",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "roofline.json").write_text(json.dumps({**meta, "rows": rows, "conv_totals": conv}, indent=1) + "\n")
    (out / "roofline.md").write_text(markdown(rows, conv, meta))
    print(f"MODEL (predictions, not measurements) -> {out / 'roofline.md'}")
    for r in rows:
        if r["op"] in _aot.MATMUL_OPS and r["density"] == 0.1:
            print(f"  {r['case']:<28} predicted {r['predicted_us']} us, dense {r['dense_predicted_us']} us, "
                  f"predicted speedup {r['predicted_speedup']}")  # fmt: skip
    for c in conv:
        print(f"  ResNet-18 3x3 convs block {c['block']}: predicted speedup {c['predicted_speedup']} (target 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

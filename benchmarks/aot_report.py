"""The sm_90 compile table of every Triton kernel, without a GPU (issue 12, point 1).

    python -m benchmarks.aot_report                    # full sweep, this checkout
    python -m benchmarks.aot_report --quick            # the CI subset (bf16, blocks 32/64/128)
    python -m benchmarks.aot_report --quick --checkout /work/wt12b   # another checkout's kernels

Compiles each kernel x kept autotune config for ``GPUTarget("cuda", 90, 32)`` with the installed
triton (harness: ``sparsekernels/ops/_aot.py``) and writes ``report-<mode>-triton<version>.json``
(every record) and ``.md`` (one row per case, then every failed check) to
``benchmarks/results/sm90-compile/``. The exit code is 0 whatever fails: the table is the result.
``--known-failures`` prints the failed (case, check) pairs as this triton version's entry of
``KNOWN_FAILURES_BY_TRITON`` (``--quick``) or ``KNOWN_FULL_FAILURES_BY_TRITON`` (full sweep) in
``tests/test_sm90_compile.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sparsekernels.ops import _aot  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "sm90-compile"


def _git(checkout: Path) -> str | None:
    try:
        cmd = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(checkout), "diff", "--quiet", "HEAD"], capture_output=True).returncode
    except OSError:
        return None
    return res.stdout.strip() + ("+dirty" if dirty else "") if res.returncode == 0 else None


def _versions() -> dict:
    import triton

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90)
        ptxas_version = f"{ptxas.version} ({Path(ptxas.path).name})"
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        ptxas_version = f"unknown ({exc})"
    return {"triton": triton.__version__, "ptxas": ptxas_version, "python": sys.version.split()[0]}


def _kept(mine: list[dict]) -> str:
    """Compiled/kept/total configs of each launch of a case ("1/6/12"; "a + b" for two launches)."""
    parts = []
    for launch in dict.fromkeys(r.get("launch") for r in mine):
        rs = [r for r in mine if r.get("launch") == launch]
        parts.append(f"{len(rs)}/{rs[0].get('configs_kept') or 1}/{rs[0].get('configs_total') or 1}")
    return " + ".join(parts)


def summarize(records: list[dict]) -> list[dict]:
    """One row per case: worst figures over its launches and kept configs, failed checks."""
    rows = []
    for case in dict.fromkeys(r["case"] for r in records):
        mine = [r for r in records if r["case"] == case]
        ok = [r for r in mine if r.get("compiled")]
        dot = [r for r in ok if r.get("has_dot")]
        failed = sorted({name for r in mine for name, why in _aot.check(r).items() if why})

        def worst(key, rs=ok, fn=max):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return fn(vals) if vals else None

        rows.append(
            {
                "case": case,
                "kernels": ", ".join(dict.fromkeys(r.get("kernel", "?").rsplit(".", 1)[-1] for r in mine)),
                "configs": _kept(mine),
                "compiled": f"{len(ok)}/{len(mine)}",
                "regs": worst("regs"),
                "spill_B": worst("spill_store_bytes"),
                "smem_KB": round(worst("shared_bytes") / 1024, 1) if ok else None,
                "hgmma": min((r["sass"]["hgmma"] for r in dot), default=None),
                "hmma": max((r["sass"]["hmma"] for r in dot), default=None),
                "in_flight": worst("loads_in_flight", dot, min),
                "buffers": min((lp["buffers"] for r in dot for lp in r["loops"]), default=None),
                "failed": ", ".join(failed) or "-",
            }
        )
    return rows


def markdown(rows: list[dict], records: list[dict], meta: dict) -> str:
    head = [
        f"# sm_90 compile check ({meta['mode']}): {meta['checkout']} @ {meta['revision']}",
        "",
        f"Compiled on the CPU for `GPUTarget{tuple(_aot.TARGET)}` with triton {meta['versions']['triton']}, "
        f"ptxas {meta['versions']['ptxas']}, {meta['date']}; {len(records)} compiles, "
        f"{meta.get('compile_seconds', meta['seconds']):.0f} s of compile time (this run: {meta['seconds']:.0f} s "
        "wall; records of a stopped sweep are resumed from its cache). "
        "No GPU ran: these are compiler outputs, not timings.",
        "",
        "Per case, over its launches and kept configs: configs compiled/kept by the prune/listed, "
        "compiled/total, the most registers and spill bytes "
        "(ptxas -v), the most shared memory (limit 227 KB), the fewest HGMMA and the most HMMA "
        "instructions in the SASS of kernels with a dot, the fewest loads in flight in a dot loop "
        "(smallest `async_wait` count) and the fewest shared-memory buffers.",
        "",
    ]
    cols = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[c] is None else str(row[c]) for c in cols) + " |")
    fails = _aot.failures(records)
    tail = ["", f"## Failed checks ({len(fails)})", ""]
    tail += [f"- `{case}` {kernel}: **{name}**: {why[:300]}" for case, kernel, name, why in fails] or ["none"]
    return "\n".join(head + lines + tail) + "\n"


def known_failures_literal(records: list[dict], version: str) -> str:
    """The failed (case, check) pairs with a short reason, as the entry of one triton version
    in ``KNOWN_FAILURES_BY_TRITON`` (tests/test_sm90_compile.py)."""
    pairs: dict[tuple[str, str], str] = {}
    for case, _kernel, name, why in _aot.failures(records):
        pairs.setdefault((case, name), why[:70])
    body = "".join(f"        ({case!r}, {name!r}): {why!r},\n" for (case, name), why in sorted(pairs.items()))
    return f"    {version!r}: {{\n{body}    }},\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI subset, first kept config of each launch")
    parser.add_argument("--checkout", default=str(ROOT), help="repository whose kernels are compiled")
    parser.add_argument("--jobs", type=int, default=2, help="compile worker processes")
    parser.add_argument("--ops", nargs="+", choices=_aot.OPS, default=None, help="only these ops")
    parser.add_argument("--out", default=str(OUT), help="results folder")
    parser.add_argument("--keep-asm", default=None, help="also write each TTGIR, SASS and ptxas log here")
    parser.add_argument(
        "--cache",
        default=None,
        help="JSON-lines file of the records, appended as they come; a stopped sweep resumes from it "
        "(default for this checkout: ~/.cache/sparsekernels/sm90-<mode>-triton<version>.jsonl)",
    )
    parser.add_argument("--no-cache", action="store_true", help="compile everything again, keep no cache")
    parser.add_argument("--known-failures", action="store_true", help="print the KNOWN_FAILURES literal")
    args = parser.parse_args(argv)

    case_list = _aot.quick_cases() if args.quick else _aot.full_cases()
    if args.ops:
        case_list = [c for c in case_list if c.op in args.ops]
    checkout = Path(args.checkout).resolve()
    mode = "quick" if args.quick else "full"
    cache = None
    if not args.no_cache and args.keep_asm is None:
        # The cache is keyed by this checkout's kernel sources; another checkout's are not hashed.
        if args.cache is not None:
            cache = Path(args.cache)
        elif checkout == ROOT:
            cache = _aot.default_cache(mode)
    start = time.perf_counter()
    records = _aot.run_cases(
        case_list,
        all_configs=not args.quick,
        jobs=args.jobs,
        keep_asm=args.keep_asm,
        pythonpath=str(checkout),
        cache=cache,
    )
    compile_seconds = sum(r.get("seconds") or 0 for r in records)
    meta = {
        "mode": mode,
        "checkout": str(checkout),
        "revision": _git(checkout),
        "versions": _versions(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.perf_counter() - start,
        "compile_seconds": compile_seconds,
        "cache": str(cache) if cache else None,
        "target": list(_aot.TARGET),
        "smem_limit_bytes": _aot.SMEM_LIMIT_BYTES,
        "min_loads_in_flight": _aot.MIN_LOADS_IN_FLIGHT,
    }
    rows = summarize(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"report-{meta['mode']}-triton{meta['versions']['triton']}"
    Path(f"{stem}.json").write_text(json.dumps({**meta, "rows": rows, "records": records}, indent=1) + "\n")
    Path(f"{stem}.md").write_text(markdown(rows, records, meta))
    fails = _aot.failures(records)
    print(f"{len(records)} compiles, {len(fails)} failed checks, {meta['seconds']:.0f} s -> {stem}.md")
    for row in rows:
        print(f"  {row['case']:<32} {row['compiled']:>6} regs {row['regs']} spill {row['spill_B']} "
              f"smem {row['smem_KB']} KB  HGMMA {row['hgmma']} HMMA {row['hmma']} "
              f"in-flight {row['in_flight']}  failed: {row['failed']}")  # fmt: skip
    if args.known_failures:
        print(known_failures_literal(records, ".".join(meta["versions"]["triton"].split(".")[:2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

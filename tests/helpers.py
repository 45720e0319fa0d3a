"""Comparison helpers: one tolerance table, relative error of norms, poisoned outputs, and the
baseline-vs-AVX2 bitwise check of the native loops."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

# Relative error ‖y − ŷ‖ / ‖ŷ‖ against a float64 reference. fp32 allows TF32-free fp32
# accumulation over long reductions; the half types are bounded by their 8/11-bit mantissas.
RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 (absolute norm when expected is zero)."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: {tuple(a.shape)} vs {tuple(e.shape)}")
    if not torch.isfinite(a).all():
        raise AssertionError("result holds NaN/Inf (unwritten poisoned output?)")
    denom = e.norm()
    diff = (a - e).norm()
    return float(diff / denom) if denom > 0 else float(diff)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, scale: float = 1.0):
    """Assert ``actual`` matches the float64 ``expected`` within the tolerance of ``dtype``
    (default: ``actual.dtype``); ``scale`` widens it for long reductions, stated at the call."""
    dtype = dtype or actual.dtype
    err = rel_error(actual, expected)
    tol = RTOL[dtype] * scale
    assert err <= tol, f"relative error {err:.3e} exceeds {tol:.1e} for {dtype}"


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN in place (an output element a kernel forgets to write fails)."""
    return t.fill_(float("nan"))


def random_block_mask(R: int, C: int, density: float, device="cpu", generator=None) -> torch.Tensor:
    """A bool ``[R, C]`` mask with exactly round(density*R*C) active blocks (0 allowed)."""
    nnz = round(density * R * C)
    order = torch.randperm(R * C, generator=generator)[:nnz]
    mask = torch.zeros(R * C, dtype=torch.bool)
    mask[order] = True
    return mask.reshape(R, C).to(device)


# Tensor methods that copy device data to the host (a synchronisation on a GPU).
SYNC_METHODS = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__", "numpy")


def spy_host_syncs(monkeypatch) -> list[str]:
    """Record every call of a :data:`SYNC_METHODS` method from now until ``monkeypatch.undo()``;
    returns the (growing) list of the names called. Catches Python-level syncs on any device;
    syncs inside C++ ops need ``torch.cuda.set_sync_debug_mode`` on a GPU."""
    calls: list[str] = []
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


def assert_baseline_and_avx2_agree(results: str) -> None:
    """Run ``results`` (``"module:function"``, a function of a thread count returning tensors)
    in a subprocess with the portable loops (``SPARSEKERNELS_NATIVE_ISA=baseline``) and one with
    the default choice, and assert both give bitwise the same tensors (skips without AVX2)."""
    module, function = results.split(":")
    script = (
        "import hashlib, json, torch, sparsekernels._native\n"
        f"from {module} import {function}\n"
        "print(json.dumps([torch.ops.sparsekernels_native.pointwise_isa(),"
        f" [hashlib.sha256(t.detach().numpy().tobytes()).hexdigest() for t in {function}(1)]]))\n"
    )
    runs = {}
    for isa in ("baseline", None):
        env = {k: v for k, v in os.environ.items() if k != "SPARSEKERNELS_NATIVE_ISA"}
        if isa:
            env["SPARSEKERNELS_NATIVE_ISA"] = isa
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        used, hashes = json.loads(done.stdout.strip().splitlines()[-1])
        runs[used] = hashes
    assert "baseline" in runs
    if "avx2" not in runs:
        pytest.skip("this CPU has no AVX2: only the baseline loops exist")
    assert runs["baseline"] == runs["avx2"]

"""The native CPU backend: the C++ kernels of ``csrc/``, with the reference signatures.

Built as the optional extension ``sparsekernels._native`` (see ``setup.py``); its ops live
under ``torch.ops.sparsekernels_native``. :func:`available` says whether it was built and
loads. The public ops (:mod:`sparsekernels.ops`) call these functions from inside their
``torch.library`` custom ops when ``backend="native"``, or ``"auto"`` on CPU tensors.

The kernels compute in float32. float16 and bfloat16 operands are converted to float32 on
entry and the result is rounded back to their dtype (fp32 accumulation, at the cost of the
conversions); other dtypes raise ``TypeError`` (``backend="reference"`` computes in any float
dtype). Dense operands may have any strides; outputs are fresh tensors from
:func:`sparsekernels.ops._alloc.new_output`.
Any block size works; the kernels are tuned for 16, 32, 64 and 128. The C++ side checks
every index of the layout before use and raises ``ValueError`` for a corrupted one.

Zero-size operands (empty outputs, empty reductions, ``nnz = 0``) are answered here without
calling the C++ side. NaN/Inf: the C++ forward skips taps that only see zero padding, so a
non-finite weight there would not reach the result as it does in ``F.conv2d``; such calls
(detected by one finite check over the values, which are small) run the reference instead.
The weight gradient keeps ``F.conv2d``'s semantics in C++ (a non-finite ``dy`` where a tap sees
only padding makes that output row NaN), without a pass over ``dy`` here.

Determinism: each output element is reduced by one thread in a fixed order, so results are
bitwise identical for any ``torch.set_num_threads``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sparsekernels.conv_layout import pair
from sparsekernels.layout import BlockLayout
from sparsekernels.ops import checks
from sparsekernels.ops._alloc import new_output

__all__ = [
    "available",
    "isa",
    "native_info",
    "sdd",
    "dsd",
    "dds",
    "conv2d_forward",
    "conv2d_input_grad",
    "conv2d_weight_grad",
]

# Computed natively / converted to float32 and back.
_NATIVE_DTYPE = torch.float32
_CONVERTED_DTYPES = (torch.float16, torch.bfloat16)
_loaded: bool | None = None


def available() -> bool:
    """Whether the C++ extension was built and loads into this torch (never raises)."""
    global _loaded
    if _loaded is None:
        try:
            from sparsekernels import _native  # noqa: F401  (loading registers the ops)

            _loaded = hasattr(torch.ops.sparsekernels_native, "dsd")
        except (ImportError, OSError):
            # Not built, or built against another torch (undefined symbols at load time).
            _loaded = False
    return _loaded


def _ops():
    if not available():
        raise RuntimeError(
            "the native CPU backend is not available: the C++ extension was not built "
            "(reinstall with `pip install --no-build-isolation .` and a C++ compiler; see setup.py)"
        )
    return torch.ops.sparsekernels_native


def isa() -> str:
    """The instruction set the kernels run with: ``"avx512"`` (AVX-512 F/VL/DQ; ops on blocks
    narrower than 32 columns still run the AVX2 kernels), ``"avx2"`` (AVX2 + FMA) or
    ``"baseline"``. ``SPARSEKERNELS_NATIVE_ISA=avx2|baseline`` caps the default."""
    return _ops().isa()


def native_info() -> dict[str, object]:
    """How the native extension was built and what it runs with now.

    Keys: ``available`` (bool); when available also ``isa`` (``"avx512"``/``"avx2"``/``"baseline"``),
    ``parallel_backend`` (``"openmp"``, or ``"none"`` for a serial build), ``openmp_version``,
    ``openmp_runtime`` (the shared library our OpenMP calls bind to: torch's own),
    ``compiler``, ``threads`` (``torch.get_num_threads()`` as the kernels see it) and
    ``threads_used`` (distinct threads one parallel region actually ran on: a functional
    check, not a timing).
    """
    if not available():
        return {"available": False}
    ops = _ops()
    info: dict[str, object] = {"available": True}
    for line in ops.build_info().splitlines():
        key, _, value = line.partition("=")
        info[key] = value
    info["threads"] = int(ops.num_threads())
    info["threads_used"] = int(ops.parallel_probe())
    return info


def _check_native(**tensors: torch.Tensor) -> None:
    """Raise unless every operand is a CPU tensor of a dtype the native kernels run (the caller
    checked that they share one dtype)."""
    for name, t in tensors.items():
        if t.dtype != _NATIVE_DTYPE and t.dtype not in _CONVERTED_DTYPES:
            raise TypeError(
                f"backend='native' supports float32 (and float16/bfloat16, computed in float32); "
                f"{name} has dtype {t.dtype} (use backend='reference' for other dtypes)"
            )
        if t.device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors; {name} is on {t.device}")


def _layout_args(layout: BlockLayout) -> tuple[list[torch.Tensor], list[int]]:
    L = layout  # the order csrc/native.cpp reads (INDEX_FIELDS), without a getattr loop: this runs per kernel
    tensors = [
        L.row_offsets.contiguous(),
        L.col_indices.contiguous(),
        L.row_indices.contiguous(),
        L.col_offsets.contiguous(),
        L.row_indices_t.contiguous(),
        L.block_indices_t.contiguous(),
    ]
    return tensors, [*L.shape, *L.block_size]


def _in_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Operands of one (checked) native dtype, in float32 (the same tensors when they are)."""
    if tensors[0].dtype == _NATIVE_DTYPE:
        return tensors
    return tuple(t.to(_NATIVE_DTYPE) for t in tensors)


def _as(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return out if dtype == _NATIVE_DTYPE else out.to(dtype)


# Each public function below checks its arguments, then calls the ``_run_*`` function of the
# same op. The eager fast path (ops/eager.py) calls the ``_run_*`` functions directly: the public
# op validated the same operands on entry (``checks.check_*`` with the layout), and a backward
# receives gradients that autograd already matched to the forward output's shape, dtype and
# device, so a second Python check per kernel would only cost time (it was 10-20 % of a batch-1
# forward). The C++ side still checks every layout index. ``_run_*`` operands: CPU tensors of one
# dtype among float32/float16/bfloat16 with the op's shapes; the result has that dtype.

# ---------------------------------------------------------------------------- matmul


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Blocks of ``a @ b`` at the layout's active blocks.

    a: ``[M, K]``, b: ``[K, N]`` float32, any strides -> values ``[nnz, bm, bn]`` float32.
    """
    checks.check_sdd(a, b, layout, validate_layout=False)
    _check_native(a=a, b=b)
    return _run_sdd(a, b, layout)


def _run_sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    dtype = a.dtype
    a, b = _in_float32(a, b)
    empty = checks.zero_size_sdd(a, b, layout)
    if empty is not None:
        return _as(empty, dtype)
    out = new_output(layout.values_shape(), a.dtype, a.device)
    _ops().sdd(a, b, *_layout_args(layout), out)
    return _as(out, dtype)


def dsd(values: torch.Tensor, layout: BlockLayout, b: torch.Tensor, transpose_sparse: bool = False) -> torch.Tensor:
    """``S @ b`` (``Sᵀ @ b`` when ``transpose_sparse``).

    values: ``[nnz, bm, bn]``; b: ``[..., N, P]`` (``[..., M, P]`` transposed) float32
    -> ``[..., M, P]`` (``[..., N, P]`` transposed), contiguous.
    """
    checks.check_dsd(values, layout, b, transpose_sparse, validate_layout=False)
    _check_native(values=values, b=b)
    return _run_dsd(values, layout, b, transpose_sparse)


def _run_dsd(values: torch.Tensor, layout: BlockLayout, b: torch.Tensor, transpose_sparse: bool) -> torch.Tensor:
    dtype = values.dtype
    values, b = _in_float32(values, b)
    empty = checks.zero_size_dsd(values, layout, b, transpose_sparse)
    if empty is not None:
        return _as(empty, dtype)
    M, N = layout.shape
    rows = N if transpose_sparse else M
    lead, inner, P = b.shape[:-2], b.shape[-2], b.shape[-1]
    b3 = b.reshape(-1, inner, P)  # a view unless the leading dims cannot be merged
    out = new_output((b3.shape[0], rows, P), b.dtype, b.device)
    _ops().dsd(values, *_layout_args(layout), b3, bool(transpose_sparse), out)
    return _as(out.reshape(*lead, rows, P), dtype)


def dds(a: torch.Tensor, values: torch.Tensor, layout: BlockLayout, transpose_sparse: bool = False) -> torch.Tensor:
    """``a @ S`` (``a @ Sᵀ`` when ``transpose_sparse``).

    a: ``[..., P, M]`` (``[..., P, N]`` transposed) float32; values: ``[nnz, bm, bn]``
    -> ``[..., P, N]`` (``[..., P, M]`` transposed), contiguous.
    """
    checks.check_dds(a, values, layout, transpose_sparse, validate_layout=False)
    _check_native(a=a, values=values)
    return _run_dds(a, values, layout, transpose_sparse)


def _run_dds(a: torch.Tensor, values: torch.Tensor, layout: BlockLayout, transpose_sparse: bool) -> torch.Tensor:
    dtype = a.dtype
    a, values = _in_float32(a, values)
    empty = checks.zero_size_dds(a, values, layout, transpose_sparse)
    if empty is not None:
        return _as(empty, dtype)
    M, N = layout.shape
    cols = M if transpose_sparse else N
    lead = a.shape[:-1]
    a2 = a.reshape(-1, a.shape[-1])  # rows of every batch element stacked (a view when possible)
    out = new_output((a2.shape[0], cols), a.dtype, a.device)
    _ops().dds(a2, values, *_layout_args(layout), bool(transpose_sparse), out)
    return _as(out.reshape(*lead, cols), dtype)


# ---------------------------------------------------------------------------- convolution


def _padding_meets_nonfinite(t: torch.Tensor, padding: Sequence[int]) -> bool:
    """Whether zero padding exists and ``t`` holds a NaN/Inf that the C++ tap skipping would lose
    (``0 * NaN`` is NaN in a dense convolution). A CPU read: no device to wait for.

    One ``sum`` decides almost every call: a NaN or Inf element makes the sum non-finite, so a
    finite sum proves every element finite (one vectorised pass, 10-40x cheaper than
    ``isfinite(t).all()``, which was as costly as the batch-1 kernels). Only a non-finite sum
    (a NaN/Inf element, or finite values whose sum overflows) pays the exact elementwise test."""
    if not any(p > 0 for p in padding):
        return False
    if math.isfinite(float(t.sum())):
        return False
    return not bool(torch.isfinite(t).all())


def _reference():
    from sparsekernels.ops import reference

    return reference


def conv2d_forward(x, values, layout, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """Block-sparse convolution without bias (layout convention: :mod:`sparsekernels.conv_layout`).

    x: ``[N, C, H, W]`` float32 (channels-last memory avoids a copy); values ``[nnz, bk, bc]``
    -> y ``[N, K, Ho, Wo]`` float32 in channels-last memory.
    """
    ks, st, pd, dl = checks.check_conv(x, values, layout, kernel_size, stride, padding, dilation, False)
    _check_native(x=x, values=values)
    return _run_conv2d_forward(x, values, layout, ks, st, pd, dl)


def _run_conv2d_forward(x, values, layout, ks, st, pd, dl) -> torch.Tensor:
    """geometry: normalised pairs (``checks.check_conv``)."""
    dtype = x.dtype
    x, values = _in_float32(x, values)
    empty = checks.zero_size_conv_forward(x, layout, ks, st, pd, dl)
    if empty is not None:
        return _as(empty, dtype)
    if _padding_meets_nonfinite(values, pd):
        return _as(_reference().conv2d_forward(x, values, layout, ks, st, pd, dl), dtype)
    N, _, H, W = x.shape
    K = layout.shape[0] // (ks[0] * ks[1])
    Ho = (H + 2 * pd[0] - dl[0] * (ks[0] - 1) - 1) // st[0] + 1
    Wo = (W + 2 * pd[1] - dl[1] * (ks[1] - 1) - 1) // st[1] + 1
    y = new_output((N, K, Ho, Wo), x.dtype, x.device, memory_format=torch.channels_last)
    _ops().conv2d_forward(x, values, *_layout_args(layout), list(ks), list(st), list(pd), list(dl), y)
    return _as(y, dtype)


def conv2d_input_grad(dy, values, layout, input_shape, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """dy ``[N, K, Ho, Wo]`` float32 -> dx ``[N, C, H, W]`` (``input_shape``), channels-last memory."""
    checks.check_operands(layout, values, validate_layout=False, dy=dy)
    _check_native(dy=dy, values=values)
    ks, st, pd, dl = (
        pair(v, n)
        for v, n in ((kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"), (dilation, "dilation"))
    )
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be [N, C, H, W]; got {tuple(input_shape)}")
    return _run_conv2d_input_grad(dy, values, layout, tuple(int(s) for s in input_shape), ks, st, pd, dl)


def _run_conv2d_input_grad(dy, values, layout, input_shape, ks, st, pd, dl) -> torch.Tensor:
    """input_shape: a tuple of 4 ints; geometry: normalised pairs."""
    dtype = dy.dtype
    dy, values = _in_float32(dy, values)
    empty = checks.zero_size_conv_input_grad(dy, layout, input_shape)
    if empty is not None:
        return _as(empty, dtype)
    dx = new_output(input_shape, dy.dtype, dy.device, memory_format=torch.channels_last)
    _ops().conv2d_input_grad(
        dy, values, *_layout_args(layout), list(input_shape), list(ks), list(st), list(pd), list(dl), dx
    )
    return _as(dx, dtype)


def conv2d_weight_grad(x, dy, layout, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """x ``[N, C, H, W]``, dy ``[N, K, Ho, Wo]`` float32 -> dvalues ``[nnz, bk, bc]`` (active blocks only)."""
    ks, st, pd, dl = checks.check_conv(x, None, layout, kernel_size, stride, padding, dilation, False)
    checks.check_operands(layout, None, validate_layout=False, x=x, dy=dy)
    _check_native(x=x, dy=dy)
    return _run_conv2d_weight_grad(x, dy, layout, ks, st, pd, dl)


def _run_conv2d_weight_grad(x, dy, layout, ks, st, pd, dl) -> torch.Tensor:
    dtype = x.dtype
    x, dy = _in_float32(x, dy)
    empty = checks.zero_size_conv_weight_grad(x, dy, layout)
    if empty is not None:
        return _as(empty, dtype)
    out = new_output(layout.values_shape(), x.dtype, x.device)
    _ops().conv2d_weight_grad(x, dy, *_layout_args(layout), list(ks), list(st), list(pd), list(dl), out)
    return _as(out, dtype)

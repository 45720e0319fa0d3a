"""Forward block-sparse convolution: ``y = conv(x, W)`` as an implicit GEMM over channels-last data.

Each program owns a tile of ``BLOCK_P`` output pixels (flattened ``n, ho, wo``) and one output
channel block ``kb``. It walks the taps ``t = r*S + s``; for each tap it reads block-row
``t*(K/bk) + kb`` of the layout (``row_offsets`` / ``col_indices``) and, for every active input
channel block ``cb`` there, multiplies the shifted input tile ``x[pixels + (r, s), cb]``
(``[BLOCK_P, bc]``, zeros where the tap falls into the padding) by the value block read
transposed (``[bc, bk]``)::

    y[p, kb] = sum_t sum_{cb active in row t*(K/bk)+kb} x_t[p, cb] @ V[slot]ᵀ

No im2col buffer exists: the shifted tile is gathered straight from ``x`` with per-pixel
offsets computed once per tap.

Load balance: a program's work is the number of active blocks of output block ``kb`` summed
over the taps, which can differ a lot between ``kb`` (and between taps). ``kb`` varies
fastest in the grid, so heavy and light programs are interleaved across the whole launch and
the hardware scheduler evens them out; a program whose block-rows are all empty still runs
and stores zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.ops._alloc import new_output
from sparsekernels.ops._triton_utils import dot_precision, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# H100: 64–256-pixel tiles keep the fp32 accumulator [BLOCK_P, bk] in registers while the
# tensor cores see M = BLOCK_P, N = bk, K = bc; 3–4 stages hide the gather latency.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 256}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=2),
]
# The interpreter runs programs one after another in Python: one config, no tuning.
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=1)]
# Below this many output pixels tuning costs more than it can gain: run the first config.
_TUNE_MIN_PIXELS = 1024
_SMEM_BYTES = 200 * 1024  # H100 has 228 KiB per SM; leave room for the epilogue


def _prune(configs, named_args, **kwargs):
    """Drop configs whose accumulator or pipelined tiles do not fit; tiny problems keep one."""
    bk, bc = kwargs["BLOCK_K"], kwargs["BLOCK_C"]
    size = named_args["x"].element_size()

    def fits(c):
        p = c.kwargs["BLOCK_P"]
        registers = p * bk // (32 * c.num_warps)  # fp32 accumulator registers per thread
        return registers <= 128 and c.num_stages * (p * bc + bk * bc) * size <= _SMEM_BYTES

    kept = [c for c in configs if fits(c)] or configs[-1:]
    if named_args["N"] * named_args["Ho"] * named_args["Wo"] < _TUNE_MIN_PIXELS:
        return kept[:1]
    return kept


@triton.autotune(
    configs=_INTERPRETER_CONFIGS if interpreter_enabled() else _GPU_CONFIGS,
    key=["N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w", "BLOCK_K", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def conv2d_forward_kernel(
    x,  # [N, H, W, C] channels-last
    values,  # [nnz, BLOCK_K, BLOCK_C]
    row_offsets,  # int32 [R*S*K/BLOCK_K + 1]
    col_indices,  # int32 [nnz]
    y,  # [N, Ho, Wo, K] channels-last
    N,
    C,
    H,
    W,
    K,
    Ho,
    Wo,
    R,
    S,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    NK = K // BLOCK_K
    # Output-channel blocks vary fastest, so programs running together share the pixel tile
    # and its input rows stay in L2.
    i_pid = tl.program_id(0)
    i_k = i_pid % NK
    i_p = i_pid // NK

    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] flattened output pixels
    m_p = o_p < N * Ho * Wo
    i_n = o_p // (Ho * Wo)
    i_ho = (o_p // Wo) % Ho
    i_wo = o_p % Wo
    # Input coordinates of tap (0, 0); tap (r, s) adds (r, s).
    o_h0 = i_ho * stride_h - pad_h
    o_w0 = i_wo * stride_w - pad_w
    o_c = tl.arange(0, BLOCK_C)
    o_k = tl.arange(0, BLOCK_K)
    # Value block read transposed: element (c, k) of the [BLOCK_C, BLOCK_K] tile is V[slot, k, c].
    o_vt = o_c[:, None] + o_k[None, :] * BLOCK_C

    b_acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
    for i_t in range(0, R * S):
        i_row = i_t * NK + i_k
        # int64 slots: slot * bk * bc exceeds 2**31 for large layouts.
        j_start = tl.load(row_offsets + i_row).to(tl.int64)
        j_end = tl.load(row_offsets + i_row + 1).to(tl.int64)
        o_h = o_h0 + i_t // S
        o_w = o_w0 + i_t % S
        m_x = m_p & (o_h >= 0) & (o_h < H) & (o_w >= 0) & (o_w < W)
        # int64: pixel index * C exceeds 2**31 for large batches.
        p_x = x + (((i_n * H + o_h) * W + o_w).to(tl.int64) * C)[:, None] + o_c[None, :]
        for j in range(j_start, j_end):
            i_c = tl.load(col_indices + j)
            b_x = tl.load(p_x + i_c * BLOCK_C, mask=m_x[:, None], other=0.0)  # [BLOCK_P, BLOCK_C]
            b_vt = tl.load(values + j * (BLOCK_K * BLOCK_C) + o_vt)  # [BLOCK_C, BLOCK_K]
            if UPCAST:
                b_x = b_x.to(tl.float32)
                b_vt = b_vt.to(tl.float32)
            b_acc = tl.dot(b_x, b_vt, b_acc, input_precision=DOT_PRECISION)

    p_y = y + (o_p.to(tl.int64) * K)[:, None] + i_k * BLOCK_K + o_k[None, :]
    tl.store(p_y, b_acc.to(y.dtype.element_ty), mask=m_p[:, None])


def launch_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    row_offsets: torch.Tensor,
    col_indices: torch.Tensor,
    out_channels: int,
    out_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    allow_tf32: bool,
) -> torch.Tensor:
    """Run the forward kernel.

    x: ``[N, C, H, W]`` channels-last contiguous (fp32|fp16|bf16); values ``[nnz, bk, bc]``
    contiguous, same dtype; row_offsets/col_indices: the layout's int32 CSR fields
    -> y ``[N, K, Ho, Wo]`` channels-last, dtype of x.
    """
    N, C, H, W = x.shape
    K, (Ho, Wo), (R, S) = out_channels, out_size, kernel_size
    bk, bc = values.shape[1:]
    y = new_output((N, K, Ho, Wo), x.dtype, x.device, memory_format=torch.channels_last)
    if y.numel() == 0:
        return y

    def grid(meta):
        return (triton.cdiv(N * Ho * Wo, meta["BLOCK_P"]) * (K // bk),)

    conv2d_forward_kernel[grid](
        x, values, row_offsets, col_indices, y,
        N, C, H, W, K, Ho, Wo, R, S, stride[0], stride[1], padding[0], padding[1],
        BLOCK_K=bk,
        BLOCK_C=bc,
        DOT_PRECISION=dot_precision(x.dtype, allow_tf32),
        UPCAST=upcast_dot_operands(x.dtype),
    )  # fmt: skip
    return y

"""Forward block-sparse convolution: ``y = conv(x, W)`` as an implicit GEMM over channels-last data.

Each program owns a tile of ``BLOCK_P`` output pixels (flattened ``n, ho, wo``) and one output
channel block ``kb``, and multiplies the shifted input tile ``x[pixels + (r, s), cb]``
(``[BLOCK_P, bc]``, zeros where the tap falls into the padding) by the value block read
transposed (``[bc, bk]``) for every active block ``(t, kb, cb)`` of its channel block::

    y[p, kb] = sum_t sum_{cb active in row t*(K/bk)+kb} x_t[p, cb] @ V[slot]ᵀ

No im2col buffer exists: the shifted tile is gathered straight from ``x``.

One flattened loop. The active blocks of ``kb`` over all taps form one *entry list*, built on
the device from the layout (:func:`forward_entries`: a stable sort of the slots by ``kb``,
a handful of small tensor ops per call, no host sync; not cached, because a layer's
``set_layout`` rewrites its layout tensors in place): entry ``e`` gives the tap, the input channel block and the
value slot. The kernel runs one loop over its entries with the next entry's indices loaded one
iteration ahead, so the tile loads depend on loop-carried registers only and the software
pipeliner keeps ``num_stages`` buffers (``num_stages - 1`` blocks in flight) across tap
boundaries. The previous per-tap nested loop restarted the pipeline for each of the 9 taps and
kept at most 2 buffers with a full wait per block.

MMA shape: M = ``BLOCK_P`` (>= 64: warpgroup MMA at every block size), N = ``bk``, K = ``bc``.
A larger N (several output channel blocks per program) would share the input tile only between
channel blocks with the same active ``(t, cb)``; in a sparse layout the rest would be zero
blocks multiplied, so N stays the block.

Load balance: a program's work is the number of active blocks of output block ``kb`` summed
over the taps, which can differ a lot between ``kb``. ``kb`` varies fastest in the grid, so
heavy and light programs are interleaved across the whole launch and the hardware scheduler
evens them out; a program with no entries still runs and stores zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import new_output
from sparsekernels.ops._triton_utils import dot_precision, fallback_config, fma_dot_k, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# 64-256-pixel tiles: M = BLOCK_P per warpgroup >= 64; accumulator [BLOCK_P, bk] fp32 in
# registers; 3-4 stages keep 2-3 gathered tiles in flight (2 stages would keep one).
_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 256}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=3),
    # 8 warps on 64 rows split the channel block (N) between the warpgroups: the fp32 FMA
    # path's choice at block 128 (32 accumulator registers per thread).
    triton.Config({"BLOCK_P": 64}, num_warps=8, num_stages=3),
]
# The interpreter runs programs one after another in Python: one config, no tuning.
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=1)]
# Below this many output pixels tuning costs more than it can gain: run the first config.
_TUNE_MIN_PIXELS = 1024
_SMEM_BYTES = 200 * 1024  # H100 has 228 KiB per SM; leave room for the epilogue
# fp32 accumulator registers per thread a config may use: tensor-core dots, FMA dots (fp32
# without TF32: operand fragments also sit in registers).
_ACC_REGS, _FMA_ACC_REGS = 128, 32


def _prune(configs, named_args, **kwargs):
    """Drop configs whose accumulator or pipelined tiles do not fit; tiny problems keep one."""
    bk, bc = kwargs["BLOCK_K"], kwargs["BLOCK_C"]
    size = named_args["x"].element_size()
    fma = size == 4 and kwargs.get("DOT_PRECISION", "ieee") != "tf32"
    limit = _FMA_ACC_REGS if fma else _ACC_REGS

    def registers(c):
        return c.kwargs["BLOCK_P"] * bk // (32 * c.num_warps)  # fp32 accumulator registers per thread

    def smem(c):
        return c.num_stages * (c.kwargs["BLOCK_P"] * bc + bk * bc) * size

    def fits(c):
        # 16-bit dots over blocks of 16 channels: 4 warps only (sm_90 compiles, measured: with
        # 8 warps the main loop kept a single load in flight).
        if size == 2 and bk <= 16 and c.num_warps > 4:
            return False
        return registers(c) <= limit and smem(c) <= _SMEM_BYTES

    # fp32 at block 128 fits no listed config (sm_90: 288 KB of shared memory at 3 stages).
    kept = [c for c in configs if fits(c)] or [fallback_config(configs, registers, smem, _SMEM_BYTES)]
    if named_args["N"] * named_args["Ho"] * named_args["Wo"] < _TUNE_MIN_PIXELS:
        return kept[:1]
    return kept


def forward_entries(layout: BlockLayout, kernel_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The forward pass's entry list: ``(kb_offsets, e_tap, e_cb, e_slot)``, int32.

    Entries of output channel block ``kb`` are ``kb_offsets[kb]:kb_offsets[kb+1]``, in tap then
    input-channel order; each names the tap ``t = r*S + s``, the input channel block and the
    value slot. Built on the layout's device with tensor operations only (no host sync).
    """
    (rows_total, _), (bk, _) = layout.shape, layout.block_size
    taps = kernel_size[0] * kernel_size[1]
    nk = rows_total // (taps * bk)
    row = layout.row_indices.long()
    # Slots are row-major (tap, kb, cb): a stable sort by kb keeps (tap, cb) order within kb.
    order = torch.argsort(row % nk, stable=True)
    counts = (layout.row_offsets[1:] - layout.row_offsets[:-1]).view(taps, nk).sum(0)
    kb_offsets = torch.zeros(nk + 1, dtype=torch.int32, device=row.device)
    kb_offsets[1:] = torch.cumsum(counts, 0)
    return kb_offsets, (row[order] // nk).to(torch.int32), layout.col_indices[order], order.to(torch.int32)


@triton.autotune(
    configs=_INTERPRETER_CONFIGS if interpreter_enabled() else _GPU_CONFIGS,
    key=["N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w", "BLOCK_K", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def conv2d_forward_kernel(
    x,  # [N, H, W, C] channels-last
    values,  # [nnz, BLOCK_K, BLOCK_C]
    kb_offsets,  # int32 [K/BLOCK_K + 1]: entry range of each output channel block
    e_tap,  # int32 [nnz]: tap of each entry
    e_cb,  # int32 [nnz]: input channel block of each entry
    e_slot,  # int32 [nnz]: value slot of each entry
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
    DOT_K: tl.constexpr,  # K width of one tl.dot: BLOCK_C, or 16 on the fp32 FMA path
):
    # R is an autotuning key only.
    NK = K // BLOCK_K
    # Output-channel blocks vary fastest, so programs running together share the pixel tile
    # and its input rows stay in L2.
    i_pid = tl.program_id(0)
    i_k = i_pid % NK
    i_p = i_pid // NK

    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] flattened output pixels
    m_p = o_p < N * Ho * Wo
    i_n = o_p // (Ho * Wo)
    # Input coordinates of tap (0, 0); tap (r, s) adds (r, s).
    o_h0 = ((o_p // Wo) % Ho) * stride_h - pad_h
    o_w0 = (o_p % Wo) * stride_w - pad_w
    o_c = tl.arange(0, DOT_K)
    o_k = tl.arange(0, BLOCK_K)
    # Value block read transposed: element (c, k) of the [DOT_K, BLOCK_K] tile is V[slot, k, c].
    o_vt = o_c[:, None] + o_k[None, :] * BLOCK_C

    e_lo = tl.load(kb_offsets + i_k)
    e_hi = tl.load(kb_offsets + i_k + 1)
    # The next entry's indices are loaded one iteration ahead (loop-carried): see the module
    # docstring.
    m_next = e_lo < e_hi
    i_t = tl.load(e_tap + e_lo, mask=m_next, other=0)
    i_c = tl.load(e_cb + e_lo, mask=m_next, other=0)
    i_slot = tl.load(e_slot + e_lo, mask=m_next, other=0)
    b_acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
    for i_e in range(e_lo, e_hi):
        o_h = o_h0 + i_t // S
        o_w = o_w0 + i_t % S
        m_x = m_p & (o_h >= 0) & (o_h < H) & (o_w >= 0) & (o_w < W)
        # int64: pixel index * C exceeds 2**31 for large batches, slot * bk * bc for large layouts.
        o_x = ((i_n * H + o_h) * W + o_w).to(tl.int64) * C + i_c.to(tl.int64) * BLOCK_C
        p_x = x + o_x[:, None] + o_c[None, :]
        p_vt = values + i_slot.to(tl.int64) * (BLOCK_K * BLOCK_C) + o_vt
        for i_cc in tl.static_range(0, BLOCK_C, DOT_K):
            b_x = tl.load(p_x + i_cc, mask=m_x[:, None], other=0.0)  # [BLOCK_P, DOT_K]
            b_vt = tl.load(p_vt + i_cc)  # [DOT_K, BLOCK_K]
            if UPCAST:
                b_x = b_x.to(tl.float32)
                b_vt = b_vt.to(tl.float32)
            b_acc = tl.dot(b_x, b_vt, b_acc, input_precision=DOT_PRECISION)
        m_next = i_e + 1 < e_hi
        i_t = tl.load(e_tap + i_e + 1, mask=m_next, other=0)
        i_c = tl.load(e_cb + i_e + 1, mask=m_next, other=0)
        i_slot = tl.load(e_slot + i_e + 1, mask=m_next, other=0)

    p_y = y + (o_p.to(tl.int64) * K)[:, None] + i_k * BLOCK_K + o_k[None, :]
    tl.store(p_y, b_acc.to(y.dtype.element_ty), mask=m_p[:, None])


def launch_forward(
    x: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    out_channels: int,
    out_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    allow_tf32: bool,
) -> torch.Tensor:
    """Run the forward kernel.

    x: ``[N, C, H, W]`` channels-last contiguous (fp32|fp16|bf16); values ``[nnz, bk, bc]``
    contiguous, same dtype; layout: the weight's ``[R*S*K, C]`` layout -> y ``[N, K, Ho, Wo]``
    channels-last, dtype of x.
    """
    N, C, H, W = x.shape
    K, (Ho, Wo), (R, S) = out_channels, out_size, kernel_size
    bk, bc = values.shape[1:]
    y = new_output((N, K, Ho, Wo), x.dtype, x.device, memory_format=torch.channels_last)
    if y.numel() == 0:
        return y
    kb_offsets, e_tap, e_cb, e_slot = forward_entries(layout, kernel_size)

    def grid(meta):
        return (triton.cdiv(N * Ho * Wo, meta["BLOCK_P"]) * (K // bk),)

    conv2d_forward_kernel[grid](
        x, values, kb_offsets, e_tap, e_cb, e_slot, y,
        N, C, H, W, K, Ho, Wo, R, S, stride[0], stride[1], padding[0], padding[1],
        BLOCK_K=bk,
        BLOCK_C=bc,
        DOT_PRECISION=dot_precision(x.dtype, allow_tf32),
        UPCAST=upcast_dot_operands(x.dtype),
        DOT_K=fma_dot_k(x.dtype, dot_precision(x.dtype, allow_tf32), bc),
    )  # fmt: skip
    return y

"""Input gradient of the block-sparse convolution: ``dx = conv_transpose(dy, W)``, implicit GEMM.

For input channel block ``cb`` the contributing blocks are the entries of block-column ``cb``
(``col_offsets`` / ``row_indices_t`` / ``block_indices_t``): entry ``j`` sits in block-row
``t*(K/bk) + kb`` and holds the value slot ``block_indices_t[j]``. Then::

    dx[n, h, w, cb] = sum_j dy[n, (h + pad_h - r) / st_h, (w + pad_w - s) / st_w, kb] @ V[slot]

over the entries whose divisions are exact and land inside ``dy``.

Stride > 1 (sub-pixel decomposition): the input pixels are split into ``st_h * st_w`` parity
classes ``(h mod st_h, w mod st_w)``. Within one class the exactness of both divisions is the
same for every pixel, and each tap ``(r, s)`` is exact for exactly one class
(``h ≡ r - pad_h mod st_h``, likewise for ``w``). So the entries are sorted by call into
per-(class, cb) segments (:func:`input_grad_entries`: a few small tensor ops on the device, no
host sync; not cached, because a layer's ``set_layout`` rewrites its layout tensors in place),
and a program on a tile of one class walks only its class's entries: no test per entry,
no masked-out 3 of 4 pixels (3x3, stride 2). Classes are padded to
``ceil(H/st_h) x ceil(W/st_w)`` so every class has the same tile count; the padding rows are
masked. For stride 1 there is one class and the segments are the layout's own columns.

One loop per program over its segment, with the next entry's indices loaded one iteration
ahead (loop-carried), so the tile loads depend on registers only and the software pipeliner
keeps ``num_stages`` buffers (``num_stages - 1`` blocks in flight). MMA shape: M = ``BLOCK_P``
(>= 64: warpgroup MMA at every block size), N = ``bc``, K = ``bk``; a larger N would multiply
zero blocks of the other channel blocks' sparsity (see ``forward.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import new_output
from sparsekernels.ops._triton_utils import dot_precision, fallback_config, fma_dot_k, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# Same shape of problem as the forward pass (M = pixels, N = bc, K = bk per block); 3-4 stages
# keep 2-3 gathered tiles in flight.
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
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=1)]
_TUNE_MIN_PIXELS = 1024
_SMEM_BYTES = 200 * 1024
# fp32 accumulator registers per thread: tensor-core dots, FMA dots (fp32 without TF32).
_ACC_REGS, _FMA_ACC_REGS = 128, 32
# The input gradient's tensor-core limit: at 128 accumulator registers per thread (block 128,
# 128 pixels, 4 warps) its sm_90 compile spilled (124 B at stride 2, 4 B on 4x4 images).
_DX_ACC_REGS = 96


def _prune(configs, named_args, **kwargs):
    """Drop configs whose accumulator or pipelined tiles do not fit; tiny problems keep one."""
    bk, bc = kwargs["BLOCK_K"], kwargs["BLOCK_C"]
    size = named_args["dy"].element_size()
    fma = size == 4 and kwargs.get("DOT_PRECISION", "ieee") != "tf32"
    limit = _FMA_ACC_REGS if fma else _DX_ACC_REGS

    def registers(c):
        return c.kwargs["BLOCK_P"] * bc // (32 * c.num_warps)  # fp32 accumulator registers per thread

    def smem(c):
        return c.num_stages * (c.kwargs["BLOCK_P"] * bk + bk * bc) * size

    def fits(c):
        # 16-bit dots over blocks of 16 channels: 4 warps only (sm_90 compiles, measured: with
        # 8 warps the main loop kept a single load in flight).
        if size == 2 and bc <= 16 and c.num_warps > 4:
            return False
        # FMA path: 256-pixel tiles spilled (sm_90 compile, 28 B at block 32) even at 32
        # accumulator registers per thread.
        if fma and c.kwargs["BLOCK_P"] > 128:
            return False
        return registers(c) <= limit and smem(c) <= _SMEM_BYTES

    # fp32 at block 128 fits no listed config (sm_90: 288 KB of shared memory at 3 stages).
    kept = [c for c in configs if fits(c)] or [fallback_config(configs, registers, smem, _SMEM_BYTES)]
    if named_args["N"] * named_args["H"] * named_args["W"] < _TUNE_MIN_PIXELS:
        return kept[:1]
    return kept


def input_grad_entries(
    layout: BlockLayout, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(seg_offsets, e_row, e_slot)``: entries of segment ``cls * (C/bc) + cb`` are
    ``seg_offsets[seg]:seg_offsets[seg+1]``, each with its block-row ``t*(K/bk) + kb`` and value
    slot (int32). Stride 1: the layout's column traversal itself."""
    if stride == (1, 1):
        return layout.col_offsets, layout.row_indices_t, layout.block_indices_t
    (rows_total, C), (bk, bc) = layout.shape, layout.block_size
    (R, S), (sh, sw), (ph, pw) = kernel_size, stride, padding
    nk, nc = rows_total // (R * S * bk), C // bc
    row = layout.row_indices_t.long()
    tap = row // nk
    cls = torch.remainder(tap // S - ph, sh) * sw + torch.remainder(tap % S - pw, sw)
    seg = cls * nc + layout.col_indices[layout.block_indices_t.long()].long()
    order = torch.argsort(seg, stable=True)
    bounds = torch.arange(sh * sw * nc + 1, device=row.device)
    seg_offsets = torch.searchsorted(seg[order], bounds).to(torch.int32)
    return seg_offsets, layout.row_indices_t[order], layout.block_indices_t[order]


@triton.autotune(
    configs=_INTERPRETER_CONFIGS if interpreter_enabled() else _GPU_CONFIGS,
    key=["N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w", "BLOCK_K", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def conv2d_input_grad_kernel(
    dy,  # [N, Ho, Wo, K] channels-last
    values,  # [nnz, BLOCK_K, BLOCK_C]
    seg_offsets,  # int32 [stride_h*stride_w*C/BLOCK_C + 1]: entry range of each (class, cb)
    e_row,  # int32 [nnz]: block-row t*(K/BLOCK_K) + kb of each entry
    e_slot,  # int32 [nnz]: value slot of each entry
    dx,  # [N, H, W, C] channels-last
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
    Hq,  # ceil(H / stride_h): rows of a parity class
    Wq,  # ceil(W / stride_w)
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_K: tl.constexpr,  # K width of one tl.dot: BLOCK_K, or 16 on the fp32 FMA path
):
    NC = C // BLOCK_C
    NK = K // BLOCK_K
    # Input-channel blocks vary fastest: programs running together read the same dy rows.
    i_pid = tl.program_id(0)
    i_c = i_pid % NC
    i_q = i_pid // NC
    n_tiles = tl.cdiv(N * Hq * Wq, BLOCK_P)  # tiles per parity class
    i_cls = i_q // n_tiles
    i_ph = i_cls // stride_w  # this program's pixels have h % stride_h == i_ph
    i_pw = i_cls % stride_w

    o_q = (i_q % n_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] pixels of the class grid
    i_n = o_q // (Hq * Wq)
    i_i = (o_q // Wq) % Hq
    i_j = o_q % Wq
    o_h = i_ph + i_i * stride_h
    o_w = i_pw + i_j * stride_w
    m_q = (o_q < N * Hq * Wq) & (o_h < H) & (o_w < W)
    o_k = tl.arange(0, DOT_K)
    o_c = tl.arange(0, BLOCK_C)
    o_v = o_k[:, None] * BLOCK_C + o_c[None, :]

    i_seg = i_cls * NC + i_c
    e_lo = tl.load(seg_offsets + i_seg)
    e_hi = tl.load(seg_offsets + i_seg + 1)
    m_next = e_lo < e_hi
    i_row = tl.load(e_row + e_lo, mask=m_next, other=0)
    i_slot = tl.load(e_slot + e_lo, mask=m_next, other=0)
    b_acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for i_e in range(e_lo, e_hi):
        i_t = i_row // NK
        i_k = i_row % NK
        # ho = (h + pad_h - r) / stride_h = i_i + (i_ph + pad_h - r) / stride_h, exact for every
        # entry of this class's segment; stride*R keeps the numerator non-negative so // needs
        # no sign handling.
        d_h = i_ph + pad_h - i_t // S + stride_h * R
        d_w = i_pw + pad_w - i_t % S + stride_w * S
        o_ho = i_i + (d_h // stride_h - R)
        o_wo = i_j + (d_w // stride_w - S)
        m_dy = m_q & (o_ho >= 0) & (o_ho < Ho) & (o_wo >= 0) & (o_wo < Wo)
        # int64: pixel index * K exceeds 2**31 for large batches, slot * bk * bc for large layouts.
        o_dy = ((i_n * Ho + o_ho) * Wo + o_wo).to(tl.int64) * K + i_k * BLOCK_K
        p_dy = dy + o_dy[:, None] + o_k[None, :]
        p_v = values + i_slot.to(tl.int64) * (BLOCK_K * BLOCK_C) + o_v
        for i_kk in tl.static_range(0, BLOCK_K, DOT_K):
            b_dy = tl.load(p_dy + i_kk, mask=m_dy[:, None], other=0.0)  # [BLOCK_P, DOT_K]
            b_v = tl.load(p_v + i_kk * BLOCK_C)  # [DOT_K, BLOCK_C]
            if UPCAST:
                b_dy = b_dy.to(tl.float32)
                b_v = b_v.to(tl.float32)
            b_acc = tl.dot(b_dy, b_v, b_acc, input_precision=DOT_PRECISION)
        m_next = i_e + 1 < e_hi
        i_row = tl.load(e_row + i_e + 1, mask=m_next, other=0)
        i_slot = tl.load(e_slot + i_e + 1, mask=m_next, other=0)

    o_dx = ((i_n * H + o_h) * W + o_w).to(tl.int64) * C + i_c * BLOCK_C
    tl.store(dx + o_dx[:, None] + o_c[None, :], b_acc.to(dx.dtype.element_ty), mask=m_q[:, None])


def launch_input_grad(
    dy: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    allow_tf32: bool,
) -> torch.Tensor:
    """Run the input-gradient kernel.

    dy: ``[N, K, Ho, Wo]`` channels-last contiguous (fp32|fp16|bf16); values ``[nnz, bk, bc]``
    contiguous, same dtype; layout: the weight's ``[R*S*K, C]`` layout -> dx
    ``input_shape = [N, C, H, W]`` channels-last, dtype of dy.
    """
    N, K, Ho, Wo = dy.shape
    _, C, H, W = input_shape
    (R, S), (sh, sw) = kernel_size, stride
    bk, bc = values.shape[1:]
    Hq, Wq = triton.cdiv(H, sh), triton.cdiv(W, sw)
    dx = new_output((N, C, H, W), dy.dtype, dy.device, memory_format=torch.channels_last)
    if dx.numel() == 0:
        return dx
    seg_offsets, e_row, e_slot = input_grad_entries(layout, kernel_size, stride, padding)

    def grid(meta):
        return (sh * sw * triton.cdiv(N * Hq * Wq, meta["BLOCK_P"]) * (C // bc),)

    conv2d_input_grad_kernel[grid](
        dy, values, seg_offsets, e_row, e_slot, dx,
        N, C, H, W, K, Ho, Wo, R, S, sh, sw, padding[0], padding[1], Hq, Wq,
        BLOCK_K=bk,
        BLOCK_C=bc,
        DOT_PRECISION=dot_precision(dy.dtype, allow_tf32),
        UPCAST=upcast_dot_operands(dy.dtype),
        DOT_K=fma_dot_k(dy.dtype, dot_precision(dy.dtype, allow_tf32), bk),
    )  # fmt: skip
    return dx

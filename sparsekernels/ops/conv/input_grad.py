"""Input gradient of the block-sparse convolution: ``dx = conv_transpose(dy, W)``, implicit GEMM.

For input channel block ``cb`` the contributing blocks are the entries of block-column ``cb``
(``col_offsets`` / ``row_indices_t`` / ``block_indices_t``): entry ``j`` sits in block-row
``t*(K/bk) + kb`` and holds the value slot ``block_indices_t[j]``. Then::

    dx[n, h, w, cb] = sum_j dy[n, (h + pad_h - r) / st_h, (w + pad_w - s) / st_w, kb] @ V[slot]

over the entries whose divisions are exact and land inside ``dy``.

Stride > 1 (sub-pixel decomposition): the input pixels are split into ``st_h * st_w`` parity
classes ``(h mod st_h, w mod st_w)``. Within one class the exactness of both divisions is the
same for every pixel, so a program works on a tile of a single class and skips whole taps
whose parity does not match (a scalar test per column entry), instead of masking 3 of 4
pixels of every tile (3x3, stride 2). Classes are padded to ``ceil(H/st_h) x ceil(W/st_w)``
so every class has the same tile count; the padding rows are masked. For stride 1 there is
one class and every entry is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.ops._alloc import new_output
from sparsekernels.ops._triton_utils import dot_precision, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# Same shape of problem as the forward pass (M = pixels, N = bc, K = bk per block).
_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 256}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=2),
]
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=1)]
_TUNE_MIN_PIXELS = 1024
_SMEM_BYTES = 200 * 1024


def _prune(configs, named_args, **kwargs):
    """Drop configs whose accumulator or pipelined tiles do not fit; tiny problems keep one."""
    bk, bc = kwargs["BLOCK_K"], kwargs["BLOCK_C"]
    size = named_args["dy"].element_size()

    def fits(c):
        p = c.kwargs["BLOCK_P"]
        registers = p * bc // (32 * c.num_warps)  # fp32 accumulator registers per thread
        return registers <= 128 and c.num_stages * (p * bk + bk * bc) * size <= _SMEM_BYTES

    kept = [c for c in configs if fits(c)] or configs[-1:]
    if named_args["N"] * named_args["H"] * named_args["W"] < _TUNE_MIN_PIXELS:
        return kept[:1]
    return kept


@triton.autotune(
    configs=_INTERPRETER_CONFIGS if interpreter_enabled() else _GPU_CONFIGS,
    key=["N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w", "BLOCK_K", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def conv2d_input_grad_kernel(
    dy,  # [N, Ho, Wo, K] channels-last
    values,  # [nnz, BLOCK_K, BLOCK_C]
    col_offsets,  # int32 [C/BLOCK_C + 1]
    row_indices_t,  # int32 [nnz]
    block_indices_t,  # int32 [nnz]
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
    o_k = tl.arange(0, BLOCK_K)
    o_c = tl.arange(0, BLOCK_C)
    o_v = o_k[:, None] * BLOCK_C + o_c[None, :]

    b_acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for j in range(tl.load(col_offsets + i_c), tl.load(col_offsets + i_c + 1)):
        i_row = tl.load(row_indices_t + j)
        i_t = i_row // NK
        i_k = i_row % NK
        # ho = (h + pad_h - r) / stride_h = i_i + (i_ph + pad_h - r) / stride_h; stride*R keeps
        # the numerator non-negative so % and // need no sign handling.
        d_h = i_ph + pad_h - i_t // S + stride_h * R
        d_w = i_pw + pad_w - i_t % S + stride_w * S
        if (d_h % stride_h == 0) & (d_w % stride_w == 0):
            o_ho = i_i + (d_h // stride_h - R)
            o_wo = i_j + (d_w // stride_w - S)
            m_dy = m_q & (o_ho >= 0) & (o_ho < Ho) & (o_wo >= 0) & (o_wo < Wo)
            # int64: pixel index * K exceeds 2**31 for large batches.
            o_dy = ((i_n * Ho + o_ho) * Wo + o_wo).to(tl.int64) * K + i_k * BLOCK_K
            b_dy = tl.load(dy + o_dy[:, None] + o_k[None, :], mask=m_dy[:, None], other=0.0)  # [BLOCK_P, BLOCK_K]
            i_slot = tl.load(block_indices_t + j).to(tl.int64)
            b_v = tl.load(values + i_slot * (BLOCK_K * BLOCK_C) + o_v)  # [BLOCK_K, BLOCK_C]
            if UPCAST:
                b_dy = b_dy.to(tl.float32)
                b_v = b_v.to(tl.float32)
            b_acc = tl.dot(b_dy, b_v, b_acc, input_precision=DOT_PRECISION)

    o_dx = ((i_n * H + o_h) * W + o_w).to(tl.int64) * C + i_c * BLOCK_C
    tl.store(dx + o_dx[:, None] + o_c[None, :], b_acc.to(dx.dtype.element_ty), mask=m_q[:, None])


def launch_input_grad(
    dy: torch.Tensor,
    values: torch.Tensor,
    col_offsets: torch.Tensor,
    row_indices_t: torch.Tensor,
    block_indices_t: torch.Tensor,
    input_shape: tuple[int, int, int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    allow_tf32: bool,
) -> torch.Tensor:
    """Run the input-gradient kernel.

    dy: ``[N, K, Ho, Wo]`` channels-last contiguous (fp32|fp16|bf16); values ``[nnz, bk, bc]``
    contiguous, same dtype; the layout's int32 CSC fields -> dx ``input_shape = [N, C, H, W]``
    channels-last, dtype of dy.
    """
    N, K, Ho, Wo = dy.shape
    _, C, H, W = input_shape
    (R, S), (sh, sw) = kernel_size, stride
    bk, bc = values.shape[1:]
    Hq, Wq = triton.cdiv(H, sh), triton.cdiv(W, sw)
    dx = new_output((N, C, H, W), dy.dtype, dy.device, memory_format=torch.channels_last)
    if dx.numel() == 0:
        return dx

    def grid(meta):
        return (sh * sw * triton.cdiv(N * Hq * Wq, meta["BLOCK_P"]) * (C // bc),)

    conv2d_input_grad_kernel[grid](
        dy, values, col_offsets, row_indices_t, block_indices_t, dx,
        N, C, H, W, K, Ho, Wo, R, S, sh, sw, padding[0], padding[1], Hq, Wq,
        BLOCK_K=bk,
        BLOCK_C=bc,
        DOT_PRECISION=dot_precision(dy.dtype, allow_tf32),
        UPCAST=upcast_dot_operands(dy.dtype),
    )  # fmt: skip
    return dx

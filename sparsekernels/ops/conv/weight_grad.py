"""Weight gradient of the block-sparse convolution, computed at the active blocks only.

For slot ``j`` in block-row ``t*(K/bk) + kb`` and block-column ``cb`` (tap ``t = r*S + s``)::

    dV[j] = sum_p dy[p, kb]ᵀ @ x_t[p, cb]        ([bk, P] @ [P, bc] -> [bk, bc])

where ``p`` runs over all ``N*Ho*Wo`` output pixels and ``x_t`` is the input gathered at the
pixels' tap-``t`` positions (zeros in the padding).

Tile. A program owns ``G = max(1, TILE_M // bc)`` consecutive slots of one block-row (same tap
and output channel block, slots of a row are consecutive) and computes them as one transposed
product over its pixels::

    [dV[j0]ᵀ; ...; dV[j0+G-1]ᵀ]  =  x_t[:, cbs]ᵀ  @  dy[:, kb]       ([G*bc, P] @ [P, bk])

so the MMA's M is ``G*bc`` (>= 64 at every block size: warpgroup MMA needs M >= 64 per
warpgroup; one block per program put ``bk`` = 16/32 there and lowered to HMMA) and the
``dy[:, kb]`` tile is read once for G blocks. The gathered channel offsets are fixed for the
program; the pixel loop is a plain stream the software pipeliner multi-buffers. N is ``bk``: a
larger N would need several output channel blocks sharing one column set, which a sparse layout
does not give without computing inactive blocks.

Split-K over pixels: a layer can have few active blocks (tens) but a reduction over a quarter
of a million pixels, so one program per group would leave most of a GPU idle. The grid is
``(groups, split)``; program ``(g, i)`` reduces the ``i``-th chunk of pixels and writes its fp32
partials ``[bk, bc]`` into a workspace ``[split, nnz, bk, bc]``, which one ``sum`` then reduces
and casts. Partials are written, not atomically added, so the result is deterministic and the
autotuner can rerun the kernel freely. ``split`` comes from ``nnz`` and the pixel count only
(Python ints, never the device); with ``split == 1`` the kernel writes the output directly.
Groups: ``ceil((C/bc)/G)`` per block-row, group index slowest; a group past its row's block
count returns at once (a static grid from the shapes: no work list, no host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.ops._alloc import new_output
from sparsekernels.ops._triton_utils import dot_precision, fallback_config, fma_dot_k, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# TILE_M: rows of the program tile (G = TILE_M // bc blocks); BLOCK_P: pixels per step (the
# reduction dimension). 3-4 stages keep 2-3 pixel tiles in flight. (The former 2-warp config
# spilled 37 KB at block 128.)
_GPU_CONFIGS = [
    triton.Config({"TILE_M": 128, "BLOCK_P": 128}, num_warps=4, num_stages=3),
    triton.Config({"TILE_M": 128, "BLOCK_P": 128}, num_warps=4, num_stages=4),
    triton.Config({"TILE_M": 128, "BLOCK_P": 64}, num_warps=4, num_stages=4),
    triton.Config({"TILE_M": 128, "BLOCK_P": 64}, num_warps=8, num_stages=4),
    triton.Config({"TILE_M": 256, "BLOCK_P": 64}, num_warps=8, num_stages=4),
    triton.Config({"TILE_M": 128, "BLOCK_P": 128}, num_warps=8, num_stages=3),
]
_INTERPRETER_CONFIGS = [triton.Config({"TILE_M": 32, "BLOCK_P": 64}, num_warps=4, num_stages=1)]
_TUNE_MIN_PIXELS = 1024
_SMEM_BYTES = 200 * 1024
# fp32 accumulator registers per thread: tensor-core dots, FMA dots (fp32 without TF32).
_ACC_REGS, _FMA_ACC_REGS = 128, 32
# Rows of the program tile the split policy assumes (the autotuned TILE_M is not known yet).
NOMINAL_TILE_M = 128

# Split heuristic: aim for about this many programs (~8 per SM on a 132-SM H100) ...
_TARGET_PROGRAMS = 1024
# ... but give each program at least this many pixels, so the partial it writes
# ([bk, bc] fp32) stays small next to the tiles it reads.
_MIN_PIXELS_PER_SPLIT = 512
# Chunks are a multiple of the largest BLOCK_P, so only the last chunk has a ragged tile.
_CHUNK_ALIGN = 256


def _group(tile_m: int, bc: int) -> int:
    """Blocks of one block-row per program: enough to make the MMA's M at least ``tile_m``."""
    return max(1, tile_m // bc)


def _prune(configs, named_args, **kwargs):
    """Drop configs whose accumulator or pipelined tiles do not fit; tiny problems keep one."""
    bk, bc = kwargs["BLOCK_K"], kwargs["BLOCK_C"]
    size = named_args["x"].element_size()
    fma = size == 4 and kwargs.get("DOT_PRECISION", "ieee") != "tf32"
    limit = _FMA_ACC_REGS if fma else _ACC_REGS

    def rows(c):
        return _group(c.kwargs["TILE_M"], bc) * bc

    def registers(c):
        return rows(c) * bk // (32 * c.num_warps)  # fp32 accumulator registers per thread

    def smem(c):
        return c.num_stages * c.kwargs["BLOCK_P"] * (rows(c) + bk) * size

    kept = [c for c in configs if registers(c) <= limit and smem(c) <= _SMEM_BYTES]
    if not kept:  # fp32 at block 128: 256 KB at 4 stages (sm_90 compile); fewer stages fit
        kept = [fallback_config(configs, registers, smem, _SMEM_BYTES)]
    if named_args["N"] * named_args["Ho"] * named_args["Wo"] < _TUNE_MIN_PIXELS:
        return kept[:1]
    return kept


def pixels_per_split(pixels: int, nnz: int) -> int:
    """Pixels each program of the split reduces (a multiple of 256, or all of them); ``nnz``:
    the programs (groups of blocks) sharing the GPU."""
    split = max(1, min(triton.cdiv(_TARGET_PROGRAMS, max(nnz, 1)), pixels // _MIN_PIXELS_PER_SPLIT))
    if split == 1:
        return pixels
    return triton.cdiv(triton.cdiv(pixels, split), _CHUNK_ALIGN) * _CHUNK_ALIGN


@triton.autotune(
    configs=_INTERPRETER_CONFIGS if interpreter_enabled() else _GPU_CONFIGS,
    key=["N", "C", "H", "W", "K", "R", "S", "stride_h", "stride_w", "pad_h", "pad_w", "BLOCK_K", "BLOCK_C"],
    prune_configs_by={"early_config_prune": _prune},
)
# nnz and chunk change with the topology: specialising on their values (== 1, % 16) would
# recompile the kernel when a topology update moves them.
@triton.jit(do_not_specialize=["nnz", "chunk"])
def conv2d_weight_grad_kernel(
    x,  # [N, H, W, C] channels-last
    dy,  # [N, Ho, Wo, K] channels-last
    row_offsets,  # int32 [R*S*K/BLOCK_K + 1]: slot range of each block-row
    col_indices,  # int32 [nnz]
    dw,  # [split, nnz, BLOCK_K, BLOCK_C]: fp32 partials, or the output itself when split == 1
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
    nnz,
    chunk,  # pixels per split
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_K: tl.constexpr,  # pixels per tl.dot: BLOCK_P, or 16 on the fp32 FMA path
):
    G: tl.constexpr = TILE_M // BLOCK_C if TILE_M > BLOCK_C else 1
    GBC: tl.constexpr = G * BLOCK_C
    KD: tl.constexpr = DOT_K if DOT_K < BLOCK_P else BLOCK_P
    NK = K // BLOCK_K
    n_rows = R * S * NK
    # Block-rows vary fastest: programs running together reduce the same pixel chunk, so the
    # dy and x rows they read are shared through L2.
    i_pid = tl.program_id(0)
    i_split = tl.program_id(1)
    i_row = i_pid % n_rows
    i_g = i_pid // n_rows
    s_lo = tl.load(row_offsets + i_row)
    s_hi = tl.load(row_offsets + i_row + 1)
    s_0 = s_lo + i_g * G
    if s_0 < s_hi:
        i_k = i_row % NK
        i_t = i_row // NK
        i_r = i_t // S
        i_s = i_t % S

        o_j = tl.arange(0, GBC)  # tile row j: block j // BLOCK_C of the group, channel j % BLOCK_C
        i_slot = s_0 + o_j // BLOCK_C
        m_slot = i_slot < s_hi
        # Missing blocks of a short last group read channel block 0 (valid memory, never stored).
        i_c = tl.load(col_indices + i_slot, mask=m_slot, other=0)
        o_cj = i_c.to(tl.int64) * BLOCK_C + o_j % BLOCK_C  # [GBC] input channels
        o_k = tl.arange(0, BLOCK_K)
        p_start = i_split * chunk
        p_end = tl.minimum(p_start + chunk, N * Ho * Wo)
        b_acc = tl.zeros([GBC, BLOCK_K], dtype=tl.float32)
        for p0 in range(p_start, p_end, KD):
            o_p = p0 + tl.arange(0, KD)  # [KD] flattened output pixels
            m_p = o_p < p_end
            i_n = o_p // (Ho * Wo)
            o_h = ((o_p // Wo) % Ho) * stride_h - pad_h + i_r
            o_w = (o_p % Wo) * stride_w - pad_w + i_s
            m_x = m_p & (o_h >= 0) & (o_h < H) & (o_w >= 0) & (o_w < W)
            # int64: pixel index * channels exceeds 2**31 for large batches.
            o_dy = o_p.to(tl.int64) * K + i_k * BLOCK_K
            o_x = ((i_n * H + o_h) * W + o_w).to(tl.int64) * C
            b_dy = tl.load(dy + o_dy[:, None] + o_k[None, :], mask=m_p[:, None], other=0.0)  # [KD, BLOCK_K]
            b_x = tl.load(x + o_x[:, None] + o_cj[None, :], mask=m_x[:, None], other=0.0)  # [KD, GBC]
            if UPCAST:
                b_dy = b_dy.to(tl.float32)
                b_x = b_x.to(tl.float32)
            b_acc = tl.dot(tl.trans(b_x), b_dy, b_acc, input_precision=DOT_PRECISION)  # [GBC, BLOCK_K]

        # dw[i_split, slot, k, c] = acc[j, k] for j = g * BLOCK_C + c.
        o_dw = (i_split * nnz + i_slot).to(tl.int64) * (BLOCK_K * BLOCK_C) + o_j % BLOCK_C
        p_dw = dw + o_dw[:, None] + (o_k * BLOCK_C)[None, :]
        tl.store(p_dw, b_acc.to(dw.dtype.element_ty), mask=m_slot[:, None])


def launch_weight_grad(
    x: torch.Tensor,
    dy: torch.Tensor,
    row_indices: torch.Tensor,
    col_indices: torch.Tensor,
    block_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    allow_tf32: bool,
    chunk: int | None = None,
    row_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the weight-gradient kernel (and the split reduction).

    x: ``[N, C, H, W]``, dy: ``[N, K, Ho, Wo]``, both channels-last contiguous, same dtype
    (fp32|fp16|bf16); row_indices/col_indices: the layout's int32 fields; chunk: pixels per
    program (default :func:`pixels_per_split`); row_offsets: the layout's int32 CSR offsets
    (derived from ``row_indices`` on the device when not given) -> dvalues ``[nnz, bk, bc]``,
    dtype of x.
    """
    N, C, H, W = x.shape
    _, K, Ho, Wo = dy.shape
    (bk, bc), (R, S) = block_size, kernel_size
    nnz = row_indices.shape[0]
    out = new_output((nnz, bk, bc), x.dtype, x.device)
    pixels = N * Ho * Wo
    if nnz == 0 or pixels == 0:
        return out.zero_()  # an empty batch contributes nothing
    n_rows = R * S * (K // bk)
    if row_offsets is None:
        bounds = torch.arange(n_rows + 1, device=row_indices.device, dtype=row_indices.dtype)
        row_offsets = torch.searchsorted(row_indices, bounds).to(torch.int32)
    chunk = pixels_per_split(pixels, triton.cdiv(nnz, _group(NOMINAL_TILE_M, bc))) if chunk is None else chunk
    split = triton.cdiv(pixels, chunk)
    # Partials stay fp32 until the reduction; one split writes the output dtype directly.
    dw = out if split == 1 else new_output((split, nnz, bk, bc), torch.float32, x.device)

    def grid(meta):
        return (triton.cdiv(C // bc, _group(meta["TILE_M"], bc)) * n_rows, split)

    conv2d_weight_grad_kernel[grid](
        x, dy, row_offsets, col_indices, dw,
        N, C, H, W, K, Ho, Wo, R, S, stride[0], stride[1], padding[0], padding[1], nnz, chunk,
        BLOCK_K=bk,
        BLOCK_C=bc,
        DOT_PRECISION=dot_precision(x.dtype, allow_tf32),
        UPCAST=upcast_dot_operands(x.dtype),
        DOT_K=fma_dot_k(x.dtype, dot_precision(x.dtype, allow_tf32), _CHUNK_ALIGN),
    )  # fmt: skip
    if split > 1 and out.dtype == torch.float32:
        torch.sum(dw, dim=0, out=out)
    elif split > 1:
        # sum(out=half) would round the partials to half before adding them: reduce in fp32.
        out.copy_(dw.sum(dim=0))
    return out

"""Weight gradient of the block-sparse convolution, computed at the active blocks only.

For slot ``j`` in block-row ``t*(K/bk) + kb`` and block-column ``cb`` (tap ``t = r*S + s``)::

    dV[j] = sum_p dy[p, kb]ᵀ @ x_t[p, cb]        ([bk, P] @ [P, bc] -> [bk, bc])

where ``p`` runs over all ``N*Ho*Wo`` output pixels and ``x_t`` is the input gathered at the
pixels' tap-``t`` positions (zeros in the padding).

Split-K over pixels: a layer can have few active blocks (tens) but a reduction over a quarter
of a million pixels, so one program per block would leave most of a GPU idle. The grid is
``(nnz, split)``; program ``(j, i)`` reduces the ``i``-th chunk of pixels and writes its fp32
partial ``[bk, bc]`` into a workspace ``[split, nnz, bk, bc]``, which one ``sum`` then reduces
and casts. Partials are written, not atomically added, so the result is deterministic and the
autotuner can rerun the kernel freely. ``split`` comes from ``nnz`` and the pixel count only
(Python ints, never the device); with ``split == 1`` the kernel writes the output directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.ops._alloc import new_output
from sparsekernels.ops._triton_utils import dot_precision, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# The dot is [bk, BLOCK_P] @ [BLOCK_P, bc]: long pixel tiles are the reduction dimension.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_P": 256}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 256}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_P": 64}, num_warps=2, num_stages=4),
]
_INTERPRETER_CONFIGS = [triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=1)]
_TUNE_MIN_PIXELS = 1024
_SMEM_BYTES = 200 * 1024

# Split heuristic: aim for about this many programs (~8 per SM on a 132-SM H100) ...
_TARGET_PROGRAMS = 1024
# ... but give each program at least this many pixels, so the partial it writes
# ([bk, bc] fp32) stays small next to the tiles it reads.
_MIN_PIXELS_PER_SPLIT = 512
# Chunks are a multiple of the largest BLOCK_P, so only the last chunk has a ragged tile.
_CHUNK_ALIGN = 256


def _prune(configs, named_args, **kwargs):
    """Drop configs whose pipelined tiles do not fit; tiny problems keep one."""
    bk, bc = kwargs["BLOCK_K"], kwargs["BLOCK_C"]
    size = named_args["x"].element_size()
    kept = [c for c in configs if c.num_stages * c.kwargs["BLOCK_P"] * (bk + bc) * size <= _SMEM_BYTES] or configs[-1:]
    if named_args["N"] * named_args["Ho"] * named_args["Wo"] < _TUNE_MIN_PIXELS:
        return kept[:1]
    return kept


def pixels_per_split(pixels: int, nnz: int) -> int:
    """Pixels each program of the split reduces (a multiple of 256, or all of them)."""
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
    row_indices,  # int32 [nnz]
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
    BLOCK_P: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    NK = K // BLOCK_K
    # Slots vary fastest: programs running together reduce the same pixel chunk, so the dy
    # and x rows they read are shared through L2.
    i_slot = tl.program_id(0)
    i_split = tl.program_id(1)
    i_row = tl.load(row_indices + i_slot)
    i_c = tl.load(col_indices + i_slot)
    i_k = i_row % NK
    i_t = i_row // NK
    i_r = i_t // S
    i_s = i_t % S

    o_k = tl.arange(0, BLOCK_K)
    o_c = tl.arange(0, BLOCK_C)
    p_start = i_split * chunk
    p_end = tl.minimum(p_start + chunk, N * Ho * Wo)
    b_acc = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        o_p = p0 + tl.arange(0, BLOCK_P)  # [BLOCK_P] flattened output pixels
        m_p = o_p < p_end
        i_n = o_p // (Ho * Wo)
        o_h = ((o_p // Wo) % Ho) * stride_h - pad_h + i_r
        o_w = (o_p % Wo) * stride_w - pad_w + i_s
        m_x = m_p & (o_h >= 0) & (o_h < H) & (o_w >= 0) & (o_w < W)
        # int64: pixel index * channels exceeds 2**31 for large batches.
        o_dy = o_p.to(tl.int64) * K + i_k * BLOCK_K
        o_x = ((i_n * H + o_h) * W + o_w).to(tl.int64) * C + i_c * BLOCK_C
        b_dy = tl.load(dy + o_dy[:, None] + o_k[None, :], mask=m_p[:, None], other=0.0)  # [BLOCK_P, BLOCK_K]
        b_x = tl.load(x + o_x[:, None] + o_c[None, :], mask=m_x[:, None], other=0.0)  # [BLOCK_P, BLOCK_C]
        if UPCAST:
            b_dy = b_dy.to(tl.float32)
            b_x = b_x.to(tl.float32)
        b_acc = tl.dot(tl.trans(b_dy), b_x, b_acc, input_precision=DOT_PRECISION)

    o_dw = (i_split * nnz + i_slot).to(tl.int64) * (BLOCK_K * BLOCK_C)
    p_dw = dw + o_dw + o_k[:, None] * BLOCK_C + o_c[None, :]
    tl.store(p_dw, b_acc.to(dw.dtype.element_ty))


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
) -> torch.Tensor:
    """Run the weight-gradient kernel (and the split reduction).

    x: ``[N, C, H, W]``, dy: ``[N, K, Ho, Wo]``, both channels-last contiguous, same dtype
    (fp32|fp16|bf16); row_indices/col_indices: the layout's int32 fields; chunk: pixels per
    program (default :func:`pixels_per_split`) -> dvalues ``[nnz, bk, bc]``, dtype of x.
    """
    N, C, H, W = x.shape
    _, K, Ho, Wo = dy.shape
    (bk, bc), (R, S) = block_size, kernel_size
    nnz = row_indices.shape[0]
    out = new_output((nnz, bk, bc), x.dtype, x.device)
    pixels = N * Ho * Wo
    if nnz == 0 or pixels == 0:
        return out.zero_()  # an empty batch contributes nothing
    chunk = pixels_per_split(pixels, nnz) if chunk is None else chunk
    split = triton.cdiv(pixels, chunk)
    # Partials stay fp32 until the reduction; one split writes the output dtype directly.
    dw = out if split == 1 else new_output((split, nnz, bk, bc), torch.float32, x.device)

    conv2d_weight_grad_kernel[(nnz, split)](
        x, dy, row_indices, col_indices, dw,
        N, C, H, W, K, Ho, Wo, R, S, stride[0], stride[1], padding[0], padding[1], nnz, chunk,
        BLOCK_K=bk,
        BLOCK_C=bc,
        DOT_PRECISION=dot_precision(x.dtype, allow_tf32),
        UPCAST=upcast_dot_operands(x.dtype),
    )  # fmt: skip
    if split > 1 and out.dtype == torch.float32:
        torch.sum(dw, dim=0, out=out)
    elif split > 1:
        # sum(out=half) would round the partials to half before adding them: reduce in fp32.
        out.copy_(dw.sum(dim=0))
    return out

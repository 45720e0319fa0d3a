"""SDD: the blocks of a dense-dense product sampled at a layout's active blocks.

``values[s] = a[r*bm:(r+1)*bm, :] @ b[:, c*bn:(c+1)*bn]`` for every active slot ``s`` at
block ``(r, c)``. The weight gradient of a sparse linear layer (``dW = dyᵀ x``) is this op.

Tile. A program owns ``G = max(1, TILE_M // bn)`` consecutive slots of one block-row ``r``
(slots of a row are consecutive in the layout's row-major order) and computes them as one
transposed product::

    [values[s0]ᵀ; ...; values[s0+G-1]ᵀ]  =  b[:, cols]ᵀ  @  a[r]ᵀ       ([G*bn, K] @ [K, bm])

so the MMA's M is ``G*bn`` (>= 64 at every block size: Hopper's warpgroup MMA needs M >= 64
per warpgroup; one block per program put ``bm`` = 16/32 there and lowered to the older
HMMA) and the ``a[r]`` tile is read once for G blocks instead of G times. The gathered
``b`` columns are fixed for the whole K loop (their offsets are computed once from
``col_indices``), so the main loop is a plain strided stream that the software pipeliner
multi-buffers (``num_stages`` buffers, ``num_stages - 1`` loads in flight). The MMA's N is
``bm``; a larger N would need several block-rows sharing one column set, which a sparse
layout does not give without computing inactive blocks.

Grid: ``(ceil(C/G) * R, split_k)``, ``R``/``C`` the block-rows/-columns, group index slowest:
every program ``(g, r)`` with ``g*G`` below the row's block count works, the others return at
once. All working programs do the same work (G blocks x the K range), so no load balancing is
needed, and the grid is a function of the shapes only (no work list, no host sync); with the
group index slowest the working programs come first. When there are fewer groups than the
GPU has program slots (low density, large blocks), K is cut into ``split_k`` chunks
(``_common.sdd_split_k``) whose fp32 partials are summed afterwards; otherwise
``split_k = 1`` and programs store the output directly.

Autotune key: ``M, N, K, BM, BN`` and dtypes. ``nnz`` only enters the K-chunking, whose ints
are unspecialised runtime arguments, so a new topology with the same shapes reuses the
compiled kernel and its tuning.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import new_output
from sparsekernels.ops.checks import check_sdd
from sparsekernels.ops.matmul._common import check_kernel_inputs, dot_flags, make_prune, pick_configs, sdd_split_k

# Rows of the program tile the K-split policy assumes (the autotuned TILE_M is not known yet).
NOMINAL_TILE_M = 128


def _group(tile_m: int, bn: int) -> int:
    """Blocks of one block-row per program: enough to make the MMA's M at least ``tile_m``."""
    return max(1, tile_m // bn)


def _configs() -> list[triton.Config]:
    gpu = [
        triton.Config({"TILE_M": 128, "BLOCK_K": bk}, num_warps=4, num_stages=s) for bk in (64, 128) for s in (3, 4)
    ] + [
        triton.Config({"TILE_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"TILE_M": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"TILE_M": 256, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"TILE_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    ]
    return pick_configs(gpu, triton.Config({"TILE_M": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1))


def _tile_rows(c, a) -> int:
    return _group(c.kwargs["TILE_M"], a["BN"]) * a["BN"]


_resource_prune = make_prune(
    stage_elems=lambda c, a: (_tile_rows(c, a) + a["BM"]) * c.kwargs["BLOCK_K"],
    acc_elems=lambda c, a: _tile_rows(c, a) * a["BM"],
)


def _prune(configs, named_args, **kwargs):
    """Drop 8 warps on blocks too small to feed them, then configs the GPU cannot hold."""
    args = {**named_args, **kwargs}
    small_tile = args["BM"] * args["BN"] < 64 * 64
    kept = [c for c in configs if not (small_tile and c.num_warps > 4)] or configs
    return _resource_prune(kept, named_args, **kwargs)


@triton.autotune(configs=_configs(), key=["M", "N", "K", "BM", "BN"], prune_configs_by={"early_config_prune": _prune})
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=["K_CHUNK"])
def sdd_kernel(
    a_ptr,  # [M, K] any strides
    b_ptr,  # [K, N] any strides
    out_ptr,  # [nnz, BM, BN] contiguous, or fp32 [nnz, split_k, BM, BN] partials when split
    row_offsets_ptr,  # int32 [M // BM + 1]: slot range of each block-row
    col_indices_ptr,  # int32 [nnz]: block-column of each slot
    M,
    N,
    K,
    K_CHUNK,  # K range of one program: K itself, or a multiple of every config's BLOCK_K
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    BM: tl.constexpr,
    BN: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    TILE_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # N is not read: it is an autotuning key (the kernel's cost depends on it through cache
    # behaviour, the mask never enters).
    G: tl.constexpr = TILE_M // BN if TILE_M > BN else 1
    GBN: tl.constexpr = G * BN
    n_rows = M // BM
    i_pid = tl.program_id(0)
    i_kc = tl.program_id(1)
    i_r = i_pid % n_rows
    i_g = i_pid // n_rows
    s_lo = tl.load(row_offsets_ptr + i_r)
    s_hi = tl.load(row_offsets_ptr + i_r + 1)
    s_0 = s_lo + i_g * G
    if s_0 < s_hi:
        # K_CHUNK is K (one chunk) or a multiple of every BLOCK_K: telling the compiler keeps
        # the tile loads provably aligned, which the async-copy pipeline needs. int64:
        # k * stride_ak passes 2^31 for long reductions over transposed operands.
        k_lo = tl.multiple_of(i_kc.to(tl.int64) * K_CHUNK, BLOCK_K)
        k_hi = tl.minimum(k_lo + K_CHUNK, K)

        o_j = tl.arange(0, GBN)  # tile row j: block j // BN of the group, column j % BN of it
        i_slot = s_0 + o_j // BN
        m_slot = i_slot < s_hi
        # Missing blocks of a short last group read column block 0 (valid memory, never stored),
        # so the tile loads need no mask.
        i_col = tl.load(col_indices_ptr + i_slot, mask=m_slot, other=0)
        # int64 rows/columns: row * stride can pass 2^31 on large or transposed operands.
        o_n = i_col.to(tl.int64) * BN + o_j % BN
        o_m = i_r.to(tl.int64) * BM + tl.arange(0, BM)
        o_k = tl.arange(0, BLOCK_K)
        p_b = b_ptr + o_n[:, None] * stride_bn + (k_lo + o_k)[None, :] * stride_bk  # [GBN, BLOCK_K]
        p_a = a_ptr + (k_lo + o_k)[:, None] * stride_ak + o_m[None, :] * stride_am  # [BLOCK_K, BM]

        b_acc = tl.zeros([GBN, BM], dtype=tl.float32)
        for i_k in range(k_lo, k_hi, BLOCK_K):
            # EVEN_K: K, hence every chunk boundary, is a multiple of BLOCK_K: no edge masks.
            if EVEN_K:
                b_bt = tl.load(p_b)
                b_at = tl.load(p_a)
            else:
                m_k = o_k < k_hi - i_k
                b_bt = tl.load(p_b, mask=m_k[None, :], other=0.0)
                b_at = tl.load(p_a, mask=m_k[:, None], other=0.0)
            if UPCAST:
                b_bt = b_bt.to(tl.float32)
                b_at = b_at.to(tl.float32)
            b_acc = tl.dot(b_bt, b_at, b_acc, input_precision=PRECISION)  # [GBN, BM]
            p_b += BLOCK_K * stride_bk
            p_a += BLOCK_K * stride_ak

        # Partials of one block sit next to each other: [nnz, split_k, BM, BN].
        i_out = i_slot.to(tl.int64) * tl.num_programs(1) + i_kc
        p_o = out_ptr + (i_out * (BM * BN) + o_j % BN)[:, None] + (tl.arange(0, BM) * BN)[None, :]
        tl.store(p_o, b_acc.to(out_ptr.dtype.element_ty), mask=m_slot[:, None])


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Blocks of ``a @ b`` at the layout's active blocks.

    a: ``[M, K]``, b: ``[K, N]`` (fp32|bf16|fp16, one dtype, any strides; transposed views
    are read in place) -> values ``[nnz, bm, bn]`` in the input dtype, accumulated in fp32.
    """
    check_sdd(a, b, layout)
    check_kernel_inputs(layout, a=a, b=b)
    (M, N), (bm, bn), K = layout.shape, layout.block_size, a.shape[1]
    out = new_output((layout.nnz, bm, bn), a.dtype, a.device)
    if layout.nnz == 0:
        return out
    granule = max(c.kwargs["BLOCK_K"] for c in sdd_kernel.configs)
    n_rows, n_cols = M // bm, N // bn
    # Programs that work: about nnz / G (plus one short group per row at most).
    split_k, k_chunk = sdd_split_k(a.device, triton.cdiv(layout.nnz, _group(NOMINAL_TILE_M, bn)), K, granule)
    use_ws = split_k > 1
    target = torch.empty((layout.nnz, split_k, bm, bn), dtype=torch.float32, device=a.device) if use_ws else out

    def grid(meta):
        return (triton.cdiv(n_cols, _group(meta["TILE_M"], bn)) * n_rows, split_k)

    sdd_kernel[grid](
        a,
        b,
        target,
        layout.row_offsets,
        layout.col_indices,
        M,
        N,
        K,
        k_chunk,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        BM=bm,
        BN=bn,
        **dot_flags(a.dtype),
    )
    if use_ws:
        out.copy_(target.sum(1))  # fixed-order fp32 sum of the K chunks, then the output dtype
    return out

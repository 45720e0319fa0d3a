"""DSD: sparse times dense, ``S @ b`` or ``Sᵀ @ b``, with any leading batch dims on ``b``.

Segments. Output block-row ``i`` of ``S @ b`` sums ``values[s] @ b[c*bn:(c+1)*bn]`` over the
slots ``s`` of block-row ``i`` of ``S`` (CSR: ``row_offsets``, ``col_indices``). Output
block-row ``j`` of ``Sᵀ @ b`` sums ``values[s]ᵀ @ b[r*bm:(r+1)*bm]`` over block-column ``j``
(CSC: ``col_offsets``, ``row_indices_t``, ``block_indices_t``); the block is read transposed
by swapping its strides at the load, so no transposed copy of ``values`` exists. The kernel
only sees a *segment* list (offsets, inner block index, optional slot gather), an output
block dim ``BO``, an inner block dim ``BI`` and value strides; the launcher picks them.

Grid: 1-D, ``pid -> (batch, P tile, segment, chunk)`` with the chunk fastest, then the
segment: programs that run together work on the same P tile of ``b`` (all of ``b[:, tile]``
stays in L2 while every segment reads it). Each program accumulates the *transposed* output
tile ``[BLOCK_P, BO]`` = ``b[:, tile]ᵀ @ Vᵀ`` over its blocks, so the MMA's M is the dense
dimension (``BLOCK_P`` >= 64) at every block size: Hopper's warpgroup MMA needs M >= 64 per
warpgroup, and the untransposed ``[BO, BLOCK_P]`` tile put a 16/32 block there and lowered to
the older HMMA. The MMA's N is the block (``BO``): a larger N would need several output
block-rows sharing their inner blocks, which a sparse layout does not give.

Pipelining: the gathered indices of the next block are loaded one iteration ahead, so the tile
loads depend on loop-carried registers only and the software pipeliner keeps ``num_stages``
buffers (``num_stages - 1`` blocks in flight; loading the index in the iteration that used it
compiled to one buffer and a full wait per block). Long segments are cut into chunks
(``_common.split_plan``) whose partials go through an fp32 workspace and
``reduce_split_partials_kernel``: deterministic, and a persistent work-list scheduler would add
a device-side queue for a case (very uneven rows) that the split already covers.

Autotune key: ``M_OUT, K_IN, P, N_BATCH, BO, BI`` and dtypes: shapes only. ``nnz`` and the
chunking ints are plain (unspecialised) runtime arguments, never ``tl.constexpr``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import new_output
from sparsekernels.ops.checks import check_dsd
from sparsekernels.ops.matmul._common import (
    NOMINAL_BLOCK_P,
    check_kernel_inputs,
    dot_flags,
    gather_block_products,
    make_prune,
    pick_configs,
    reduce_split_partials,
    split_plan,
)


def _configs() -> list[triton.Config]:
    # BLOCK_P is the MMA's M: 64 per warpgroup at least (warpgroup MMA), 256 reuses each value
    # block over more rows (for blocks up to 64: the accumulator limit of make_prune drops it
    # for 128). 8 warps on 64 rows split the block (N) between the warpgroups; kept for the
    # fp32 FMA path, whose accumulator must stay at 32 registers per thread.
    gpu = [
        triton.Config({"BLOCK_P": bp}, num_warps=w, num_stages=s)
        for bp, w in ((64, 4), (128, 4), (128, 8), (256, 8))
        for s in (3, 4)
    ] + [triton.Config({"BLOCK_P": 64}, num_warps=8, num_stages=3)]
    return pick_configs(gpu, triton.Config({"BLOCK_P": 32}, num_warps=4, num_stages=1))


@triton.autotune(
    configs=_configs(),
    key=["M_OUT", "K_IN", "P", "N_BATCH", "BO", "BI"],
    prune_configs_by={
        "early_config_prune": make_prune(
            stage_elems=lambda c, a: a["BO"] * a["BI"] + a["BI"] * c.kwargs["BLOCK_P"],
            acc_elems=lambda c, a: a["BO"] * c.kwargs["BLOCK_P"],
            mma_n=lambda a: a["BO"],
        )
    },
)
@triton.jit(do_not_specialize=["SPLIT", "N_SPLITS"])
def dsd_kernel(
    values_ptr,  # [nnz, bm, bn], any strides
    seg_offsets_ptr,  # int32 [M_OUT // BO + 1]: block range of each output block-row
    inner_ptr,  # int32 [nnz]: block index along K_IN of each entry of the traversal
    slots_ptr,  # int32 [nnz]: value slot of each entry (read only when GATHER)
    b_ptr,  # [N_BATCH, K_IN, P], any strides
    out_ptr,  # [N_BATCH, M_OUT, P], any strides
    ws_ptr,  # fp32 [N_BATCH, M_OUT // BO, N_SPLITS, BO, P] (read only when USE_WS)
    M_OUT,
    K_IN,
    P,
    N_BATCH,
    SPLIT,
    N_SPLITS,
    stride_vs,
    stride_vo,
    stride_vi,
    stride_bb,
    stride_bk,
    stride_bp,
    stride_ob,
    stride_om,
    stride_op,
    BO: tl.constexpr,
    BI: tl.constexpr,
    GATHER: tl.constexpr,
    USE_WS: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # K_IN and N_BATCH are autotuning keys only.
    i_pid = tl.program_id(0)
    n_segs = M_OUT // BO
    n_p = tl.cdiv(P, BLOCK_P)
    i_split = i_pid % N_SPLITS
    i_seg = (i_pid // N_SPLITS) % n_segs
    i_p = (i_pid // N_SPLITS // n_segs) % n_p
    i_b = (i_pid // N_SPLITS // n_segs // n_p).to(tl.int64)

    i_start = tl.load(seg_offsets_ptr + i_seg)
    i_end = tl.load(seg_offsets_ptr + i_seg + 1)
    if USE_WS:
        # Chunk i_split of the segment; a segment of at most SPLIT blocks is all chunk 0.
        i_lo = i_start + i_split * SPLIT
        i_hi = tl.minimum(i_lo + SPLIT, i_end)
        is_split = i_end - i_start > SPLIT
    else:
        i_lo = i_start
        i_hi = i_end
        is_split = False

    # Chunk 0 always runs: it writes the zeros of an empty segment.
    if (i_split == 0) | (i_lo < i_end):
        o_o = tl.arange(0, BO)
        o_i = tl.arange(0, DOT_K)
        o_p = i_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        m_p = o_p < P
        # Transposed tile: out[seg]ᵀ [BLOCK_P, BO] = b[tile]ᵀ [BLOCK_P, BI] @ Vᵀ [BI, BO], so the
        # MMA's M is BLOCK_P (>= 64: warpgroup MMA at every block size) and N the block.
        p_v0 = values_ptr + o_i[:, None] * stride_vi + o_o[None, :] * stride_vo  # [DOT_K, BO]
        p_b0 = b_ptr + i_b * stride_bb + o_p[:, None] * stride_bp  # [BLOCK_P, 1]

        b_acc = gather_block_products(
            p_b0, stride_bk, m_p, p_v0, stride_vs, stride_vi, inner_ptr, slots_ptr, i_lo, i_hi,
            BLOCK_P, BO, BI, DOT_K, GATHER, UPCAST, PRECISION,
        )  # fmt: skip

        if is_split:
            o_w = ((i_b * n_segs + i_seg) * N_SPLITS + i_split) * BO + o_o
            tl.store(ws_ptr + o_w[None, :] * P + o_p[:, None], b_acc, mask=m_p[:, None])
        else:
            p_o = out_ptr + i_b * stride_ob + (i_seg.to(tl.int64) * BO + o_o)[None, :] * stride_om
            tl.store(p_o + o_p[:, None] * stride_op, b_acc.to(out_ptr.dtype.element_ty), mask=m_p[:, None])


def dsd(
    values: torch.Tensor,
    layout: BlockLayout,
    b: torch.Tensor,
    transpose_sparse: bool = False,
) -> torch.Tensor:
    """``S @ b`` (``Sᵀ @ b`` when ``transpose_sparse``), S given by ``values`` over ``layout``.

    values: ``[nnz, bm, bn]``; b: ``[..., N, P]`` (``[..., M, P]`` transposed), fp32|bf16|fp16,
    one dtype, any strides -> ``[..., M, P]`` (``[..., N, P]``) in the input dtype, fp32
    accumulation. Leading dims of ``b`` are flattened to one batch dim (a view when its
    strides allow).
    """
    check_dsd(values, layout, b, transpose_sparse)
    check_kernel_inputs(layout, values=values, b=b)
    (M, N), (bm, bn) = layout.shape, layout.block_size
    if transpose_sparse:
        # Output block-rows are S's block-columns; value blocks are read as [bn, bm].
        M_out, K_in, BO, BI = N, M, bn, bm
        seg_offsets, inner, slots = layout.col_offsets, layout.row_indices_t, layout.block_indices_t
        stride_vo, stride_vi = values.stride(2), values.stride(1)
    else:
        M_out, K_in, BO, BI = M, N, bm, bn
        seg_offsets, inner, slots = layout.row_offsets, layout.col_indices, layout.col_indices
        stride_vo, stride_vi = values.stride(1), values.stride(2)

    lead, P = b.shape[:-2], b.shape[-1]
    b3 = b.reshape(-1, K_in, P)
    n_batch = b3.shape[0]
    out = new_output((*lead, M_out, P), b.dtype, b.device)
    out3 = out.view(n_batch, M_out, P)
    if n_batch == 0 or P == 0:
        return out

    n_segs = M_out // BO
    split, n_splits = split_plan(
        b.device,
        n_inner=K_in // BI,
        nnz=layout.nnz,
        n_tiles=n_batch * triton.cdiv(P, NOMINAL_BLOCK_P),
        workspace_bytes_per_split=n_batch * M_out * P * 4,
    )
    use_ws = n_splits > 1
    ws = torch.empty((n_batch, n_segs, n_splits, BO, P), dtype=torch.float32, device=b.device) if use_ws else out3

    def grid(meta):
        return (n_batch * triton.cdiv(P, meta["BLOCK_P"]) * n_segs * n_splits,)

    dsd_kernel[grid](
        values,
        seg_offsets,
        inner,
        slots,
        b3,
        out3,
        ws,
        M_out,
        K_in,
        P,
        n_batch,
        split,
        n_splits,
        values.stride(0),
        stride_vo,
        stride_vi,
        *b3.stride(),
        *out3.stride(),
        BO=BO,
        BI=BI,
        GATHER=transpose_sparse,
        USE_WS=use_ws,
        **dot_flags(b.dtype, BI),
    )
    if use_ws:
        reduce_split_partials(ws, out3, seg_offsets, split, n_batch, P, ws.stride(), out3.stride(), BO=BO)
    return out

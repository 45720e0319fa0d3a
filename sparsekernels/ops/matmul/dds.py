"""DDS: dense times sparse, ``a @ S`` or ``a @ Sᵀ``, with any leading dims on ``a``.

The forward of a sparse linear layer (``y = x @ Wᵀ``) and its input gradient (``dx = dy @ W``).

Segments. Output block-column ``j`` of ``a @ S`` sums ``a[:, r*bm:(r+1)*bm] @ values[s]`` over
block-column ``j`` of ``S`` (CSC: ``col_offsets``, ``row_indices_t``, ``block_indices_t``).
Output block-column ``i`` of ``a @ Sᵀ`` sums ``a[:, c*bn:(c+1)*bn] @ values[s]ᵀ`` over
block-row ``i`` (CSR: ``row_offsets``, ``col_indices``); the block is read transposed by
swapping its strides at the load, so no transposed copy of ``values`` exists.

Grid: 1-D, ``pid -> (P tile, segment, chunk)`` with the chunk fastest, then the segment:
programs that run together read the same rows ``a[tile, :]``, which stay in L2. Leading dims
of ``a`` are flattened into the row dimension ``P`` (a view when strides allow). Each program
accumulates a ``[BLOCK_P, BO]`` fp32 tile over its blocks: the MMA's M is the dense dimension
(``BLOCK_P`` >= 64, warpgroup MMA at every block size), its N the block. Long segments are cut
into chunks whose partials go through an fp32 workspace (see ``_common``).

Pipelining: the gathered indices of the next block are loaded one iteration ahead, so the tile
loads depend on loop-carried registers only and the software pipeliner keeps ``num_stages``
buffers (``num_stages - 1`` blocks in flight; loading the index in the iteration that used it
compiled to two buffers and a full wait per block).

Autotune key: ``N_OUT, K_IN, P, BO, BI`` and dtypes: shapes only, never ``nnz`` or the mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import new_output
from sparsekernels.ops.checks import check_dds
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
    key=["N_OUT", "K_IN", "P", "BO", "BI"],
    prune_configs_by={
        "early_config_prune": make_prune(
            stage_elems=lambda c, a: a["BI"] * a["BO"] + c.kwargs["BLOCK_P"] * a["BI"],
            acc_elems=lambda c, a: a["BO"] * c.kwargs["BLOCK_P"],
            mma_n=lambda a: a["BO"],
        )
    },
)
@triton.jit(do_not_specialize=["SPLIT", "N_SPLITS"])
def dds_kernel(
    a_ptr,  # [P, K_IN], any strides
    values_ptr,  # [nnz, bm, bn], any strides
    seg_offsets_ptr,  # int32 [N_OUT // BO + 1]: block range of each output block-column
    inner_ptr,  # int32 [nnz]: block index along K_IN of each entry of the traversal
    slots_ptr,  # int32 [nnz]: value slot of each entry (read only when GATHER)
    out_ptr,  # [P, N_OUT], any strides
    ws_ptr,  # fp32 [N_OUT // BO, N_SPLITS, P, BO] (read only when USE_WS)
    N_OUT,
    K_IN,
    P,
    SPLIT,
    N_SPLITS,
    stride_ap,
    stride_ak,
    stride_vs,
    stride_vi,
    stride_vo,
    stride_op,
    stride_on,
    BO: tl.constexpr,
    BI: tl.constexpr,
    GATHER: tl.constexpr,
    USE_WS: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # K_IN is an autotuning key only.
    i_pid = tl.program_id(0)
    n_segs = N_OUT // BO
    i_split = i_pid % N_SPLITS
    i_seg = (i_pid // N_SPLITS) % n_segs
    i_p = i_pid // N_SPLITS // n_segs

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
        p_a0 = a_ptr + o_p[:, None] * stride_ap  # [BLOCK_P, 1]
        p_v0 = values_ptr + o_i[:, None] * stride_vi + o_o[None, :] * stride_vo  # [DOT_K, BO]

        b_acc = gather_block_products(
            p_a0, stride_ak, m_p, p_v0, stride_vs, stride_vi, inner_ptr, slots_ptr, i_lo, i_hi,
            BLOCK_P, BO, BI, DOT_K, GATHER, UPCAST, PRECISION,
        )  # fmt: skip

        if is_split:
            o_w = ((i_seg.to(tl.int64) * N_SPLITS + i_split) * P + o_p) * BO
            tl.store(ws_ptr + o_w[:, None] + o_o[None, :], b_acc, mask=m_p[:, None])
        else:
            p_o = out_ptr + o_p[:, None] * stride_op + (i_seg.to(tl.int64) * BO + o_o)[None, :] * stride_on
            tl.store(p_o, b_acc.to(out_ptr.dtype.element_ty), mask=m_p[:, None])


def dds(
    a: torch.Tensor,
    values: torch.Tensor,
    layout: BlockLayout,
    transpose_sparse: bool = False,
) -> torch.Tensor:
    """``a @ S`` (``a @ Sᵀ`` when ``transpose_sparse``), S given by ``values`` over ``layout``.

    a: ``[..., P, M]`` (``[..., P, N]`` transposed), fp32|bf16|fp16, one dtype, any strides;
    values: ``[nnz, bm, bn]`` -> ``[..., P, N]`` (``[..., P, M]``) in the input dtype, fp32
    accumulation.
    """
    check_dds(a, values, layout, transpose_sparse)
    check_kernel_inputs(layout, a=a, values=values)
    (M, N), (bm, bn) = layout.shape, layout.block_size
    if transpose_sparse:
        # Output block-columns are S's block-rows; value blocks are read as [bn, bm].
        N_out, K_in, BO, BI = M, N, bm, bn
        seg_offsets, inner, slots = layout.row_offsets, layout.col_indices, layout.col_indices
        stride_vi, stride_vo = values.stride(2), values.stride(1)
    else:
        N_out, K_in, BO, BI = N, M, bn, bm
        seg_offsets, inner, slots = layout.col_offsets, layout.row_indices_t, layout.block_indices_t
        stride_vi, stride_vo = values.stride(1), values.stride(2)

    a2 = a.reshape(-1, K_in)
    P = a2.shape[0]
    out = new_output((*a.shape[:-1], N_out), a.dtype, a.device)
    out2 = out.view(P, N_out)
    if P == 0:
        return out

    n_segs = N_out // BO
    split, n_splits = split_plan(
        a.device,
        n_inner=K_in // BI,
        nnz=layout.nnz,
        n_tiles=triton.cdiv(P, NOMINAL_BLOCK_P),
        workspace_bytes_per_split=P * N_out * 4,
    )
    use_ws = n_splits > 1
    ws = torch.empty((n_segs, n_splits, P, BO), dtype=torch.float32, device=a.device) if use_ws else out2

    def grid(meta):
        return (triton.cdiv(P, meta["BLOCK_P"]) * n_segs * n_splits,)

    dds_kernel[grid](
        a2,
        values,
        seg_offsets,
        inner,
        slots,
        out2,
        ws,
        N_out,
        K_in,
        P,
        split,
        n_splits,
        *a2.stride(),
        values.stride(0),
        stride_vi,
        stride_vo,
        *out2.stride(),
        BO=BO,
        BI=BI,
        GATHER=not transpose_sparse,
        USE_WS=use_ws,
        **dot_flags(a.dtype, BI),
    )
    if use_ws:
        # The reduction kernel walks [BO, BLOCK_P] tiles: "o" is the output column, "p" the row.
        ws_strides = (0, ws.stride(0), ws.stride(1), ws.stride(3), ws.stride(2))
        out_strides = (0, out2.stride(1), out2.stride(0))
        reduce_split_partials(ws, out2, seg_offsets, split, 1, P, ws_strides, out_strides, BO=BO)
    return out

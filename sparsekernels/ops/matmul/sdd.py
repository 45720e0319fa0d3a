"""SDD: the blocks of a dense-dense product sampled at a layout's active blocks.

``values[s] = a[r*bm:(r+1)*bm, :] @ b[:, c*bn:(c+1)*bn]`` for every active slot ``s`` at
block ``(r, c)``. The weight gradient of a sparse linear layer (``dW = dyᵀ x``) is this op.

Grid: ``(nnz, split_k)``: one program per active block and K chunk, blocks in the layout's
row-major slot order, so programs that run together share block-rows of ``a`` (and, at
moderate density, columns of ``b``) in L2. Each program streams its K range in ``BLOCK_K``
steps through an fp32 ``[bm, bn]`` accumulator. When there are fewer blocks than the GPU
has program slots (low density, large blocks), K is cut into ``split_k`` chunks
(``_common.sdd_split_k``) whose fp32 partials are summed afterwards; otherwise
``split_k = 1`` and programs store the output directly.

Autotune key: ``M, N, K, BM, BN`` and dtypes. ``nnz`` only sizes the grid and the
K-chunking ints are unspecialised runtime arguments, so a new topology with the same shapes
reuses the compiled kernel and its tuning.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout
from sparsekernels.ops._alloc import new_output
from sparsekernels.ops.checks import check_sdd
from sparsekernels.ops.matmul._common import check_kernel_inputs, dot_flags, make_prune, pick_configs, sdd_split_k


def _configs() -> list[triton.Config]:
    gpu = [
        triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bk in (32, 64, 128)
        for w in (4, 8)
        for s in (3, 4)
    ]
    return pick_configs(gpu, triton.Config({"BLOCK_K": 32}, num_warps=4, num_stages=1))


_resource_prune = make_prune(
    stage_elems=lambda c, a: (a["BM"] + a["BN"]) * c.kwargs["BLOCK_K"], acc_elems=lambda c, a: a["BM"] * a["BN"]
)


def _prune(configs, named_args, **kwargs):
    """Drop 8 warps on tiles too small to feed them, then configs the GPU cannot hold."""
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
    row_indices_ptr,  # int32 [nnz]: block-row of each slot
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
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # M and N are not read: they are autotuning keys (the kernel's cost depends on them
    # through cache behaviour, the mask never enters).
    i_s = tl.program_id(0)
    i_kc = tl.program_id(1)
    i_r = tl.load(row_indices_ptr + i_s).to(tl.int64)
    i_c = tl.load(col_indices_ptr + i_s).to(tl.int64)
    # K_CHUNK is K (one chunk) or a multiple of every BLOCK_K: telling the compiler keeps the
    # tile loads provably aligned, which the async-copy pipeline needs. int64: k * stride_ak
    # passes 2^31 for long reductions over transposed operands.
    k_lo = tl.multiple_of(i_kc.to(tl.int64) * K_CHUNK, BLOCK_K)
    k_hi = tl.minimum(k_lo + K_CHUNK, K)

    # int64 rows/columns: row * stride can pass 2^31 on large or transposed operands.
    o_m = i_r * BM + tl.arange(0, BM)
    o_n = i_c * BN + tl.arange(0, BN)
    o_k = tl.arange(0, BLOCK_K)
    p_a = a_ptr + o_m[:, None] * stride_am + (k_lo + o_k)[None, :] * stride_ak  # [BM, BLOCK_K]
    p_b = b_ptr + (k_lo + o_k)[:, None] * stride_bk + o_n[None, :] * stride_bn  # [BLOCK_K, BN]

    b_acc = tl.zeros([BM, BN], dtype=tl.float32)
    for i_k in range(k_lo, k_hi, BLOCK_K):
        # EVEN_K: K, hence every chunk boundary, is a multiple of BLOCK_K: no edge masks.
        if EVEN_K:
            b_a = tl.load(p_a)
            b_b = tl.load(p_b)
        else:
            m_k = o_k < k_hi - i_k
            b_a = tl.load(p_a, mask=m_k[None, :], other=0.0)
            b_b = tl.load(p_b, mask=m_k[:, None], other=0.0)
        if UPCAST:
            b_a = b_a.to(tl.float32)
            b_b = b_b.to(tl.float32)
        b_acc = tl.dot(b_a, b_b, b_acc, input_precision=PRECISION)
        p_a += BLOCK_K * stride_ak
        p_b += BLOCK_K * stride_bk

    o_v = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    # Partials of one block sit next to each other: [nnz, split_k, BM, BN].
    i_out = i_s.to(tl.int64) * tl.num_programs(1) + i_kc
    tl.store(out_ptr + i_out * (BM * BN) + o_v, b_acc.to(out_ptr.dtype.element_ty))


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
    split_k, k_chunk = sdd_split_k(a.device, layout.nnz, K, granule)
    use_ws = split_k > 1
    target = torch.empty((layout.nnz, split_k, bm, bn), dtype=torch.float32, device=a.device) if use_ws else out
    sdd_kernel[(layout.nnz, split_k)](
        a,
        b,
        target,
        layout.row_indices,
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

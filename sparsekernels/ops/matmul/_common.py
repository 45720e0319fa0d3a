"""Launch helpers shared by the matmul kernels: argument checks, autotune config lists, the
row-splitting (load-balance) policy of ``dsd``/``dds`` and the kernel that sums split rows,
and the K-splitting policy of ``sdd``.

Load balance of ``dsd``/``dds``. Those kernels give each output block-row (a *segment*: a
block-row of ``S``, or a block-column for the transposed traversal) and each tile of the
dense dimension ``P`` to one program, which loops over the segment's blocks. A segment with
many more blocks than the others would keep one program busy long after the rest finished,
so a segment longer than ``split`` blocks is cut into chunks of ``split`` blocks, one
program each. Each chunk writes its fp32 partial product to a workspace (plain stores: no
zeroing, no atomics, deterministic), and :func:`reduce_split_partials_kernel` sums the
partials of split segments into the output. Segments of at most ``split`` blocks, zero
included, are written by one program directly, so a layout without long rows pays nothing.

Everything here is decided from Python ints (shapes, ``nnz``), never from the mask, so a new
topology with the same ``nnz`` reuses the compiled kernels and the autotuning results.

Hopper choices common to the three kernels (checked by compiling for sm_90, not by timing):
every dot has M >= 64 per warpgroup (warpgroup MMA), its tile loads are plain async copies
multi-buffered by the software pipeliner (indices prefetched one iteration ahead), and the
fp32 FMA path slices K to 16 (``DOT_K``). Not used, deliberately: TMA tensor descriptors
(``tl.make_tensor_descriptor``) — device-side descriptors in triton 3.6 need a host-set
global-scratch allocator (``triton.set_allocator``) and 16-byte-aligned strides, which the
any-strides operands (transposed views) do not guarantee, while async copies already keep
``num_stages - 1`` tiles in flight; and a persistent longest-first scheduler over a
device-built work list — the split workspace above bounds the longest program the same way
with plain stores, deterministically, and costs nothing on layouts without long segments.
Both stay open until a GPU measurement says they pay.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from sparsekernels.layout import BlockLayout, check_kernel_block_size
from sparsekernels.ops._triton_utils import check_kernel_dtype, dot_precision, fma_dot_k, upcast_dot_operands
from sparsekernels.ops.backends import interpreter_enabled

# Chunks shorter than this do not amortise the round trip of their partial through the
# workspace (BO x BLOCK_P fp32 written, then read back by the reduction kernel).
SPLIT_MIN = 8
# Programs resident per SM that the split policy aims to fill (2-4 CTAs of 4-8 warps fit an
# H100 SM with the tiles of the configs below).
PROGRAMS_PER_SM = 4
# Largest workspace the split policy may allocate; above it, chunks get longer instead.
WORKSPACE_BUDGET_BYTES = 256 << 20
# Dense-dimension tile assumed when sizing chunks (the autotuned BLOCK_P is not known yet).
NOMINAL_BLOCK_P = 64
# Chunk length used instead of the policy when set (tests force the split path on CPU,
# benchmarks compare policies). None: the policy of :func:`split_plan` decides.
FORCE_SPLIT: int | None = None
# sdd: K chunks per block used instead of the policy of :func:`sdd_split_k` when set.
FORCE_SPLIT_K: int | None = None
# sdd: shortest K range worth a program of its own (shorter ones pay more in partials
# written and summed than they gain in parallelism).
MIN_K_CHUNK = 512


def check_kernel_inputs(layout: BlockLayout, **tensors: torch.Tensor) -> None:
    """Block size and dtypes the Triton kernels are built for (after ``checks.check_*``)."""
    check_kernel_block_size(layout.block_size)
    for name, t in tensors.items():
        check_kernel_dtype(t, name)


def dot_flags(dtype: torch.dtype, block_k: int | None = None) -> dict:
    """The ``tl.dot`` constexprs of a launch: ``PRECISION`` (TF32 for fp32 only when torch's
    ``allow_tf32`` flag is on), ``UPCAST`` (see ``_triton_utils.upcast_dot_operands``) and,
    when ``block_k`` (the K extent of one block product) is given, ``DOT_K``: the K width of
    each ``tl.dot`` (see ``_triton_utils.fma_dot_k``)."""
    precision = dot_precision(dtype, torch.backends.cuda.matmul.allow_tf32)
    flags = {"PRECISION": precision, "UPCAST": upcast_dot_operands(dtype)}
    if block_k is not None:
        flags["DOT_K"] = fma_dot_k(dtype, precision, block_k)
    return flags


def pick_configs(gpu: list[triton.Config], interpreter: triton.Config) -> list[triton.Config]:
    """The GPU config list, or one config under the interpreter, where every tuning run would
    cost seconds of Python. Called once per kernel module at import (reads an env var only)."""
    return [interpreter] if interpreter_enabled() else gpu


def make_prune(
    stage_elems,
    acc_elems,
    smem_bytes: int = 200 * 1024,
    acc_regs: int = 128,
    fma_acc_regs: int = 32,
    mma_n=None,
):
    """An ``early_config_prune`` dropping configs that cannot run well on the GPU: pipelined
    tiles overflowing shared memory (``num_stages * stage_elems`` operand elements), or an
    fp32 accumulator above ``acc_regs`` registers per thread (it would spill).

    fp32 operands with ``PRECISION="ieee"`` (no TF32) have no tensor-core path: the dot is a
    register-blocked FMA loop whose operand fragments live in registers beside the
    accumulator, so the limit there is ``fma_acc_regs`` (sm_90 compiles, measured: a
    [128, 64] fp32 accumulator on 4 warps, 64 per thread, spilled ~30 KB; 32 per thread did
    not spill).

    ``stage_elems(config, args)`` / ``acc_elems(config, args)`` count elements from the
    config and the launch arguments; the operand dtype is that of ``values_ptr`` or
    ``a_ptr``. ``mma_n(args)``, when given, is the dot's N (the block size): 16-bit dots with
    N <= 16 keep 4 warps only (sm_90 compiles, measured: with 8 warps the gather loop of dsd
    and dds kept a single load in flight; a 16-column tile gains nothing from a second
    warpgroup). At least one config is kept, as the autotuner requires.
    """

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        ref = args.get("values_ptr", args.get("a_ptr"))
        itemsize = ref.element_size() if hasattr(ref, "element_size") else 4
        fma = itemsize == 4 and args.get("PRECISION", "ieee") != "tf32"
        limit = fma_acc_regs if fma else acc_regs

        def per_thread(c):
            return acc_elems(c, args) / (32 * c.num_warps)

        narrow = mma_n is not None and itemsize == 2 and mma_n(args) <= 16

        def fits(c):
            if narrow and c.num_warps > 4:
                return False
            smem = c.num_stages * stage_elems(c, args) * itemsize
            return smem <= smem_bytes and per_thread(c) <= limit

        kept = [c for c in configs if fits(c)]
        if kept:
            return kept
        # Nothing fits both limits: the smallest accumulator per thread among the configs that
        # fit shared memory (they must launch), else among all.
        smem_ok = [c for c in configs if c.num_stages * stage_elems(c, args) * itemsize <= smem_bytes] or configs
        return [min(smem_ok, key=lambda c: (per_thread(c), c.num_stages * stage_elems(c, args)))]

    return prune


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_plan(
    device: torch.device,
    n_inner: int,
    nnz: int,
    n_tiles: int,
    workspace_bytes_per_split: int,
) -> tuple[int, int]:
    """``(split, n_splits)``: the most blocks one program reduces, and the most programs a
    segment can be cut into (1 = no workspace, no reduction kernel).

    n_inner: blocks in the longest possible segment (the grid dimension being reduced).
    nnz: active blocks. n_tiles: programs per segment along the dense dims (P tiles x batch).
    workspace_bytes_per_split: fp32 bytes of one partial for every segment (n_segs*BO*P*batch*4).

    The default aims chunks at the work one resident program would do if all ``nnz * n_tiles``
    block products were spread evenly over the GPU: a segment is cut only when it is longer
    than that, i.e. when it would otherwise finish last. On CPU (interpreter) nothing runs in
    parallel, so nothing is split unless :data:`FORCE_SPLIT` asks.
    """
    split = FORCE_SPLIT
    if split is None:
        if device.type != "cuda":
            return max(n_inner, 1), 1
        slots = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        split = max(SPLIT_MIN, triton.cdiv(nnz * n_tiles, slots * PROGRAMS_PER_SM))
    if isinstance(split, bool) or not isinstance(split, int) or split < 1:
        raise ValueError(f"FORCE_SPLIT must be a positive int or None; got {split!r}")
    n_splits = triton.cdiv(n_inner, split)
    while n_splits > 1 and n_splits * workspace_bytes_per_split > WORKSPACE_BUDGET_BYTES:
        split *= 2
        n_splits = triton.cdiv(n_inner, split)
    return split, max(n_splits, 1)


def sdd_split_k(device: torch.device, nnz: int, K: int, granule: int) -> tuple[int, int]:
    """``(split_k, k_chunk)`` for sdd: K chunks per block, and the K range of each.

    Each active block is one program; with fewer blocks than resident program slots (low
    density, large blocks: e.g. 51 blocks of 128x128 on a 132-SM GPU) most SMs would idle,
    so K is cut until the slots fill, keeping chunks of at least :data:`MIN_K_CHUNK`.
    ``k_chunk`` is a multiple of ``granule`` (the largest BLOCK_K), so chunk edges never
    split a BLOCK_K step; chunks are never empty. On CPU nothing is split unless
    :data:`FORCE_SPLIT_K` asks.
    """
    split_k = FORCE_SPLIT_K
    if split_k is None:
        if device.type != "cuda" or nnz == 0:
            return 1, K
        slots = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        split_k = min(triton.cdiv(slots * PROGRAMS_PER_SM, nnz), K // MIN_K_CHUNK)
    if isinstance(split_k, bool) or not isinstance(split_k, int) or split_k < 1:
        raise ValueError(f"FORCE_SPLIT_K must be a positive int or None; got {split_k!r}")
    if split_k == 1 or K <= granule:
        return 1, K
    k_chunk = triton.cdiv(triton.cdiv(K, split_k), granule) * granule
    return triton.cdiv(K, k_chunk), k_chunk


@triton.jit
def gather_block_products(
    p_d0,  # [BLOCK_P, 1] pointers to the dense operand's rows of this tile
    stride_dk,  # dense operand stride along the reduction
    m_p,  # [BLOCK_P] valid rows
    p_v0,  # [DOT_K, BO] pointers into block 0 of the values (rows along the reduction)
    stride_vs,  # values stride between blocks
    stride_vi,  # values stride along the reduction
    inner_ptr,  # int32 [entries]: inner block index of each entry of the segment
    slots_ptr,  # int32 [entries]: values slot of each entry (GATHER only)
    i_lo,
    i_hi,
    BLOCK_P: tl.constexpr,
    BO: tl.constexpr,
    BI: tl.constexpr,
    DOT_K: tl.constexpr,
    GATHER: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """sum over entries e in [i_lo, i_hi) of D[:, inner_e*BI : (inner_e+1)*BI] @ V[slot_e] as a
    [BLOCK_P, BO] fp32 tile: the transposed tile of dsd and dds (M = the dense rows, >= 64, so
    warpgroup MMA at every block size). The next entry's indices are loaded one iteration ahead
    (loop-carried), so an iteration's tile loads depend on registers only and the software
    pipeliner keeps num_stages - 1 iterations in flight (loading the index in the iteration that
    uses it left one buffer and a full wait per block)."""
    o_i = tl.arange(0, DOT_K)
    b_acc = tl.zeros([BLOCK_P, BO], dtype=tl.float32)
    m_next = i_lo < i_hi
    i_in = tl.load(inner_ptr + i_lo, mask=m_next, other=0)
    if GATHER:
        i_slot = tl.load(slots_ptr + i_lo, mask=m_next, other=0)
    else:
        # int64: slot * stride_vs can pass 2^31; advanced by pointer (the interpreter's loop
        # index is a Python int, which has no .to()).
        p_v = p_v0 + i_lo.to(tl.int64) * stride_vs
    for i_e in range(i_lo, i_hi):
        if GATHER:
            p_v = p_v0 + i_slot.to(tl.int64) * stride_vs
        p_d = p_d0 + (i_in.to(tl.int64) * BI + o_i)[None, :] * stride_dk
        # DOT_K < BI only for the fp32 FMA dot (see dot_flags).
        for i_kk in tl.static_range(0, BI, DOT_K):
            b_d = tl.load(p_d + i_kk * stride_dk, mask=m_p[:, None], other=0.0)  # [BLOCK_P, DOT_K]
            b_v = tl.load(p_v + i_kk * stride_vi)  # [DOT_K, BO]
            if UPCAST:
                b_d = b_d.to(tl.float32)
                b_v = b_v.to(tl.float32)
            b_acc = tl.dot(b_d, b_v, b_acc, input_precision=PRECISION)
        m_next = i_e + 1 < i_hi
        i_in = tl.load(inner_ptr + i_e + 1, mask=m_next, other=0)
        if GATHER:
            i_slot = tl.load(slots_ptr + i_e + 1, mask=m_next, other=0)
        else:
            p_v += stride_vs
    return b_acc


@triton.jit(do_not_specialize=["SPLIT"])
def reduce_split_partials_kernel(
    ws_ptr,  # fp32 partials, addressed by the strides below
    out_ptr,  # output, addressed by the strides below
    seg_offsets_ptr,  # int32 [n_segs + 1]: block range of each segment
    N_SEGS,
    P,
    SPLIT,
    stride_wb,
    stride_ws,
    stride_wk,
    stride_wo,
    stride_wp,
    stride_ob,
    stride_oo,
    stride_op,
    BO: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """out[b, seg*BO + o, p] = sum_k ws[b, seg, k, o, p] for segments of more than SPLIT blocks.

    One program per (segment, P tile, batch); segments of at most SPLIT blocks were written
    by the matmul kernel itself and are skipped. Strides are in elements; "o" is the
    segment's output block dimension and "p" the dense dimension, whatever their memory order.
    """
    i_pid = tl.program_id(0)
    n_p = tl.cdiv(P, BLOCK_P)
    i_seg = i_pid % N_SEGS
    i_p = (i_pid // N_SEGS) % n_p
    i_b = (i_pid // N_SEGS // n_p).to(tl.int64)

    n_blk = tl.load(seg_offsets_ptr + i_seg + 1) - tl.load(seg_offsets_ptr + i_seg)
    if n_blk > SPLIT:
        o_o = tl.arange(0, BO).to(tl.int64)
        o_p = i_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        m_p = o_p < P
        p_w = ws_ptr + i_b * stride_wb + i_seg.to(tl.int64) * stride_ws
        p_w += o_o[:, None] * stride_wo + o_p[None, :] * stride_wp
        b_acc = tl.zeros([BO, BLOCK_P], dtype=tl.float32)
        for _i_k in range(0, tl.cdiv(n_blk, SPLIT)):
            b_acc += tl.load(p_w, mask=m_p[None, :], other=0.0)
            p_w += stride_wk
        p_o = out_ptr + i_b * stride_ob + (i_seg.to(tl.int64) * BO + o_o)[:, None] * stride_oo
        p_o += o_p[None, :] * stride_op
        tl.store(p_o, b_acc.to(out_ptr.dtype.element_ty), mask=m_p[None, :])


def reduce_split_partials(
    ws: torch.Tensor,
    out: torch.Tensor,
    seg_offsets: torch.Tensor,
    split: int,
    n_batch: int,
    P: int,
    ws_strides: tuple[int, int, int, int, int],
    out_strides: tuple[int, int, int],
    BO: int,
) -> None:
    """Launch :func:`reduce_split_partials_kernel` over every (segment, P tile, batch)."""
    n_segs = seg_offsets.shape[0] - 1
    block_p = 32 if interpreter_enabled() else 64
    grid = (n_segs * triton.cdiv(P, block_p) * n_batch,)
    reduce_split_partials_kernel[grid](
        ws, out, seg_offsets, n_segs, P, split, *ws_strides, *out_strides, BO=BO, BLOCK_P=block_p, num_warps=4
    )

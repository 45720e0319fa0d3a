"""Small helpers shared by the launchers of the Triton kernels (matmul and conv).

Nothing here imports triton or touches a device: the helpers turn torch dtypes and flags
into the plain Python values that launchers pass to kernels as ``tl.constexpr``.
"""

from __future__ import annotations

import torch

from sparsekernels.ops.backends import interpreter_enabled

# Dtypes the Triton kernels are built for (loads, tl.dot with fp32 accumulation, stores).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_kernel_dtype(t: torch.Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``t`` has a dtype the Triton kernels support."""
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}, but the Triton kernels support float32, float16 and "
            "bfloat16 only (use backend='reference' for other dtypes)"
        )


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``input_precision`` for ``tl.dot``: ``"tf32"`` for fp32 operands when the caller's torch
    flag allows TF32, else ``"ieee"`` (ignored by Triton for half-precision operands)."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def upcast_dot_operands(dtype: torch.dtype) -> bool:
    """Whether kernels must upcast their ``tl.dot`` tiles to fp32 before the dot.

    Triton's interpreter (3.9, measured) computes ``tl.dot`` on bfloat16 tiles wrongly
    (relative error ~1e9) while fp16/fp32 dots and bf16 loads are right, so bf16 tiles are
    upcast there only. Compiled kernels keep the native bf16 tensor-core dot.
    """
    return dtype == torch.bfloat16 and interpreter_enabled()


# K width of one tl.dot on the fp32 FMA path (fp32 operands without TF32): that dot holds
# whole K-rows of both operand tiles in registers, so a 64- or 128-wide K spilled (sm_90
# compiles, measured: dsd fp32 block 64, 12.7 KB; 16 wide: 126 registers, no spill); 16 is
# tl.dot's minimum K.
FMA_DOT_K = 16


def fma_dot_k(dtype: torch.dtype, precision: str, block_k: int) -> int:
    """K width of each ``tl.dot`` of a kernel whose block products have K extent ``block_k``:
    ``block_k`` itself, or :data:`FMA_DOT_K` for fp32 operands without TF32 (the FMA dot)."""
    return min(block_k, FMA_DOT_K) if dtype == torch.float32 and precision == "ieee" else block_k


def fallback_config(configs, registers, smem_bytes, limit: int, min_stages: int = 2):
    """For an ``early_config_prune`` whose every config overflows: the config with the fewest
    accumulator registers per thread (``registers(config)``) among those that fit shared memory
    (``smem_bytes(config) <= limit``); if none does, that config with ``num_stages`` lowered
    until it fits (not below ``min_stages``, which keeps one load in flight while the previous
    tile is consumed). A config that cannot launch is never returned while one can be made."""
    import triton

    fitting = [c for c in configs if smem_bytes(c) <= limit]
    if fitting:
        return min(fitting, key=registers)
    for c in sorted(configs, key=registers):
        for stages in range(c.num_stages - 1, min_stages - 1, -1):
            lowered = triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages, pre_hook=c.pre_hook)
            if smem_bytes(lowered) <= limit:
                return lowered
    return min(configs, key=registers)

"""The eager fast path of the native CPU backend: the ops as ``torch.autograd.Function``.

Every public op normally runs as a ``torch.library`` custom op (:mod:`sparsekernels.ops.library`),
which is what ``torch.compile``, ``torch.export`` and tracing need. In plain eager mode that
machinery costs 100-200 µs of Python per call (schema binding, pytree flattening, redispatch,
rewrapping the layout), about 5x a small native kernel: for batch-1 inference and small layers
it is most of the time. When nothing is tracing and the backend resolves to ``native``, the
public ops call the native functions through the autograd Functions below instead. Values and
gradients are the same functions on the same inputs (the gradient formulas are shared with the
custom ops' autograd), so results are bitwise identical to the custom-op path.

Not covered (they take the custom-op path): CUDA and the Triton/reference backends, anything
under ``torch.compile``/``torch.jit``/``torch.export``, functorch transforms, tensor subclasses
and dispatch modes. The eager backward is not itself differentiable (no double backward); the
custom-op path, forced with :func:`set_eager_fast_path` ``(False)``, is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sparsekernels import _checks
from sparsekernels.layout import INDEX_FIELDS, BlockLayout
from sparsekernels.ops import backends
from sparsekernels.ops import native_backend as nb
from sparsekernels.ops.library import conv_grads, dds_grads, dsd_grads, sdd_grads

__all__ = ["use_eager", "set_eager_fast_path", "sdd", "dsd", "dds", "conv2d"]

_enabled = True
_PLAIN = (Tensor, torch.nn.Parameter)
_NATIVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def set_eager_fast_path(enabled: bool) -> None:
    """Turn the eager native fast path on (default) or off (every call takes the custom op)."""
    global _enabled
    _enabled = bool(enabled)


def _tracing() -> bool:
    """Whether something other than plain eager execution would see this call."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    # Python dispatch modes (FlopCounterMode, FakeTensorMode, ...) and torch-function modes
    # expect to see the custom op.
    if torch._C._is_torch_function_mode_enabled():
        return True
    if torch.utils._python_dispatch._get_current_dispatch_mode() is not None:
        return True
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def use_eager(backend: str, *tensors: Tensor) -> bool:
    """Whether this call can take the eager native path (see the module docstring)."""
    # is_compiling first: dynamo folds it to True and must not trace the checks below.
    if torch.compiler.is_compiling() or not _enabled:
        return False
    for t in tensors:
        if (
            type(t) not in _PLAIN
            or not t.is_cpu
            or t.dtype not in _NATIVE_DTYPES
            or torch._C._functorch.is_functorch_wrapped_tensor(t)
        ):
            return False
    if _tracing():
        return False
    if backend == "auto":  # what backends.resolve answers for CPU tensors of a kernel dtype, without its checks
        return backends.native_available()
    return backends.resolve(backend, tensors[0].device, tensors[0].dtype) == "native"


class _LayoutGuard:
    """The layout a forward used, with its buffers' version counters: a backward after an
    in-place change of the layout (``set_layout`` between forward and backward) raises, as the
    custom ops' saved tensors do, instead of computing gradients for another topology."""

    __slots__ = ("layout", "versions")

    def __init__(self, layout: BlockLayout) -> None:
        self.layout = layout
        self.versions = tuple(getattr(layout, f)._version for f in INDEX_FIELDS)

    def get(self) -> BlockLayout:
        if tuple(getattr(self.layout, f)._version for f in INDEX_FIELDS) != self.versions:
            raise RuntimeError(
                "the layout of a sparse op was modified in place between its forward and its backward "
                "(set_layout before backward?): run backward first, then change the topology"
            )
        if _checks.enabled():  # debug-checks mode: validate before every kernel, backward included
            self.layout.validate()
        return self.layout


class _Sdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, layout: BlockLayout) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.guard = _LayoutGuard(layout)
        return nb._run_sdd(a, b, layout)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        L = ctx.guard.get()
        da, db = sdd_grads(
            grad,
            a,
            b,
            ctx.needs_input_grad[:2],
            lambda v, bb, t: nb._run_dsd(v, L, bb, t),
            lambda aa, v, t: nb._run_dds(aa, v, L, t),
        )
        return da, db, None


class _Dsd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, b: Tensor, layout: BlockLayout, transpose: bool) -> Tensor:
        ctx.save_for_backward(values, b)
        ctx.guard, ctx.transpose = _LayoutGuard(layout), transpose
        return nb._run_dsd(values, layout, b, transpose)

    @staticmethod
    def backward(ctx, grad):
        values, b = ctx.saved_tensors
        L = ctx.guard.get()
        dvalues, db = dsd_grads(
            grad,
            values,
            b,
            ctx.transpose,
            ctx.needs_input_grad[:2],
            lambda aa, bb: nb._run_sdd(aa, bb, L),
            lambda v, bb, t: nb._run_dsd(v, L, bb, t),
        )
        return dvalues, db, None, None


class _Dds(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, values: Tensor, layout: BlockLayout, transpose: bool) -> Tensor:
        ctx.save_for_backward(a, values)
        ctx.guard, ctx.transpose = _LayoutGuard(layout), transpose
        return nb._run_dds(a, values, layout, transpose)

    @staticmethod
    def backward(ctx, grad):
        a, values = ctx.saved_tensors
        L = ctx.guard.get()
        da, dvalues = dds_grads(
            grad,
            a,
            values,
            ctx.transpose,
            ctx.needs_input_grad[:2],
            lambda aa, bb: nb._run_sdd(aa, bb, L),
            lambda aa, v, t: nb._run_dds(aa, v, L, t),
        )
        return da, dvalues, None, None


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, layout: BlockLayout, geometry: tuple) -> Tensor:
        ctx.save_for_backward(x, values)
        ctx.guard, ctx.geometry = _LayoutGuard(layout), geometry
        return nb._run_conv2d_forward(x, values, layout, *geometry)

    @staticmethod
    def backward(ctx, grad):
        x, values = ctx.saved_tensors
        L, geometry = ctx.guard.get(), ctx.geometry
        dx, dvalues = conv_grads(
            grad,
            x,
            values,
            ctx.needs_input_grad[:2],
            lambda dy, v, shape: nb._run_conv2d_input_grad(dy, v, L, tuple(shape), *geometry),
            lambda xx, dy: nb._run_conv2d_weight_grad(xx, dy, L, *geometry),
        )
        return dx, dvalues, None, None


def _differentiable(*tensors: Tensor) -> bool:
    """Whether autograd must record this call. When it need not (``eval()`` under ``no_grad`` or
    ``inference_mode``, frozen inputs), the Function's bookkeeping (its node, the saved tensors,
    the layout guard) is skipped: the forward is the same function on the same inputs."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# The callers (sparsekernels.ops) checked every argument on entry: these run the kernels.
def sdd(a: Tensor, b: Tensor, layout: BlockLayout) -> Tensor:
    if _differentiable(a, b):
        return _Sdd.apply(a, b, layout)
    return nb._run_sdd(a, b, layout)


def dsd(values: Tensor, layout: BlockLayout, b: Tensor, transpose_sparse: bool) -> Tensor:
    if _differentiable(values, b):
        return _Dsd.apply(values, b, layout, bool(transpose_sparse))
    return nb._run_dsd(values, layout, b, bool(transpose_sparse))


def dds(a: Tensor, values: Tensor, layout: BlockLayout, transpose_sparse: bool) -> Tensor:
    if _differentiable(a, values):
        return _Dds.apply(a, values, layout, bool(transpose_sparse))
    return nb._run_dds(a, values, layout, bool(transpose_sparse))


def conv2d(x: Tensor, values: Tensor, layout: BlockLayout, geometry: Sequence[tuple[int, int]]) -> Tensor:
    """geometry: (kernel_size, stride, padding, dilation), each a pair of ints (normalised by
    ``checks.check_conv``)."""
    geometry = tuple(geometry)
    if _differentiable(x, values):
        return _Conv2d.apply(x, values, layout, geometry)
    return nb._run_conv2d_forward(x, values, layout, *geometry)

"""The eager native fast path (ops/eager.py) against the custom-op path: same values and
gradients bitwise, taken only in plain eager mode, and guarded against in-place layout changes."""

from __future__ import annotations

import pytest
import torch

from sparsekernels import BlockLayout, native_available, ops
from sparsekernels.ops import eager
from tests.helpers import random_block_mask

pytestmark = pytest.mark.skipif(not native_available(), reason="the native extension is not built")


@pytest.fixture
def custom_op_path():
    """Runs the body with the fast path off, then restores it."""

    class Switch:
        def __enter__(self):
            eager.set_eager_fast_path(False)

        def __exit__(self, *exc):
            eager.set_eager_fast_path(True)

    return Switch()


def _layout(R: int, C: int, block: int = 16, density: float = 0.4) -> BlockLayout:
    return BlockLayout.from_block_mask(random_block_mask(R, C, density), block)


def _cases():
    """name -> (fn(*inputs), inputs): every op, both transposes, batched and not."""
    lay = _layout(4, 6)
    M, N = lay.shape
    v = torch.randn(lay.values_shape())
    conv_lay = _layout(9 * 2, 3)  # K = 32, C = 48, 3x3 taps, block 16
    cv = torch.randn(conv_lay.values_shape())
    x = torch.randn(2, 48, 7, 6).to(memory_format=torch.channels_last)
    return {
        "sdd": (lambda a, b: ops.sdd(a, b, lay), (torch.randn(M, 40), torch.randn(40, N))),
        "dsd": (lambda v, b: ops.dsd(v, lay, b), (v, torch.randn(3, N, 24))),
        "dsd_t": (lambda v, b: ops.dsd(v, lay, b, True), (v, torch.randn(M, 24))),
        "dds": (lambda a, v: ops.dds(a, v, lay), (torch.randn(2, 24, M), v)),
        "dds_t": (lambda a, v: ops.dds(a, v, lay, True), (torch.randn(24, N), v)),
        "conv": (lambda x, v: ops.conv2d(x, v, conv_lay, 3, 1, 1), (x, cv)),
        "conv_s2": (lambda x, v: ops.conv2d(x, v, conv_lay, 3, 2, 1), (x, cv)),
    }


def _run(fn, inputs, grad_seed: int = 1):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    out.backward(g)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("name", list(_cases()))
def test_eager_path_is_bitwise_the_custom_op_path(name, custom_op_path):
    fn, inputs = _cases()[name]
    assert eager.use_eager("auto", *inputs)
    out, grads = _run(fn, inputs)
    with custom_op_path:
        assert not eager.use_eager("auto", *inputs)
        ref_out, ref_grads = _run(fn, inputs)
    assert torch.equal(out, ref_out), name
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r), name


def test_eager_path_is_taken_in_eager_mode_only():
    x = torch.randn(4, 4)
    assert eager.use_eager("auto", x) and eager.use_eager("native", x)
    assert not eager.use_eager("reference", x)
    assert not eager.use_eager("auto", x.double()), "float64 is not a native dtype: the custom op decides"
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        assert not eager.use_eager("auto", x), "a dispatch mode must see the custom op"
    seen = []

    def probe(t):
        seen.append(eager.use_eager("auto", t))
        return t

    torch.jit.trace(probe, (x,), check_trace=False)
    assert seen == [False], "under torch.jit.trace the custom op must be recorded"


def test_set_layout_between_forward_and_backward_raises():
    lay = _layout(4, 6)
    v = torch.randn(lay.values_shape(), requires_grad=True)
    out = ops.dsd(v, lay, torch.randn(lay.shape[1], 8))
    lay.col_indices.add_(0)  # an in-place write bumps the version counter, as set_layout does
    with pytest.raises(RuntimeError, match="modified in place between its forward and its backward"):
        out.sum().backward()


@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_eager_path_without_autograd_is_bitwise_the_custom_op_path(name, mode, custom_op_path):
    """Calls autograd need not record (no_grad, inference_mode, inputs without requires_grad)
    skip the autograd.Function: the same values, and nothing recorded."""
    fn, inputs = _cases()[name]
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode)
    leaves = [t.detach().clone().requires_grad_(mode != "frozen") for t in inputs]
    with ctx() if ctx else torch.enable_grad():
        out = fn(*leaves)
        with custom_op_path:
            want = fn(*leaves)
    assert out.grad_fn is None and not out.requires_grad
    assert torch.equal(out, want), name
    assert out.stride() == want.stride(), name

"""Argument checks of the convolution ops: the cached geometry part (checks._conv_geometry) must
reject exactly what the uncached checks reject, whatever was cached before."""

from __future__ import annotations

import pytest
import torch

from sparsekernels import BlockLayout, ops
from sparsekernels.ops import checks
from tests.helpers import random_block_mask


def _conv_layout() -> BlockLayout:
    return BlockLayout.from_block_mask(random_block_mask(9 * 2, 2, 0.5), 16)  # K = 32, C = 32, 3x3


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"kernel_size": 3.0}, TypeError, "kernel_size must be an int or a pair of ints"),
        ({"kernel_size": (3, True)}, TypeError, "kernel_size must be an int or a pair of ints"),
        ({"stride": True}, TypeError, "stride must be an int or a pair of ints"),
        ({"padding": (1.0, 1)}, TypeError, "padding must be an int or a pair of ints"),
        ({"dilation": 0}, ValueError, "dilation must be >= 1"),
        ({"padding": -1}, ValueError, "padding >= 0"),
        ({"kernel_size": 5}, ValueError, "multiple of R\\*S = 25"),
        ({"kernel_size": 2}, ValueError, "must be a multiple of the block size 16"),
    ],
)
def test_bad_geometry_raises_after_the_good_one_was_cached(kwargs, error, message):
    layout = _conv_layout()
    x = torch.randn(1, 32, 6, 6)
    v = torch.randn(layout.values_shape())
    good = {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1}
    for _ in range(2):  # the second call answers from the cache
        assert checks.check_conv(x, v, layout, **good) == ((3, 3), (1, 1), (1, 1), (1, 1))
    for _ in range(2):  # errors are not cached either
        with pytest.raises(error, match=message):
            checks.check_conv(x, v, layout, **{**good, **kwargs})
        with pytest.raises(error, match=message):
            ops.conv2d(x, v, layout, **{**good, **kwargs})


def test_lists_and_tuples_give_the_same_geometry():
    layout = _conv_layout()
    x = torch.randn(1, 32, 6, 6)
    v = torch.randn(layout.values_shape())
    want = checks.check_conv(x, v, layout, (3, 3), (2, 1), (1, 0), (1, 1))
    assert checks.check_conv(x, v, layout, [3, 3], [2, 1], [1, 0], [1, 1]) == want
    assert want == ((3, 3), (2, 1), (1, 0), (1, 1))
    # Tensor-dependent checks still run per call: input channels and spatial size.
    with pytest.raises(ValueError, match="x must have 32 input channels"):
        checks.check_conv(torch.randn(1, 16, 6, 6), v, layout, (3, 3), (2, 1), (1, 0), (1, 1))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        checks.check_conv(torch.randn(1, 32, 2, 6), v, layout, (3, 3), (2, 1), (0, 0), (1, 1))


def test_traced_conv_checks_skip_the_cache():
    """Under torch.compile the geometry checks run uncached (dynamo warns about lru_cache'd calls
    and ignores the cache): no warning, the same result."""
    import warnings

    layout = _conv_layout()
    x = torch.randn(1, 32, 6, 6)
    v = torch.randn(layout.values_shape())
    torch._dynamo.reset()
    fn = torch.compile(lambda x, v: ops.conv2d(x, v, layout, 3, 1, 1), fullgraph=True, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fn(x, v)
    assert torch.equal(y, ops.conv2d(x, v, layout, 3, 1, 1))

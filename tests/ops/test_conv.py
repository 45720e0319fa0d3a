"""Block-sparse convolution on every backend against ``F.conv2d`` on the masked dense weight.

Forward, input gradient and weight gradient run through ``sparsekernels.ops.conv2d`` and
autograd and are compared in float64 with the dtype tolerances of ``tests.helpers``; the
backend functions are also called directly. Outputs are NaN-poisoned, so an element a kernel
forgets to write fails. On CPU the Triton kernels run under the interpreter on the sampled
cases of ``conv_cases``; ``--device cuda`` adds the full product (``gpu`` marker).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from sparsekernels import native_available, ops
from sparsekernels.conv_layout import conv_layout_from_tap_masks, conv_matrix_to_weight, conv_weight_to_matrix
from sparsekernels.ops import backends
from sparsekernels.ops import reference as ref
from sparsekernels.ops._alloc import set_poison_outputs
from tests.helpers import RTOL, assert_close, random_block_mask, rel_error
from tests.ops.conv_cases import CPU_CASES, ConvCase, gpu_groups, gpu_inner

F64 = torch.float64
BACKENDS = [
    "reference",
    "triton",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="native extension not built")),
]


@pytest.fixture(autouse=True)
def _poison_and_no_tf32():
    """NaN-poison fresh outputs; keep fp32 convolutions exact (TF32 would exceed fp32 tolerance)."""
    allow_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    set_poison_outputs(True)
    yield
    set_poison_outputs(False)
    torch.backends.cudnn.allow_tf32 = allow_tf32


def _make(case: ConvCase, device):
    """Random layout, values, input and output gradient of ``case``."""
    taps, kb, cb = case.kernel**2, case.out_channels // case.block, case.in_channels // case.block
    tap_masks = random_block_mask(taps * kb, cb, case.density, device=device).reshape(taps, kb, cb)
    layout = conv_layout_from_tap_masks(tap_masks, case.block)
    values = torch.randn(layout.nnz, case.block, case.block, device=device).to(case.dtype)
    x = torch.randn(case.batch, case.in_channels, *case.size, device=device).to(case.dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_size = [(s + 2 * case.padding - case.kernel) // case.stride + 1 for s in case.size]
    dy = torch.randn(case.batch, case.out_channels, *out_size, device=device).to(case.dtype)
    return layout, values, x, dy


def _expected(case: ConvCase, layout, values, x, dy):
    """y, dx, dvalues in float64 by autograd through ``F.conv2d`` on the masked dense weight."""
    x64 = x.detach().to(F64).requires_grad_(True)
    v64 = values.detach().to(F64).requires_grad_(True)
    weight = conv_matrix_to_weight(layout.values_to_dense(v64), case.kernel)
    y64 = F.conv2d(x64, weight, None, case.stride, case.padding)
    y64.backward(dy.to(F64))
    return y64.detach(), x64.grad, v64.grad


def _check_autograd(case: ConvCase, backend: str, device) -> None:
    layout, values, x, dy = _make(case, device)
    x = x.requires_grad_(True)
    values = values.requires_grad_(True)
    y = ops.conv2d(x, values, layout, case.kernel, case.stride, case.padding, backend=backend)
    y.backward(dy)
    y64, dx64, dv64 = _expected(case, layout, values, x, dy)
    assert y.dtype == case.dtype and x.grad.dtype == case.dtype and values.grad.dtype == case.dtype
    assert_close(y, y64)
    assert_close(x.grad, dx64)
    assert_close(values.grad, dv64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
def test_conv2d_autograd(case, backend, device):
    _check_autograd(case, backend, device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CPU_CASES[::3], ids=lambda c: c.id)
def test_conv2d_backend_functions(case, backend, device):
    """The three backend functions called directly: shapes, dtypes, channels-last outputs."""
    impl = backends.module(backends.resolve(backend, device))
    layout, values, x, dy = _make(case, device)
    ks, st, pd, dl = (case.kernel,) * 2, (case.stride,) * 2, (case.padding,) * 2, (1, 1)
    y64, dx64, dv64 = _expected(case, layout, values, x, dy)

    y = impl.conv2d_forward(x, values, layout, ks, st, pd, dl)
    dx = impl.conv2d_input_grad(dy, values, layout, tuple(x.shape), ks, st, pd, dl)
    dv = impl.conv2d_weight_grad(x, dy, layout, ks, st, pd, dl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)
    assert dv.shape == values.shape and dv.is_contiguous()
    assert_close(y, y64)
    assert_close(dx, dx64)
    assert_close(dv, dv64)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", gpu_groups(), ids=lambda g: "-".join(map(str, g)))
def test_conv2d_autograd_full_product(group, backend, device):
    for case in gpu_inner(*group):
        try:
            _check_autograd(case, backend, device)
        except AssertionError as e:
            raise AssertionError(f"{case.id}: {e}") from e


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_rectangular_geometry(backend, device):
    """Different height and width kernel size, stride and padding (the kernels index them apart)."""
    layout = conv_layout_from_tap_masks(random_block_mask(3 * 2, 2, 0.5, device=device).reshape(3, 2, 2), 16)
    values = torch.randn(layout.nnz, 16, 16, device=device, requires_grad=True)
    x = torch.randn(2, 32, 7, 8, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = ops.conv2d(x, values, layout, (1, 3), (2, 1), (1, 0), backend=backend)
    dy = torch.randn_like(y)
    y.backward(dy)
    x64 = x.detach().to(F64).requires_grad_(True)
    v64 = values.detach().to(F64).requires_grad_(True)
    y64 = F.conv2d(x64, conv_matrix_to_weight(layout.values_to_dense(v64), (1, 3)), None, (2, 1), (1, 0))
    y64.backward(dy.to(F64))
    assert_close(y, y64)
    assert_close(x.grad, x64.grad)
    assert_close(values.grad, v64.grad)


@pytest.mark.parametrize("chunk", [7, 40])
def test_weight_grad_split_reduction(chunk, device):
    """Split-K of the weight gradient: ragged chunks, fp32 partials, one reduction."""
    from sparsekernels.ops.conv.weight_grad import launch_weight_grad

    backends.resolve("triton", device)
    case = ConvCase(2, 32, 32, (9, 7), 3, 2, 1, 16, 0.5, torch.bfloat16, True)
    layout, values, x, dy = _make(case, device)
    dy = dy.contiguous(memory_format=torch.channels_last)
    dv = launch_weight_grad(
        x, dy, layout.row_indices, layout.col_indices, (16, 16), (3, 3), (2, 2), (1, 1), False, chunk
    )
    assert_close(dv, _expected(case, layout, values, x, dy)[2])


@pytest.mark.parametrize("pixels, nnz", [(262144, 4), (262144, 5000), (4096, 230), (100, 1), (1 << 21, 1)])
def test_weight_grad_split_policy(pixels, nnz):
    """Split from Python ints only: chunks aligned to the largest BLOCK_P, enough programs, bounded workspace."""
    from sparsekernels.ops.conv import weight_grad

    chunk = weight_grad.pixels_per_split(pixels, nnz)
    split = -(-pixels // chunk)
    assert chunk == pixels or (chunk % 256 == 0 and chunk >= weight_grad._MIN_PIXELS_PER_SPLIT)
    assert split * nnz <= 2 * max(weight_grad._TARGET_PROGRAMS, nnz)  # workspace [split, nnz, bk, bc]
    if pixels >= 2 * weight_grad._MIN_PIXELS_PER_SPLIT * weight_grad._TARGET_PROGRAMS:
        assert split * nnz >= weight_grad._TARGET_PROGRAMS // 2  # a large reduction fills the GPU


@pytest.mark.parametrize("kernel", ["forward", "input_grad", "weight_grad"])
@pytest.mark.parametrize("block, dtype", [(16, torch.bfloat16), (64, torch.float32), (128, torch.float32)])
def test_gpu_config_pruning(kernel, block, dtype):
    """The H100 config lists minus what cannot fit; one config for tiny problems (no tuning)."""
    import importlib

    module = importlib.import_module(f"sparsekernels.ops.conv.{kernel}")
    t = torch.empty(0, dtype=dtype)
    args = {"x": t, "dy": t, "N": 64, "H": 56, "W": 56, "Ho": 56, "Wo": 56}
    kept = module._prune(module._GPU_CONFIGS, args, BLOCK_K=block, BLOCK_C=block)
    assert 1 <= len(kept) <= len(module._GPU_CONFIGS)
    if block == 16 and kernel == "weight_grad":
        assert len(kept) == len(module._GPU_CONFIGS)
    elif block == 16:  # 16-bit dots over 16-channel blocks: 4 warps (8 kept one load in flight)
        assert kept == [c for c in module._GPU_CONFIGS if c.num_warps == 4]
    tiny_args = {**args, "N": 1, "H": 7, "W": 7, "Ho": 7, "Wo": 7}
    tiny = module._prune(module._GPU_CONFIGS, tiny_args, BLOCK_K=16, BLOCK_C=16)
    assert len(tiny) == 1


@pytest.mark.parametrize("piece", ["forward", "input_grad", "weight_grad"])
def test_topology_change_keeps_tuning_key(piece, device, monkeypatch):
    """Layouts of equal and of different nnz give the same autotune key and constexprs, and any
    int argument that moves with the topology is excluded from value specialisation."""
    import importlib

    module = importlib.import_module(f"sparsekernels.ops.conv.{piece}")
    kernel = getattr(module, f"conv2d_{piece}_kernel")
    assert set(kernel.keys) <= set(kernel.arg_names)
    calls, run = [], kernel.run

    def record(*args, **kwargs):
        calls.append({**dict(zip(kernel.arg_names, args)), **kwargs})
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", record)
    impl = backends.module(backends.resolve("triton", device))
    x = torch.randn(2, 32, 9, 7, device=device).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(2, 32, 5, 4, device=device).contiguous(memory_format=torch.channels_last)
    geometry = ((3, 3), (2, 2), (1, 1), (1, 1))
    for density in (0.3, 0.3, 0.7):
        layout = conv_layout_from_tap_masks(random_block_mask(18, 2, density, device=device).reshape(9, 2, 2), 16)
        values = torch.randn(layout.nnz, 16, 16, device=device)
        if piece == "forward":
            impl.conv2d_forward(x, values, layout, *geometry)
        elif piece == "input_grad":
            impl.conv2d_input_grad(dy, values, layout, tuple(x.shape), *geometry)
        else:
            impl.conv2d_weight_grad(x, dy, layout, *geometry)
    assert len(calls) == 3
    assert len({tuple(c[k] for k in kernel.keys) for c in calls}) == 1
    jit = kernel.fn
    no_specialise = set(getattr(jit, "do_not_specialize", None) or jit.kwargs.get("do_not_specialize") or ())
    constexprs = {n for n, p in inspect.signature(jit.fn).parameters.items() if "constexpr" in str(p.annotation)}
    for name, value in calls[0].items():
        moved = any(c[name] != value for c in calls) if not isinstance(value, torch.Tensor) else False
        assert not (moved and name in constexprs), f"constexpr {name} depends on the topology"
        assert not (moved and isinstance(value, int) and name not in no_specialise), f"{name} is specialised"


def test_empty_batch(device):
    impl = backends.module(backends.resolve("triton", device))
    case = ConvCase(0, 16, 32, (5, 5), 3, 1, 1, 16, 0.5, torch.float32, True)
    layout, values, x, dy = _make(case, device)
    args = ((3, 3), (1, 1), (1, 1), (1, 1))
    assert impl.conv2d_forward(x, values, layout, *args).shape == (0, 32, 5, 5)
    assert impl.conv2d_input_grad(dy, values, layout, tuple(x.shape), *args).shape == x.shape
    assert torch.equal(impl.conv2d_weight_grad(x, dy, layout, *args), torch.zeros_like(values))


def test_dilation_falls_back_to_reference(device):
    case = ConvCase(1, 16, 16, (9, 7), 3, 1, 2, 16, 0.5, torch.float32, True)
    layout, values, x, _ = _make(case, device)
    x.requires_grad_(True)
    values.requires_grad_(True)
    with pytest.warns(UserWarning, match="dilation"):
        y = ops.conv2d(x, values, layout, 3, 1, 2, dilation=2, backend="triton")
        dy = torch.randn_like(y)
        y.backward(dy)
    x64 = x.detach().to(F64).requires_grad_(True)
    v64 = values.detach().to(F64).requires_grad_(True)
    y64 = F.conv2d(x64, conv_matrix_to_weight(layout.values_to_dense(v64), 3), None, 1, 2, 2)
    y64.backward(dy.to(F64))
    assert_close(y, y64)
    assert_close(x.grad, x64.grad)
    assert_close(values.grad, v64.grad)


@pytest.mark.gpu
def test_tf32_follows_cudnn_flag(device):
    """fp32 with cudnn.allow_tf32 runs TF32 dots: within TF32 error, not fp32's."""
    case = ConvCase(2, 64, 64, (17, 15), 3, 1, 1, 32, 1.0, torch.float32, True)
    layout, values, x, dy = _make(case, device)
    torch.backends.cudnn.allow_tf32 = True
    y = ops.conv2d(x, values, layout, 3, 1, 1, backend="triton")
    y64 = _expected(case, layout, values, x, dy)[0]
    assert_close(y, y64, scale=300.0)  # 3e-3: TF32 keeps 10 mantissa bits
    assert rel_error(y, y64) > RTOL[torch.float32], "allow_tf32=True but the result has full fp32 accuracy"


# ------------------------------------------------------------------------------ bad inputs
def _small(device, block=16, dtype=torch.float32):
    layout = conv_layout_from_tap_masks(random_block_mask(9 * 2, 2, 0.5, device=device).reshape(9, 2, 2), block)
    values = torch.randn(layout.nnz, block, block, device=device, dtype=dtype)
    x = torch.randn(1, 2 * block, 5, 5, device=device, dtype=dtype)
    return layout, values, x


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_name_the_parameter(backend, device):
    layout, values, x = _small(device)
    with pytest.raises(ValueError, match="x must have 32 input channels"):
        ops.conv2d(x[:, :16], values, layout, 3, padding=1, backend=backend)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv2d(x[0], values, layout, 3, padding=1, backend=backend)
    with pytest.raises(ValueError, match="R\\*S"):
        ops.conv2d(x, values, layout, 5, padding=2, backend=backend)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.conv2d(x.half(), values, layout, 3, padding=1, backend=backend)
    if backend == "reference":
        return  # the reference's backward pieces leave dy's shape to torch's own errors
    impl = backends.module(backends.resolve(backend, device))
    dy = torch.randn(1, 32, 4, 4, device=device)  # the output is 5x5
    with pytest.raises(ValueError, match="dy must have shape"):
        impl.conv2d_input_grad(dy, values, layout, tuple(x.shape), (3, 3), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="dy must have shape"):
        impl.conv2d_weight_grad(x, dy, layout, (3, 3), (1, 1), (1, 1), (1, 1))


def test_triton_rejects_block_size_and_float64(device):
    layout, values, x = _small(device, block=8)
    with pytest.raises(ValueError, match="block_size must be one of"):
        ops.conv2d(x, values, layout, 3, padding=1, backend="triton")
    layout, values, x = _small(device, dtype=F64)
    with pytest.raises(TypeError, match="float64"):
        ops.conv2d(x, values, layout, 3, padding=1, backend="triton")


def test_block_size_128(device):
    """128-channel blocks work too (not part of the swept table: large tiles are slow to interpret)."""
    case = ConvCase(1, 128, 128, (5, 5), 3, 2, 1, 128, 1.0, torch.float16, True)
    _check_autograd(case, "triton", device)


def test_layout_is_read_tap_major(device):
    """One active block at tap (0, 2) of out block 1, in block 0: exactly F.conv2d's W[16:32, 0:16, 0, 2]."""
    tap_masks = torch.zeros(9, 2, 2, dtype=torch.bool, device=device)
    tap_masks[2, 1, 0] = True
    layout = conv_layout_from_tap_masks(tap_masks, 16)
    values = torch.randn(1, 16, 16, device=device)
    weight = torch.zeros(32, 32, 3, 3, device=device)
    weight[16:32, 0:16, 0, 2] = values[0]
    assert torch.equal(conv_weight_to_matrix(weight), layout.values_to_dense(values))
    x = torch.randn(2, 32, 7, 7, device=device)
    assert_close(
        ops.conv2d(x, values, layout, 3, 1, 1, backend="triton"), F.conv2d(x.to(F64), weight.to(F64), None, 1, 1)
    )
    assert_close(ref.conv2d(x, values, layout, 3, 1, 1), F.conv2d(x.to(F64), weight.to(F64), None, 1, 1))


@pytest.mark.parametrize("kernel", ["forward", "input_grad", "weight_grad"])
def test_gpu_prune_keeps_a_config_that_fits_shared_memory(kernel):
    """fp32 at block 128 fits no listed config at its listed stages (sm_90 compile: 256-288 KB):
    the prune lowers the stages of its fallback instead of keeping one that cannot launch."""
    import importlib

    module = importlib.import_module(f"sparsekernels.ops.conv.{kernel}")
    t = torch.empty(0, dtype=torch.float32)
    args = {"x": t, "dy": t, "N": 256, "H": 16, "W": 16, "Ho": 16, "Wo": 16}
    kept = module._prune(module._GPU_CONFIGS, args, BLOCK_K=128, BLOCK_C=128)
    for c in kept:
        if kernel == "weight_grad":
            rows = module._group(c.kwargs["TILE_M"], 128) * 128
            smem = c.num_stages * c.kwargs["BLOCK_P"] * (rows + 128) * 4
        else:
            smem = c.num_stages * (c.kwargs["BLOCK_P"] * 128 + 128 * 128) * 4
        assert smem <= module._SMEM_BYTES and c.num_stages >= 2, (c, smem)

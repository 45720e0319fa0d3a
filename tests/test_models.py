"""CIFAR ResNets: shapes, parameter counts by hand, channels-last, building blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekernels.models import MODELS, build_model, resnet18, resnet20, resnet32, resnet56


def conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running statistics are buffers)


def hand_count(stages: list[int], blocks: list[int], num_classes: int = 10) -> int:
    """Parameters of stem + basic blocks (1×1 conv + BN projection where shapes change) + fc."""
    total = conv(3, 3, stages[0]) + bn(stages[0])
    c_in = stages[0]
    for i, (c, n) in enumerate(zip(stages, blocks)):
        for j in range(n):
            total += conv(3, c_in, c) + bn(c) + conv(3, c, c) + bn(c)
            if c_in != c or (i > 0 and j == 0):
                total += conv(1, c_in, c) + bn(c)
            c_in = c
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize(
    "factory, stages, blocks",
    [
        (resnet20, [16, 32, 64], [3, 3, 3]),
        (resnet32, [16, 32, 64], [5, 5, 5]),
        (resnet56, [16, 32, 64], [9, 9, 9]),
        (resnet18, [64, 128, 256, 512], [2, 2, 2, 2]),
    ],
)
def test_parameter_count_matches_hand_computation(factory, stages, blocks):
    model = factory()
    assert sum(p.numel() for p in model.parameters()) == hand_count(stages, blocks)


def test_known_totals():
    # ResNet-20 with option A has 0.27 M parameters (He et al. 2016); option B adds the two
    # projections (16·32 + 32·64 weights + BN). CIFAR ResNet-18 has 11,173,962.
    assert sum(p.numel() for p in resnet20().parameters()) == 272_474
    assert sum(p.numel() for p in resnet18().parameters()) == 11_173_962


def test_width_and_classes():
    model = resnet20(num_classes=100, width=2)
    assert model.stem[0].out_channels == 32
    assert model.fc.in_features == 128 and model.fc.out_features == 100
    assert sum(p.numel() for p in model.parameters()) == hand_count([32, 64, 128], [3, 3, 3], 100)


@pytest.mark.parametrize(
    "name, width", [("resnet20", 0.5), ("resnet32", 0.25), ("resnet56", 0.25), ("resnet18", 0.125)]
)
def test_output_shape(name, width):
    model = build_model(name, num_classes=10, width=width).eval()
    with torch.no_grad():
        y = model(torch.randn(3, 3, 32, 32))
    assert y.shape == (3, 10) and y.dtype == torch.float32


def test_channels_last_forward_matches_nchw():
    model = resnet20(width=0.5).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    assert actual.shape == (4, 10)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_only_conv_bn_linear_hold_weights():
    """Everything sparsify may convert is a Conv2d or Linear; nothing else but BN (and the SET
    MLP's SReLU, per-unit activation parameters) has weights."""
    from sparsekernels.models import SReLU

    for name in MODELS:
        model = build_model(name, width=0.125)
        for module in model.modules():
            if list(module.parameters(recurse=False)):
                assert isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, SReLU)), type(module)
            if isinstance(module, nn.Conv2d):
                assert module.bias is None, "BN follows every conv: a bias would be redundant"


def test_downsampling_blocks_project_the_shortcut():
    model = resnet20()
    first = model.stages[1][0]
    assert isinstance(first.shortcut, nn.Sequential)
    assert first.shortcut[0].kernel_size == (1, 1) and first.shortcut[0].stride == (2, 2)
    assert isinstance(model.stages[1][1].shortcut, nn.Identity)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="model"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="width"):
        resnet20(width=0)
    with pytest.raises(ValueError, match="num_classes"):
        resnet20(num_classes=0)

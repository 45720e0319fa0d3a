"""ResNets for 32×32 inputs, built only from Conv2d, BatchNorm2d, ReLU and Linear.

* ``resnet20/32/56``: He et al. 2016 (arXiv:1512.03385, section 4.2): a 3×3 stem with 16
  channels, three stages of ``n`` basic blocks with 16, 32, 64 channels (``depth = 6n + 2``),
  global average pooling, one linear layer. The paper's option A shortcut (zero-padded
  identity) has no weights; here every shape-changing shortcut is option B, a 1×1 conv + BN
  projection, so every weight in the model is a Conv2d/Linear that
  :func:`sparsekernels.sparsify` can convert.
* ``resnet18``: the CIFAR variant common in the sparse-training literature: a 3×3 stride-1
  stem with 64 channels and no max-pool, then four stages of two basic blocks with
  64, 128, 256, 512 channels.

``width`` multiplies every channel count (rounded, at least 1). Convolutions carry no bias:
each is followed by BatchNorm, whose shift makes a bias redundant.

``fused_bn_relu=True`` (or :meth:`ResNet.set_fused_bn_relu`) computes every BatchNorm that a
ReLU follows, with the residual add between them where there is one, as one fused op
(:func:`sparsekernels.nn.batch_norm_relu`: on float32 channels-last CPU tensors in training
mode, one native pass forward and two backward instead of ATen's separate kernels). The modules
and their state dict are the same either way; only the rounding of those layers differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from sparsekernels.nn.batchnorm import batch_norm_relu


def scale_channels(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be positive; got {width}")
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection.

    x: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H / stride, W / stride]``. The shortcut is
    the identity when shapes agree, else a 1×1 conv (stride ``stride``) + BN projection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, fused_bn_relu: bool = False) -> None:
        super().__init__()
        self.fused_bn_relu = fused_bn_relu
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bn_relu:
            out = batch_norm_relu(self.bn1, self.conv1(x))
            return batch_norm_relu(self.bn2, self.conv2(out), self.shortcut(x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages of :class:`BasicBlock`, global average pool, linear classifier.

    x: ``[B, 3, 32, 32]`` (fp32|bf16|fp16; NCHW or channels-last memory) -> logits ``[B, num_classes]``.

    Args:
        stage_channels: output channels of each stage (already scaled by the width).
        blocks_per_stage: number of basic blocks in each stage.
        stem_channels: channels of the 3×3 stem convolution.
        num_classes: classifier outputs.
        fused_bn_relu: compute BatchNorm + (residual add +) ReLU as one op (module docstring).
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        blocks_per_stage: Sequence[int],
        stem_channels: int,
        num_classes: int = 10,
        fused_bn_relu: bool = False,
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(blocks_per_stage):
            raise ValueError(
                f"stage_channels and blocks_per_stage must have equal length; got {len(stage_channels)} "
                f"and {len(blocks_per_stage)}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {num_classes}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_channels = stem_channels
        for i, (channels, blocks) in enumerate(zip(stage_channels, blocks_per_stage)):
            layers = []
            for j in range(blocks):
                # The first block of every stage but the first halves the resolution.
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.reset_parameters()
        self.set_fused_bn_relu(fused_bn_relu)

    def set_fused_bn_relu(self, enabled: bool) -> None:
        """Fuse BatchNorm + (residual add +) ReLU in the stem and every block, or not."""
        self.fused_bn_relu = bool(enabled)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                m.fused_bn_relu = self.fused_bn_relu

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init for ReLU networks, fan-out as in the original ResNet code.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bn_relu:
            x = self.stages(batch_norm_relu(self.stem[1], self.stem[0](x)))
        else:
            x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _cifar_resnet(depth: int, num_classes: int, width: float, fused_bn_relu: bool) -> ResNet:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2; got {depth}")
    n = (depth - 2) // 6
    channels = [scale_channels(c, width) for c in (16, 32, 64)]
    return ResNet(channels, [n] * 3, channels[0], num_classes, fused_bn_relu)


def resnet20(num_classes: int = 10, width: float = 1, fused_bn_relu: bool = False) -> ResNet:
    """ResNet-20 (0.27 M parameters at width 1 with option-B shortcuts)."""
    return _cifar_resnet(20, num_classes, width, fused_bn_relu)


def resnet32(num_classes: int = 10, width: float = 1, fused_bn_relu: bool = False) -> ResNet:
    """ResNet-32 (0.47 M parameters at width 1)."""
    return _cifar_resnet(32, num_classes, width, fused_bn_relu)


def resnet56(num_classes: int = 10, width: float = 1, fused_bn_relu: bool = False) -> ResNet:
    """ResNet-56 (0.86 M parameters at width 1)."""
    return _cifar_resnet(56, num_classes, width, fused_bn_relu)


def resnet18(num_classes: int = 10, width: float = 1, fused_bn_relu: bool = False) -> ResNet:
    """CIFAR ResNet-18: 3×3 stem, no max-pool, 64-128-256-512 channels (11.2 M parameters)."""
    channels = [scale_channels(c, width) for c in (64, 128, 256, 512)]
    return ResNet(channels, [2, 2, 2, 2], channels[0], num_classes, fused_bn_relu)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
}


def build_model(name: str, num_classes: int = 10, width: float = 1, **options) -> nn.Module:
    """A dense model by name (one of :data:`MODELS`); ``options`` go to its builder (e.g. the
    MLP's ``hidden``/``activation``/``dropout``)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}; got {name!r}")
    return MODELS[name](num_classes=num_classes, width=width, **options)

"""Dense CIFAR models; :func:`sparsekernels.sparsify` makes them sparse."""

from sparsekernels.models.resnet import (
    MODELS,
    BasicBlock,
    ResNet,
    build_model,
    resnet18,
    resnet20,
    resnet32,
    resnet56,
    scale_channels,
)

__all__ = [
    "MODELS",
    "BasicBlock",
    "ResNet",
    "build_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet56",
    "scale_channels",
]

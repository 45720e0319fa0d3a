"""Dense CIFAR models; :func:`sparsekernels.sparsify` makes them sparse."""

from sparsekernels.models.mlp import SET_HIDDEN, SetMLP, SReLU, set_mlp
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

MODELS["set-mlp"] = set_mlp

__all__ = [
    "MODELS",
    "SET_HIDDEN",
    "BasicBlock",
    "ResNet",
    "SReLU",
    "SetMLP",
    "build_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet56",
    "scale_channels",
    "set_mlp",
]

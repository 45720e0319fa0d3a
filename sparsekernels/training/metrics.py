"""Model size and cost: active parameters and forward FLOPs, dense and block-sparse alike."""

from __future__ import annotations

import math

import torch
from torch import nn


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total": stored parameter elements, "nonzero": those that are nonzero}``.

    A block-sparse layer stores only its active blocks (``weight_values [nnz, bm, bn]``), so
    ``total`` is the number of active weights; ``nonzero`` can be a little lower right after a
    topology update (grown blocks start at zero).
    """
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return {"total": int(total), "nonzero": nonzero}


def _layer_macs(module: nn.Module, output: torch.Tensor) -> tuple[float, float] | None:
    """(dense MACs, MACs at the layer's density) per sample for a conv/linear-like layer."""
    if hasattr(module, "in_channels") and hasattr(module, "kernel_size"):
        k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        per_output = module.in_channels // getattr(module, "groups", 1) * math.prod(k)
    elif hasattr(module, "in_features"):
        per_output = module.in_features
    else:
        return None
    dense = output[0].numel() * per_output
    # Sparse layers expose their kept fraction; a block-sparse kernel skips the rest.
    density = float(getattr(module, "density", 1.0))
    return float(dense), float(dense) * density


def count_flops(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Forward FLOPs per image of the conv/linear layers (2 per multiply-accumulate).

    example: ``[B, 3, H, W]`` on the model's device (any B >= 1). Returns
    ``{"dense": FLOPs of the dense model, "effective": FLOPs counting only active weights}``.
    BatchNorm, ReLU, pooling and additions are left out (< 1 % of a ResNet's forward).
    Runs one forward in eval mode without gradients; the model's mode is restored.
    """
    dense = effective = 0.0
    handles = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal dense, effective
        macs = _layer_macs(module, output)
        if macs is not None:
            dense += macs[0]
            effective += macs[1]

    for module in model.modules():
        # Leaf compute layers only: nn.Conv2d/nn.Linear and the sparse layers, which carry
        # the same attributes and a ``density``.
        if isinstance(module, (nn.Conv2d, nn.Linear)) or (
            hasattr(module, "density") and (hasattr(module, "in_channels") or hasattr(module, "in_features"))
        ):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {"dense": 2.0 * dense, "effective": 2.0 * effective}

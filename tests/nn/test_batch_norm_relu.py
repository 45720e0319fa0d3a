"""sparsekernels.nn.batch_norm_relu (a BatchNorm module's state with the fused op) and the
ResNets' fused_bn_relu option against nn.BatchNorm2d + ReLU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekernels.models import resnet20
from sparsekernels.nn import batch_norm_relu, sparsify
from sparsekernels.ops import batchnorm

pytestmark = pytest.mark.skipif(
    not batchnorm.fused_batch_norm_available(), reason="native extension without the fused BatchNorm"
)


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_state_follows_nn_batchnorm(momentum):
    """Running mean/var (unbiased) and num_batches_tracked advance as nn.BatchNorm2d's, over
    several training steps; eval mode then uses them."""
    fused, aten = nn.BatchNorm2d(12, momentum=momentum), nn.BatchNorm2d(12, momentum=momentum)
    g = torch.Generator().manual_seed(5)
    for step in range(3):
        x = nhwc(2 * torch.randn(6, 12, 5, 4, generator=g) + step)
        y = batch_norm_relu(fused, x)
        torch.testing.assert_close(y, torch.relu(aten(x)), rtol=1e-5, atol=1e-5)
    assert int(fused.num_batches_tracked) == int(aten.num_batches_tracked) == 3
    torch.testing.assert_close(fused.running_mean, aten.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.running_var, aten.running_var, rtol=1e-6, atol=1e-6)
    fused.eval(), aten.eval()
    x = nhwc(torch.randn(2, 12, 5, 4, generator=g))
    r = nhwc(torch.randn(2, 12, 5, 4, generator=g))
    torch.testing.assert_close(batch_norm_relu(fused, x, r), torch.relu(aten(x) + r))


def test_module_without_running_stats_normalises_with_the_batch_in_eval_too():
    bn = nn.BatchNorm2d(8, track_running_stats=False).eval()
    x = nhwc(torch.randn(4, 8, 3, 3))
    assert batchnorm.fused_batch_norm_applies(x)
    torch.testing.assert_close(batch_norm_relu(bn, x), torch.relu(bn(x)), rtol=1e-5, atol=1e-5)


def test_running_stats_update_does_not_invalidate_a_saved_aten_graph():
    bn = nn.BatchNorm2d(4)
    x = nhwc(torch.randn(3, 4, 2, 2)).requires_grad_()
    y = bn(x)  # ATen saves the running stats for its backward
    batch_norm_relu(bn, x.detach())
    y.sum().backward()  # would raise if the fused update had bumped their version
    assert x.grad is not None


def test_sparse_resnet_steps_with_and_without_fusion_agree():
    """A sparse ResNet-20 (native backend, channels-last): forward, loss, every gradient and the
    BatchNorm buffers with fused_bn_relu agree with the ATen ops; the state dict is the same."""
    torch.manual_seed(0)
    model = resnet20(width=0.5)
    sparsify(model, density=0.3, block_size=8, distribution="erk", backend="native")
    model = model.to(memory_format=torch.channels_last)
    keys = list(model.state_dict())
    x = nhwc(torch.randn(6, 3, 32, 32))
    target = torch.randint(0, 10, (6,))
    results = {}
    for fused in (False, True):
        clone = resnet20(width=0.5)
        sparsify(clone, density=0.3, block_size=8, distribution="erk", backend="native")
        clone = clone.to(memory_format=torch.channels_last)
        clone.load_state_dict(model.state_dict())
        clone.set_fused_bn_relu(fused)
        loss = nn.functional.cross_entropy(clone(x), target)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in clone.named_parameters()}
        results[fused] = (loss.detach(), grads, {n: b.clone() for n, b in clone.named_buffers()})
        assert list(clone.state_dict()) == keys
    (loss0, grads0, bufs0), (loss1, grads1, bufs1) = results[False], results[True]
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-5)
    for name in grads0:
        scale = grads0[name].norm().clamp_min(1e-12)
        assert ((grads1[name] - grads0[name]).norm() / scale).item() < 1e-4, name
    for name in bufs0:
        torch.testing.assert_close(bufs1[name], bufs0[name], rtol=1e-5, atol=1e-6)

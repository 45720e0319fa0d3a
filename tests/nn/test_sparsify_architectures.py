"""sparsify on models written the way people write them (torchvision/timm style, rewritten
small here: torchvision does not import beside the CPU torch), checked forward and backward
against the dense model carrying the same mask.

Each test copies the dense model, sparsifies the original, copies the sparse layers' masked
weights (``layer.weight``) into the copy, and compares outputs, input gradients and the
gradients of every parameter, in float64 on the reference backend (and once in float32 on the
default backend).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsekernels import SparseConv2d, SparseLinear, sparsify
from sparsekernels.nn import sparse_modules
from tests.helpers import RTOL, assert_close


# ----------------------------------------------------------------------------- the models
class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck: 1x1 reduce, 3x3 (stride here), 1x1 expand x4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet's structure (7x7 stem, max-pool, four stages with a
    ``downsample`` Sequential, average pool, fc), with a base width parameter."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(width: int = 16, num_classes: int = 10) -> ResNet:
    return ResNet((3, 4, 6, 3), width, num_classes)


class VGG(nn.Module):
    """torchvision's VGG-11-BN pattern (features / avgpool / classifier with dropout), flattened
    with ``x.view(x.size(0), -1)`` as much user code does."""

    def __init__(self, cfg=(16, "M", 32, "M", 64, 64, "M", 128, 128, "M"), num_classes: int = 10) -> None:
        super().__init__()
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 4, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(x.view(x.size(0), -1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise (groups = channels), 1x1 project."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(inplace=True),
            InvertedResidual(16, 16, 1, 2),
            InvertedResidual(16, 32, 2, 4),
            InvertedResidual(32, 32, 1, 4),
            nn.Conv2d(32, 64, 3, padding=1, groups=2, bias=False),  # a grouped (not depthwise) conv
            nn.Conv2d(64, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU6(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention (``nn.MultiheadAttention``, whose ``out_proj`` is
    used through its ``.weight`` by torch and must stay untouched) and the MLP, on
    ``[batch, tokens, features]``."""

    def __init__(self, dim: int = 32, hidden: int = 128, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[TransformerBlock(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):  # x: [batch, tokens, dim]
        return self.head(self.blocks(x).mean(dim=1))


# ----------------------------------------------------------------------------- the check
def _sparsify_and_compare(
    model: nn.Module, x: torch.Tensor, dtype=torch.float64, backend="reference", device="cpu", **kwargs
):
    """Sparsify ``model`` (in ``dtype``, on ``device``), build its dense twin with the same mask,
    and check forward and backward against it. Returns the summary."""
    model = model.to(device=device, dtype=dtype)
    x = x.to(device)
    if dtype != torch.float64:
        # Train-mode BatchNorm over a batch of 2 at 1x1 spatial size is so ill-conditioned that
        # the *dense* fp32 model is 17 % off its fp64 self: compare fp32 with running statistics.
        model.eval()
    x = x.to(dtype)
    dense = copy.deepcopy(model)
    summary = sparsify(model, backend=backend, **kwargs)
    assert summary.sparse_layers, "the test model must get sparse layers"
    with torch.no_grad():
        for name, layer in sparse_modules(model):
            dense.get_submodule(name).weight.copy_(layer.weight)  # masked dense weight
    # Dropout draws the same masks in both models when each forward starts from the same seed.
    x_sparse, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(1)
    y = model(x_sparse)
    torch.manual_seed(1)
    y_ref = dense(x_dense)
    scale = 1.0 if dtype == torch.float64 else 20.0  # fp32 through ~50 layers vs fp64 twin
    ref64 = y_ref.detach().double()
    assert_close(y, ref64, dtype, scale)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    assert_close(x_sparse.grad, x_dense.grad.double(), dtype, scale)
    dense_params = dict(dense.named_parameters())
    sparse_names = {name for name, _ in sparse_modules(model)}
    # A conv bias followed by BatchNorm has an exactly-zero gradient, computed as rounding noise:
    # relative errors are taken against at least a thousandth of the largest gradient's norm.
    floor = 1e-3 * max(p.grad.double().norm() for p in dense.parameters() if p.grad is not None)
    tol = RTOL[dtype] * scale
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in sparse_names and leaf == "weight_values":
            layer = model.get_submodule(owner)
            matrix = layer._weight_to_matrix(dense_params[f"{owner}.weight"].grad)
            expected = layer.layout.dense_to_values(matrix)
        else:
            expected = dense_params[name].grad
        if expected is None:  # unused parameter (e.g. MultiheadAttention's absent biases)
            assert p.grad is None, name
            continue
        diff = (p.grad.double() - expected.double()).norm()
        assert torch.isfinite(p.grad).all(), name
        assert diff <= tol * max(expected.double().norm(), floor), f"{name}: gradient differs by {diff:.3e}"
    return summary


def test_resnet50_bottlenecks_and_downsample():
    torch.manual_seed(0)
    model = resnet50(width=16)
    summary = _sparsify_and_compare(model, torch.randn(2, 3, 32, 32), density=0.2, block_size=16)
    status = {s.name: s.status for s in summary}
    assert status["conv1"] == "dense: first conv" and status["fc"] == "dense: classifier"
    # every bottleneck conv and every downsample conv was reached inside nested Sequentials
    for stage in (model.layer2, model.layer3, model.layer4):
        assert isinstance(stage[0].downsample[0], SparseConv2d)
    assert isinstance(model.layer3[5].conv2, SparseConv2d)
    assert len(summary) == 16 * 3 + 4 + 2  # 16 bottlenecks, 4 downsamples, stem, fc
    assert sum(isinstance(m, SparseConv2d) for m in model.modules()) == len(summary.sparse_layers)
    # ERK gives the small early 1x1 convs density 1: left dense and reported as capped
    assert status["layer1.0.downsample.0"] == "dense: capped at density 1"
    assert 0.15 < summary.global_density < 0.25


def test_resnet50_float32_default_backend():
    torch.manual_seed(0)
    model = resnet50(width=16)
    _sparsify_and_compare(
        model, torch.randn(2, 3, 32, 32), dtype=torch.float32, backend="auto", density=0.2, block_size=16
    )


def test_vgg_with_view_flatten_and_dropout():
    torch.manual_seed(0)
    model = VGG()
    summary = _sparsify_and_compare(
        model, torch.randn(2, 3, 32, 32), density=0.3, block_size=16, distribution="uniform"
    )
    status = {s.name: s.status for s in summary}
    assert status["features.0"] == "dense: first conv"
    assert status["classifier.6"] == "dense: classifier"
    assert isinstance(model.classifier[0], SparseLinear) and isinstance(model.features[4], SparseConv2d)


def test_mobilenet_grouped_and_depthwise_are_skipped_and_reported():
    torch.manual_seed(0)
    model = MobileNet()
    summary = _sparsify_and_compare(model, torch.randn(2, 3, 32, 32), density=0.3, block_size=16)
    skipped = {s.name for s in summary if s.status.startswith("skipped: groups")}
    depthwise = {f"features.{i}.conv.3" for i in (3, 4, 5)}
    assert skipped == depthwise | {"features.6"}
    for name in skipped:
        assert type(model.get_submodule(name)) is nn.Conv2d
        assert name in str(summary)
    assert isinstance(model.features[4].conv[0], SparseConv2d)  # the 1x1 expand
    assert isinstance(model.features[7], SparseConv2d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_transformer_mlp_on_tokens(dtype):
    torch.manual_seed(0)
    model = TinyViT()
    backend = "reference" if dtype == torch.float64 else "auto"
    summary = _sparsify_and_compare(
        model, torch.randn(3, 7, 32), dtype=dtype, backend=backend, density=0.25, block_size=16
    )
    names = {s.name for s in summary.sparse_layers}
    assert names == {f"blocks.{i}.mlp.{j}" for i in (0, 1) for j in (0, 2)}
    # MultiheadAttention's out_proj (a Linear subclass torch reads through .weight) is left alone
    assert type(model.blocks[0].attn.out_proj) is not SparseLinear
    assert "blocks.0.attn.out_proj" not in {s.name for s in summary}


# ----------------------------------------------------------------------------- the real libraries (GPU machine)
@pytest.mark.gpu
def test_torchvision_resnet50(device):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10)
    summary = _sparsify_and_compare(
        model, torch.randn(2, 3, 64, 64), dtype=torch.float32, backend="auto", device=device, density=0.2, block_size=32
    )
    assert len(summary.sparse_layers) > 40


@pytest.mark.gpu
def test_timm_vit(device):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    summary = _sparsify_and_compare(
        model,
        torch.randn(2, 3, 224, 224),
        dtype=torch.float32,
        backend="auto",
        device=device,
        density=0.3,
        block_size=32,
    )
    names = {s.name for s in summary.sparse_layers}
    assert "blocks.0.mlp.fc1" in names and "blocks.11.mlp.fc2" in names

"""The SET data pipeline (Mocanu et al. 2018, CIFAR-10 MLP), batched on the training device.

* **Per-pixel standardisation**: every one of the 3·32·32 input values gets the mean and
  standard deviation of that pixel and channel over the training images,
  ``x = (x − mean[c, h, w]) / std[c, h, w]`` (not the usual per-channel normalisation).
* **Augmentation** of the standardised training images, as the reference's Keras
  ``ImageDataGenerator(rotation_range=10, width_shift_range=0.1, height_shift_range=0.1,
  horizontal_flip=True)``: a rotation by an angle uniform in ±10°, a shift uniform in ±10 %
  of the width and of the height, a left-right mirror with probability 1/2; bilinear
  interpolation, pixels from outside the image take the nearest edge pixel (Keras'
  ``fill_mode="nearest"``). Each batch is one :func:`affine_grid` + ``grid_sample``.

Test images are standardised with the training statistics and not augmented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparsekernels.data.cifar10 import Split
from sparsekernels.data.loader import DeviceLoader

SET_ROTATION_DEGREES = 10.0
SET_SHIFT_FRACTION = 0.1
# Guards the division for a pixel that is constant over the training set (std 0).
STD_FLOOR = 1e-6


def pixel_statistics(images: torch.Tensor, chunk: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and (population) standard deviation of uint8 ``[N, C, H, W]`` images.

    Returns two fp32 ``[C, H, W]`` tensors on the images' device, on the 0–255 scale.
    Accumulated in float64 over chunks, so 50,000 images never exist in float at once.
    """
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be [N, C, H, W] with N >= 1; got shape {tuple(images.shape)}")
    total = torch.zeros(images.shape[1:], dtype=torch.float64, device=images.device)
    squares = torch.zeros_like(total)
    for lo in range(0, images.shape[0], chunk):
        x = images[lo : lo + chunk].to(torch.float64)
        total += x.sum(0)
        squares += x.square().sum(0)
    n = images.shape[0]
    mean = total / n
    var = (squares / n - mean.square()).clamp_(min=0.0)
    return mean.float(), var.sqrt().float()


def standardize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> fp32 ``(x − mean) / std`` with per-pixel ``[C, H, W]`` statistics."""
    return (images.float() - mean) / std.clamp(min=STD_FLOOR)


def affine_theta(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """``[B, 2, 3]`` matrices for ``F.affine_grid``: output pixel ``p`` (normalised coordinates,
    the image spans [-1, 1]) samples the input at ``R(angle) · (m·p_x, p_y) + (tx, ty)``.

    angle: radians ``[B]``; tx, ty: shifts in normalised units ``[B]`` (a shift by a fraction
    ``s`` of the size is ``2 s``); mirror: ``[B]`` of ±1 (−1 mirrors left-right).
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos * mirror, -sin, tx], 1), torch.stack([sin * mirror, cos, ty], 1)], 1)


def _pixel_centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """``[n]`` normalised pixel centres, computed as ATen's affine_grid does (a single pixel: 0)."""
    if n <= 1:
        return torch.zeros(n, device=like.device, dtype=like.dtype)
    return torch.linspace(-1.0, 1.0, n, device=like.device, dtype=like.dtype) * (n - 1) / n


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, [B, C, height, width], align_corners=False)``: ``[B, height, width, 2]``.

    Pixel centres in normalised coordinates, ``u_w = (2w + 1)/W − 1`` (built as ATen builds
    them), mapped by each ``[2, 3]`` matrix as ``(u·a0 + v·a1) + a2``: broadcast arithmetic
    instead of ATen's batched matmul with a reduction of 3 (on the CPU a BLAS call that cost
    more than the resampling itself). On the CPU this is bitwise ``F.affine_grid``'s result
    (the BLAS there sums the same products in the same order); the tests hold it to fp32
    rounding, which any BLAS meets.
    """
    u, v = _pixel_centres(width, theta), _pixel_centres(height, theta)
    # Both coordinates as contiguous [B, 2, H, W] planes (vectorised loops), then one
    # interleaving copy: ~3x faster than broadcasting into the [.., 2] layout directly.
    planes = u.view(1, 1, 1, width) * theta[:, :, 0].reshape(-1, 2, 1, 1)
    planes = planes + v.view(1, 1, height, 1) * theta[:, :, 1].reshape(-1, 2, 1, 1)
    planes = planes.add_(theta[:, :, 2].reshape(-1, 2, 1, 1))
    return planes.permute(0, 2, 3, 1).contiguous()


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample float ``[B, C, H, W]`` with ``[B, 2, 3]`` matrices: bilinear, nearest-edge fill."""
    grid = affine_grid(theta.to(x.dtype), x.shape[2], x.shape[3])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_affine(
    x: torch.Tensor,
    rotation_degrees: float = SET_ROTATION_DEGREES,
    shift_fraction: float = SET_SHIFT_FRACTION,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate, shift and (optionally) mirror each image of a float ``[B, C, H, W]`` batch at random.

    Angle uniform in ``±rotation_degrees``, shifts uniform in ``±shift_fraction`` of the width
    and height, mirror with probability 1/2; one bilinear ``grid_sample`` with border padding
    (nearest-edge fill). Returns a tensor of the same shape and dtype.
    """
    if not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"x must be a float [B, C, H, W] tensor; got {x.dtype} {tuple(x.shape)}")
    u = torch.rand(x.shape[0], 4, device=x.device, generator=generator)
    angle = (2.0 * u[:, 0] - 1.0) * math.radians(rotation_degrees)
    tx = (2.0 * u[:, 1] - 1.0) * (2.0 * shift_fraction)
    ty = (2.0 * u[:, 2] - 1.0) * (2.0 * shift_fraction)
    mirror = torch.where(u[:, 3] < 0.5, -1.0, 1.0) if flip else torch.ones_like(angle)
    return apply_affine(x, affine_theta(angle, tx, ty, mirror))


class SetLoader(DeviceLoader):
    """:class:`DeviceLoader` with the SET pipeline: per-pixel standardisation with the given
    training statistics and, when ``augment``, :func:`random_affine`.

    ``mean``/``std``: fp32 ``[3, H, W]`` from :func:`pixel_statistics` of the *training* split
    (pass the same ones to the test loader). Other arguments as :class:`DeviceLoader`
    (``padding`` is unused). Batches are fp32 ``[B, 3, H, W]``, labels int64 ``[B]``.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        mean: torch.Tensor,
        std: torch.Tensor,
        rotation_degrees: float = SET_ROTATION_DEGREES,
        shift_fraction: float = SET_SHIFT_FRACTION,
        **kwargs,
    ) -> None:
        super().__init__(split, batch_size, **kwargs)
        shape = tuple(split.images.shape[1:])
        for name, t in (("mean", mean), ("std", std)):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have the image shape {shape}; got {tuple(t.shape)}")
        self.mean = mean.to(self.device, torch.float32)
        self.std = std.to(self.device, torch.float32)
        self.rotation_degrees = float(rotation_degrees)
        self.shift_fraction = float(shift_fraction)

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = standardize(images, self.mean, self.std)
        if self.augment:
            x = random_affine(x, self.rotation_degrees, self.shift_fraction, True, generator)
        return x.to(self.dtype)


def set_loaders(
    train: Split, test: Split, batch_size: int, *, seed: int = 0, test_batch_size: int | None = None
) -> tuple[SetLoader, SetLoader]:
    """Training (shuffled, augmented, full batches) and test loaders of the SET pipeline, both
    standardised with the statistics of ``train``."""
    mean, std = pixel_statistics(train.images)
    train_loader = SetLoader(train, batch_size, mean=mean, std=std, train=True, seed=seed)
    test_loader = SetLoader(test, test_batch_size or max(batch_size, 256), mean=mean, std=std, train=False)
    return train_loader, test_loader

"""Batches from a dataset held on the training device, augmented with batched tensor ops.

A CIFAR-10 epoch is 50,000 images of 3 KB: the whole set sits on the GPU as uint8 and every
step slices, crops, flips and normalises one batch with a handful of kernels. No worker
processes, no per-image Python, no host-to-device copies in the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from sparsekernels.data.cifar10 import Split

# Per-channel statistics of the CIFAR-10 training set (pixel values scaled to [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> ``dtype`` ``[B, C, H, W]``, ``(x / 255 - mean) / std`` per channel."""
    m = torch.tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    # One fused multiply-add: x * (1 / (255 s)) - m / s.
    return torch.addcmul(-m / s, images.to(dtype), 1.0 / (255.0 * s))


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` then crop back to the input size at a random offset per image.

    images: ``[B, C, H, W]`` (any dtype) -> same shape and dtype. All crops are gathered in one
    indexing op from per-image row/column index grids.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0; got {padding}")
    if padding == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dev = images.device
    oy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [B, 1, H, 1]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [B, 1, 1, W]
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2. ``[B, C, H, W]`` -> same."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class DeviceLoader:
    """Iterate ``(x, y)`` batches over a :class:`Split` that already lives on its device.

    x: ``dtype`` ``[B, 3, H, W]`` normalised (channels-last memory when ``channels_last``);
    y: int64 ``[B]``.

    Shuffling and augmentation draw from a ``torch.Generator`` on the data's device seeded
    with ``(seed, epoch)``, so epoch ``e`` yields the same batches whatever ran before it —
    which is what lets a resumed run continue exactly. Iterating the loader runs the epoch
    set by :meth:`set_epoch` (0 by default), then advances it.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        train: bool,
        shuffle: bool | None = None,
        augment: bool | None = None,
        drop_last: bool | None = None,
        padding: int = 4,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        # Training defaults: shuffled, augmented, full batches only (a ragged last batch
        # would be a different shape every epoch and a noisier BN estimate).
        self.shuffle = train if shuffle is None else shuffle
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.padding = padding
        self.channels_last = channels_last
        self.dtype = dtype
        self.seed = int(seed)
        self.epoch = 0
        if self.drop_last and len(split) < self.batch_size:
            raise ValueError(
                f"batch_size ({batch_size}) exceeds the {len(split)} images of the split and drop_last is set"
            )

    @property
    def device(self) -> torch.device:
        return self.split.images.device

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, epoch: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        # Distinct, reproducible stream per (seed, epoch); the large odd multiplier keeps
        # nearby seeds from sharing epochs (seed 0 epoch 1 != seed 1 epoch 0).
        g.manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        g = self._generator(epoch)
        n = len(self.split)
        order = torch.randperm(n, device=self.device, generator=g) if self.shuffle else None
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if order is None:
                images, labels = self.split.images[lo:hi], self.split.labels[lo:hi]
            else:
                idx = order[lo:hi]
                images, labels = self.split.images[idx], self.split.labels[idx]
            x = self.transform(images, g)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels

    def transform(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One batch: uint8 ``[B, 3, H, W]`` -> ``self.dtype`` ``[B, 3, H, W]`` (augmented when
        ``self.augment``, random numbers from ``generator``). Subclasses change the pipeline
        here (e.g. :class:`sparsekernels.data.augment.SetLoader`)."""
        if self.augment:
            # Crop and flip on uint8 (a quarter of the bytes of fp32), normalise last:
            # padded pixels are then black, as with the usual PIL pipeline.
            images = random_flip(random_crop(images, self.padding, generator), generator)
        return normalize(images, dtype=self.dtype)

"""CIFAR-10 for the training benchmark: on-disk loading and on-device batched augmentation.

>>> data = load_cifar10("~/data", device="cuda")          # doctest: +SKIP
>>> train = DeviceLoader(data.train, 512, train=True, channels_last=True)
>>> for x, y in train: ...                                # x: fp32 [512, 3, 32, 32], y: int64 [512]
"""

from sparsekernels.data.cifar10 import (
    CIFAR10,
    MD5,
    URL,
    Split,
    default_root,
    download_cifar10,
    find_cifar10,
    load_cifar10,
    md5sum,
    read_batch,
    synthetic_cifar10,
)
from sparsekernels.data.loader import CIFAR10_MEAN, CIFAR10_STD, DeviceLoader, normalize, random_crop, random_flip

__all__ = [
    "CIFAR10",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DeviceLoader",
    "MD5",
    "Split",
    "URL",
    "default_root",
    "download_cifar10",
    "find_cifar10",
    "load_cifar10",
    "md5sum",
    "normalize",
    "random_crop",
    "random_flip",
    "read_batch",
    "synthetic_cifar10",
]

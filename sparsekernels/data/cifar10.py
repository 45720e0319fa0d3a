"""CIFAR-10 on disk: find, download (with checksum), read the official python pickles.

The official release (``cifar-10-python.tar.gz``) unpacks to ``cifar-10-batches-py/`` with
``data_batch_1`` … ``data_batch_5`` (50,000 training images), ``test_batch`` (10,000) and
``batches.meta`` (class names). Each batch is a pickled dict whose ``b"data"`` is uint8
``[10000, 3072]`` (a row holds the red, green, then blue 32×32 plane) and ``b"labels"`` a list
of ints in ``[0, 10)``.

Nothing here runs at import; the network is touched only by :func:`download_cifar10`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
ENV_VAR = "SPARSEKERNELS_DATA"
DEFAULT_ROOT = Path("~/.cache/sparsekernels/data")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Split:
    """One split of an image classification dataset.

    images: uint8 ``[N, 3, 32, 32]`` (RGB planes, NCHW); labels: int64 ``[N]``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class CIFAR10:
    """The two splits and the class names; ``source`` says where they came from."""

    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str

    def to(self, device: torch.device | str) -> CIFAR10:
        return CIFAR10(self.train.to(device), self.test.to(device), self.classes, self.source)


def default_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder to search/download into: ``data_dir``, else ``$SPARSEKERNELS_DATA``, else
    ``~/.cache/sparsekernels/data``."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(data_dir).expanduser()


def _is_batches_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in (*TRAIN_FILES, TEST_FILE))


def find_cifar10(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The ``cifar-10-batches-py`` folder under ``data_dir`` (or ``data_dir`` itself), or None.

    ``data_dir`` defaults as in :func:`default_root`.
    """
    root = default_root(data_dir)
    for candidate in (root, root / FOLDER):
        if _is_batches_folder(candidate):
            return candidate
    return None


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks (the archive is 163 MB)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` (the one place that touches the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it."""
    dest = dest.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if dest != target and dest not in target.parents:
                raise RuntimeError(f"refusing to extract {member.name!r}: it points outside {dest}")
            if not (member.isfile() or member.isdir()):
                raise RuntimeError(f"refusing to extract {member.name!r}: not a regular file or folder")
        # The "data" filter (Python >= 3.10.12/3.11.4) additionally strips unsafe modes.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def download_cifar10(root: str | os.PathLike, url: str | None = None, md5: str | None = None) -> Path:
    """Download the archive (default: the official :data:`URL`) into ``root``, verify its MD5
    (default: the published :data:`MD5`), unpack it.

    Returns the ``cifar-10-batches-py`` folder. The archive is written to a ``.part`` file
    first and unpacked only after its checksum matches, so an interrupted or tampered download
    never leaves a half-valid dataset behind. Raises ``RuntimeError`` on a checksum mismatch
    and ``urllib.error.URLError``/``OSError`` when the network is unreachable.
    """
    # Defaults resolved per call (not bound at definition) so tests can patch the constants.
    url = URL if url is None else url
    md5 = MD5 if md5 is None else md5
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    part = archive.with_name(archive.name + ".part")
    if not archive.is_file():
        try:
            _fetch(url, part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(archive)
    actual = md5sum(archive)
    if actual != md5:
        archive.unlink()
        raise RuntimeError(f"MD5 of {url} is {actual}, expected {md5}; the corrupt download was deleted")
    _safe_extract(archive, root)
    folder = find_cifar10(root)
    if folder is None:
        raise RuntimeError(f"{archive} unpacked, but {root / FOLDER} does not hold the expected batch files")
    return folder


def _missing_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 not found in {root} ({reason}). Put the official python batches "
        f"({', '.join(TRAIN_FILES)}, {TEST_FILE}) in {root / FOLDER}/ — e.g. unpack {URL} "
        f"into {root} — or pass --data-dir / set ${ENV_VAR} to the folder holding them."
    )


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images uint8 ``[n, 3, 32, 32]``, labels int64 ``[n]``)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: expected data [n, 3072] and n labels; got data {data.shape} and {labels.shape[0]} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{path}: labels must lie in [0, {len(CLASSES)}); got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels


def _read_split(folder: Path, names: tuple[str, ...]) -> Split:
    parts = [read_batch(folder / name) for name in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Split(images, labels)


def _read_classes(folder: Path) -> tuple[str, ...]:
    meta = folder / META_FILE
    if not meta.is_file():
        return CLASSES
    with open(meta, "rb") as f:
        names = pickle.load(f, encoding="bytes").get(b"label_names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names) if names else CLASSES


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> CIFAR10:
    """CIFAR-10 as uint8 tensors on ``device`` (the whole set is 180 MB: it fits any GPU).

    ``data_dir`` may be the folder holding ``cifar-10-batches-py`` or that folder itself; it
    defaults to ``$SPARSEKERNELS_DATA``, then ``~/.cache/sparsekernels/data``. When the files
    are absent and ``download`` is true, the official archive is fetched there and verified.
    Raises ``FileNotFoundError`` naming the expected path and the official URL otherwise.
    """
    root = default_root(data_dir)
    folder = find_cifar10(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(_missing_message(root, "download disabled"))
        try:
            folder = download_cifar10(root)
        except (urllib.error.URLError, OSError) as err:
            raise FileNotFoundError(_missing_message(root, f"download failed: {err}")) from err
    data = CIFAR10(
        _read_split(folder, TRAIN_FILES), _read_split(folder, (TEST_FILE,)), _read_classes(folder), str(folder)
    )
    return data.to(device)


def synthetic_cifar10(
    n_train: int = 2048,
    n_test: int = 512,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> CIFAR10:
    """CIFAR-shaped random data for smoke runs and tests (not a benchmark!).

    Each class gets its own mean colour plus uniform noise, so a model can learn something
    and a training curve is not flat by construction.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive; got {n_train}, {n_test}")
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(40, 216, (len(CLASSES), 3, 1, 1), generator=g)

    def split(n: int) -> Split:
        labels = torch.randint(0, len(CLASSES), (n,), generator=g)
        noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=g)
        images = (colours[labels] + noise).clamp_(0, 255).to(torch.uint8)
        return Split(images, labels)

    return CIFAR10(split(n_train), split(n_test), CLASSES, "synthetic").to(device)

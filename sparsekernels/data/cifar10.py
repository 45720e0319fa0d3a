"""CIFAR-10 on disk: find, download (with checksum), read the official python pickles.

The official release (``cifar-10-python.tar.gz``) unpacks to ``cifar-10-batches-py/`` with
``data_batch_1`` … ``data_batch_5`` (50,000 training images), ``test_batch`` (10,000) and
``batches.meta`` (class names). Each batch is a pickled dict whose ``b"data"`` is uint8
``[10000, 3072]`` (a row holds the red, green, then blue 32×32 plane) and ``b"labels"`` a list
of ints in ``[0, 10)``.

Nothing here runs at import; the network is touched only by :func:`download_cifar10`.

Hostile files: the batch files are read with a restricted unpickler that resolves only the
four globals the official files reference (numpy's array reconstructor, ``ndarray`` and
``dtype``): any other global, hence any code a crafted pickle would run, is refused with a
``ValueError`` naming the file. The result must then be a dict with uint8 ``b"data"``
``[n, 3072]`` and ``n`` labels in ``[0, 10)``. Files already on disk are also checked against
the official per-file MD5s (:data:`FILE_MD5`) the first time they are read (a ``.md5-verified``
stamp with each file's size and modification time remembers it); copies that are not the
official bytes (re-encoded or regenerated sets) need ``verify_md5=False`` (CLI:
``--no-verify-md5``), which keeps the restricted unpickler and the structure checks.
"""

from __future__ import annotations

import hashlib
import io
import json
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
# The published MD5 of every file of the official cifar-10-batches-py folder.
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
STAMP_FILE = ".md5-verified"
# The only globals an official batch pickle references (numpy >= 2 writes numpy._core).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
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
    _mark_verified(folder)  # unpacked from an archive whose MD5 matched
    return folder


def _missing_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 not found in {root} ({reason}). Put the official python batches "
        f"({', '.join(TRAIN_FILES)}, {TEST_FILE}) in {root / FOLDER}/ — e.g. unpack {URL} "
        f"into {root} — or pass --data-dir / set ${ENV_VAR} to the folder holding them."
    )


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`; refuses every other global (no code can run)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not part of an official CIFAR-10 file")
        return super().find_class(module, name)


def safe_unpickle(path: str | os.PathLike) -> object:
    """Unpickle a CIFAR-10 file with the restricted unpickler; ``ValueError`` naming the file
    for anything that is not a plain pickle of numpy arrays, bytes, strings, numbers, lists, dicts."""
    data = Path(path).read_bytes()
    try:
        return _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: not an official CIFAR-10 batch file (refused to unpickle: {err})") from None


def verify_files_md5(folder: str | os.PathLike, names: tuple[str, ...] | None = None) -> None:
    """Check files of ``folder`` against the official :data:`FILE_MD5` (all present ones by
    default), once: a passing check is recorded in ``folder/.md5-verified`` with each file's size
    and modification time, and later calls skip files whose record still matches. Raises
    ``ValueError`` naming the first mismatching file and how to opt out."""
    folder = Path(folder)
    names = tuple(n for n in (names or tuple(FILE_MD5)) if (folder / n).is_file())
    stamp_path = folder / STAMP_FILE
    try:
        stamp = json.loads(stamp_path.read_text())
        if not isinstance(stamp, dict):
            stamp = {}
    except (OSError, ValueError):
        stamp = {}
    changed = False
    for name in names:
        st = (folder / name).stat()
        key = [st.st_size, st.st_mtime_ns]
        if stamp.get(name) == key:
            continue
        actual = md5sum(folder / name)
        if actual != FILE_MD5[name]:
            raise ValueError(
                f"{folder / name}: MD5 {actual} is not the official {FILE_MD5[name]}; the file is corrupted, "
                "modified or from a re-encoded copy of CIFAR-10. If you trust this copy, load it with "
                "verify_md5=False (python -m sparsekernels.train: --no-verify-md5)"
            )
        stamp[name] = key
        changed = True
    if changed:
        try:
            stamp_path.write_text(json.dumps(stamp))
        except OSError:
            pass  # a read-only data folder: verified again next time


def _mark_verified(folder: Path) -> None:
    """Record the files unpacked from an archive whose MD5 matched as verified."""
    stamp = {}
    for name in FILE_MD5:
        if (folder / name).is_file():
            st = (folder / name).stat()
            stamp[name] = [st.st_size, st.st_mtime_ns]
    try:
        (folder / STAMP_FILE).write_text(json.dumps(stamp))
    except OSError:
        pass


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images uint8 ``[n, 3, 32, 32]``, labels int64 ``[n]``).

    Restricted unpickling (see the module docstring); ``ValueError`` naming the file for
    anything else than the official structure."""
    batch = safe_unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels'; got {type(batch).__name__}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' must be a uint8 numpy array; got {getattr(data, 'dtype', type(data))}")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise ValueError(f"{path}: b'labels' must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64)
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
    content = safe_unpickle(meta)
    names = content.get(b"label_names") if isinstance(content, dict) else None
    if names is not None and (
        not isinstance(names, list) or len(names) != len(CLASSES) or not all(isinstance(n, bytes) for n in names)
    ):
        raise ValueError(f"{meta}: b'label_names' must be a list of {len(CLASSES)} byte strings")
    return tuple(n.decode("utf-8", "replace") for n in names) if names else CLASSES


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
    verify_md5: bool = True,
) -> CIFAR10:
    """CIFAR-10 as uint8 tensors on ``device`` (the whole set is 180 MB: it fits any GPU).

    ``verify_md5``: check files already on disk against the official MD5s the first time
    they are read (:func:`verify_files_md5`); False for a trusted copy that is not byte-identical to
    the official files. The restricted unpickler and structure checks run either way.

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
    if verify_md5:
        verify_files_md5(folder)
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

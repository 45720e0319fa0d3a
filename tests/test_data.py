"""CIFAR-10 reading, download verification and on-device batching, on small fake files."""

from __future__ import annotations

import io
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsekernels.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DeviceLoader,
    Split,
    download_cifar10,
    find_cifar10,
    load_cifar10,
    md5sum,
    normalize,
    random_crop,
    synthetic_cifar10,
)
from sparsekernels.data import cifar10 as cifar_module

PER_BATCH = 6  # images per fake batch file (the real ones hold 10,000)


def write_fake_batches(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write the official pickle layout with random contents; returns what each file holds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate([*cifar_module.TRAIN_FILES, cifar_module.TEST_FILE]):
        data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=PER_BATCH).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": f"fake {i}".encode(), b"labels": labels, b"data": data}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in cifar_module.CLASSES], b"num_vis": 3072}, f)
    return written


def fake_archive(path: Path, payload_root: Path) -> Path:
    """A .tar.gz holding ``cifar-10-batches-py/`` as the official archive does."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(payload_root / cifar_module.FOLDER, arcname=cifar_module.FOLDER)
    return path


# ----------------------------------------------------------------------------- reading
def test_find_accepts_parent_folder_itself_and_env(tmp_path, monkeypatch):
    write_fake_batches(tmp_path / "cifar-10-batches-py")
    expected = tmp_path / "cifar-10-batches-py"
    assert find_cifar10(tmp_path) == expected
    assert find_cifar10(expected) == expected
    monkeypatch.setenv("SPARSEKERNELS_DATA", str(tmp_path))
    assert find_cifar10() == expected
    assert find_cifar10(tmp_path / "elsewhere") is None


def test_load_matches_pickle_layout(tmp_path):
    written = write_fake_batches(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path, download=False, verify_md5=False)
    assert data.train.images.shape == (5 * PER_BATCH, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (PER_BATCH, 3, 32, 32)
    assert data.train.labels.dtype == torch.int64
    assert data.classes == cifar_module.CLASSES
    # Row r of data_batch_2 is training image PER_BATCH + r; element c*1024 + h*32 + w is pixel (c, h, w).
    rows, labels = written["data_batch_2"]
    r, c, h, w = 3, 2, 17, 5
    assert data.train.images[PER_BATCH + r, c, h, w].item() == rows[r, c * 1024 + h * 32 + w]
    assert data.train.labels[PER_BATCH : 2 * PER_BATCH].tolist() == labels
    assert data.test.labels.tolist() == written["test_batch"][1]


def test_missing_data_error_names_path_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path / "nothing", download=False)
    message = str(err.value)
    assert str(tmp_path / "nothing" / "cifar-10-batches-py") in message
    assert cifar_module.URL in message


def test_failed_download_becomes_clear_error(tmp_path, monkeypatch):
    def offline(url, dest, timeout=60.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar_module, "_fetch", offline)
    with pytest.raises(FileNotFoundError, match="download failed") as err:
        load_cifar10(tmp_path)
    assert cifar_module.URL in str(err.value)
    assert not list(tmp_path.glob("*.part")), "a failed download must not leave a partial file"


def test_bad_batch_shape_is_rejected(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_batches(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": [1, 2], b"data": np.zeros((2, 100), dtype=np.uint8)}, f)
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(tmp_path, download=False, verify_md5=False)


# ----------------------------------------------------------------------------- download
@pytest.fixture
def fake_remote(tmp_path, monkeypatch):
    """A fake archive served by a patched ``_fetch``; returns (archive path, its md5)."""
    write_fake_batches(tmp_path / "remote" / "cifar-10-batches-py")
    archive = fake_archive(tmp_path / "remote.tar.gz", tmp_path / "remote")
    calls = []

    def fetch(url, dest, timeout=60.0):
        calls.append(url)
        dest.write_bytes(archive.read_bytes())

    monkeypatch.setattr(cifar_module, "_fetch", fetch)
    return archive, md5sum(archive), calls


def test_download_verifies_checksum_then_unpacks(tmp_path, fake_remote, monkeypatch):
    _, digest, calls = fake_remote
    monkeypatch.setattr(cifar_module, "MD5", digest)
    data = load_cifar10(tmp_path / "root")  # downloads: nothing there yet
    assert calls == [cifar_module.URL]
    assert len(data.train) == 5 * PER_BATCH
    assert find_cifar10(tmp_path / "root") == tmp_path / "root" / "cifar-10-batches-py"


def test_download_rejects_wrong_checksum(tmp_path, fake_remote):
    root = tmp_path / "root"
    with pytest.raises(RuntimeError, match="MD5"):
        download_cifar10(root, md5="0" * 32)
    assert not (root / "cifar-10-python.tar.gz").exists(), "a corrupt archive must be deleted"
    assert not (root / "cifar-10-batches-py").exists(), "nothing may be unpacked from a corrupt archive"


def test_official_checksum_is_the_published_one():
    assert cifar_module.MD5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar_module.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def test_extract_refuses_paths_outside_root(tmp_path, monkeypatch):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))

    def fetch(url, dest, timeout=60.0):
        dest.write_bytes(evil.read_bytes())

    monkeypatch.setattr(cifar_module, "_fetch", fetch)
    with pytest.raises(RuntimeError, match="outside"):
        download_cifar10(tmp_path / "root", md5=md5sum(evil))
    assert not (tmp_path / "escaped.txt").exists()


# ----------------------------------------------------------------------------- batching
def _split(n: int = 20, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def test_normalize_matches_formula():
    images = _split(4).images
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(normalize(images).double(), expected, rtol=0, atol=1e-5)


def test_eval_loader_is_ordered_complete_and_unaugmented():
    split = _split(20)
    loader = DeviceLoader(split, 8, train=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), normalize(split.images))
    assert torch.equal(torch.cat([b[1] for b in batches]), split.labels)


def test_train_loader_shuffles_drops_last_and_is_seeded():
    split = _split(20)
    loader = DeviceLoader(split, 8, train=True, seed=3)
    assert len(loader) == 2
    first = list(loader)  # epoch 0
    second = list(loader)  # epoch 1
    again = DeviceLoader(split, 8, train=True, seed=3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, list(again)))
    assert not torch.equal(first[0][1], second[0][1]), "each epoch must reshuffle"
    again.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(second, list(again))), "epoch e must not depend on history"
    labels = torch.cat([b[1] for b in first])
    assert labels.shape == (16,) and len(set(labels.tolist())) > 1
    for x, y in first:
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_augmentation_is_a_padded_crop_and_maybe_a_flip():
    split = _split(16, seed=1)
    loader = DeviceLoader(split, 16, train=True, shuffle=False, seed=5)
    x, _ = next(iter(loader))
    padded = torch.nn.functional.pad(normalize(split.images), (4, 4, 4, 4), value=float("nan"))
    zero = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))  # padding is black before normalising
    padded = torch.where(padded.isnan(), zero, padded)
    offsets = set()
    for i in range(16):
        crops = [(oy, ox, padded[i, :, oy : oy + 32, ox : ox + 32]) for oy in range(9) for ox in range(9)]
        matches = [(oy, ox, f) for oy, ox, c in crops for f in (0, 1) if torch.allclose(x[i], c.flip(2) if f else c)]
        assert matches, f"image {i} is not a crop of its padded original"
        offsets.add(matches[0])
    assert len(offsets) > 1, "crops must vary across images"


def test_random_crop_zero_padding_is_identity():
    images = _split(3).images
    assert torch.equal(random_crop(images, 0), images)
    with pytest.raises(ValueError, match="padding"):
        random_crop(images, -1)


def test_channels_last_output():
    loader = DeviceLoader(_split(8), 4, train=True, channels_last=True)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_loader_argument_errors_name_the_parameter():
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(_split(8), 0, train=True)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(_split(8), 16, train=True)


def test_synthetic_data_is_seeded_and_cifar_shaped():
    a, b = synthetic_cifar10(32, 8, seed=1), synthetic_cifar10(32, 8, seed=1)
    assert a.train.images.shape == (32, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.test.labels.shape == (8,) and a.source == "synthetic"
    assert torch.equal(a.train.images, b.train.images)
    with pytest.raises(ValueError, match="n_train"):
        synthetic_cifar10(0, 8)

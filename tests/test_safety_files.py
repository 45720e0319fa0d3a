"""Files the user points us at, as an attacker or a careless user would write them: crafted
pickles (CIFAR-10 batches, checkpoints) must not run anything, and every damaged, truncated,
empty or foreign checkpoint gives one clear error naming the file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from sparsekernels import train
from sparsekernels.data import cifar10 as cifar_module
from sparsekernels.data.cifar10 import load_cifar10, read_batch, verify_files_md5
from sparsekernels.training.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint
from tests.test_data import write_fake_batches

TINY = ["--synthetic", "--device", "cpu", "--width", "0.25", "--batch-size", "8", "--synthetic-size", "16"]


class MakeDir:
    """Unpickling this calls ``os.makedirs(path)``: a side effect the test can see."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


class OpenFile:
    """Unpickling this creates an empty file through ``builtins.open``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def payloads(tmp_path):
    """(name, pickled bytes, the path its payload would create)."""
    d, f = tmp_path / "pwned-dir", tmp_path / "pwned-file"
    data = np.zeros((1, 3072), dtype=np.uint8)
    yield "makedirs-in-data", pickle.dumps({b"data": MakeDir(str(d)), b"labels": [0]}), d
    yield "open-in-labels", pickle.dumps({b"data": data, b"labels": [OpenFile(str(f))]}), f
    yield "open-protocol-0", pickle.dumps(OpenFile(str(f)), protocol=0), f
    yield "open-as-meta-names", pickle.dumps({b"label_names": [OpenFile(str(f))]}), f


@pytest.mark.parametrize("target", ["data_batch_1", "test_batch", "batches.meta"])
def test_crafted_cifar_pickles_do_not_run(tmp_path, target):
    for name, blob, effect in payloads(tmp_path):
        # The payload is live: plain pickle runs it (control), then it is removed again.
        pickle.loads(blob)
        assert effect.exists(), f"{name}: the control payload did not run"
        effect.rmdir() if effect.is_dir() else effect.unlink()
        folder = tmp_path / name / cifar_module.FOLDER
        write_fake_batches(folder)
        (folder / target).write_bytes(blob)
        with pytest.raises(ValueError, match=rf"{target}.*(refused to unpickle|expected a dict|label_names)"):
            load_cifar10(folder.parent, download=False, verify_md5=False)
        assert not effect.exists(), f"{name}: a crafted {target} ran code"


def test_cifar_reader_refuses_other_structures(tmp_path):
    path = tmp_path / "batch"
    cases = [
        (pickle.dumps([1, 2, 3]), "expected a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"labels must lie in \[0, 10\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}), "list of ints"),
        (b"", "refused to unpickle"),
        (b"\x80\x04garbage", "refused to unpickle"),
    ]
    for blob, message in cases:
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=message):
            read_batch(path)


def test_md5_of_files_on_disk_is_verified_once(tmp_path, monkeypatch):
    folder = tmp_path / cifar_module.FOLDER
    write_fake_batches(folder)
    with pytest.raises(ValueError, match=r"data_batch_1: MD5 .* not the official .*verify_md5=False .*--no-verify-md5"):
        load_cifar10(tmp_path, download=False)
    # Pretend these bytes are the official ones: verification passes, is stamped, then skipped.
    digests = {name: cifar_module.md5sum(folder / name) for name in cifar_module.FILE_MD5}
    monkeypatch.setattr(cifar_module, "FILE_MD5", digests)
    calls = []
    real_md5 = cifar_module.md5sum
    monkeypatch.setattr(cifar_module, "md5sum", lambda p, *a: calls.append(p) or real_md5(p, *a))
    assert len(load_cifar10(tmp_path, download=False).train) == 30
    assert len(calls) == len(digests)
    assert sorted(json.loads((folder / cifar_module.STAMP_FILE).read_text())) == sorted(digests)
    calls.clear()
    load_cifar10(tmp_path, download=False)
    assert calls == [], "verified files are not hashed again"
    # A file changed after verification (new size/mtime) is hashed again and refused.
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    os.utime(folder / "test_batch", ns=(1, 1))
    with pytest.raises(ValueError, match="test_batch: MD5"):
        verify_files_md5(folder)


def test_cli_opt_out_of_md5(tmp_path):
    folder = tmp_path / cifar_module.FOLDER
    write_fake_batches(folder)
    common = [
        "--data-dir",
        str(tmp_path),
        "--device",
        "cpu",
        "--width",
        "0.25",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
    ]
    with pytest.raises(SystemExit, match="--no-verify-md5"):
        train.main([*common, "--out", str(tmp_path / "a")])
    assert train.main([*common, "--no-verify-md5", "--out", str(tmp_path / "b")]) == 0


# ----------------------------------------------------------------------------- checkpoints
def _with_header(payload: bytes) -> bytes:
    digest = hashlib.sha256(payload).hexdigest().encode()
    return b"%s 1 sha256=%s bytes=%d\n" % (MAGIC, digest, len(payload)) + payload


def test_crafted_checkpoint_does_not_run_even_with_a_valid_checksum(tmp_path):
    effect = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"config": MakeDir(str(effect)), "weights": torch.ones(2)}, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)  # control: the payload is live
    assert effect.exists()
    effect.rmdir()
    path = tmp_path / "evil.pt"
    path.write_bytes(_with_header(buffer.getvalue()))  # an attacker can compute the checksum
    with pytest.raises(CheckpointError, match=rf"{path}.*cannot be loaded safely"):
        load_checkpoint(path)
    assert not effect.exists()


GOOD_WEIGHTS = torch.randn(4096, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def good_checkpoint(tmp_path):
    path = tmp_path / "good.pt"
    save_checkpoint(path, {"config": {"lr": 0.1}, "weights": GOOD_WEIGHTS, "step": 3})
    return path


def _flip(data: bytes, positions) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p] ^= 0xFF
    return bytes(out)


def corruptions(path):
    data = path.read_bytes()
    header = data.index(b"\n") + 1
    rng = np.random.default_rng(0)
    foreign = io.BytesIO()
    torch.save({"config": {}}, foreign)
    yield "flipped-64", _flip(data, rng.choice(np.arange(header, len(data)), 64, replace=False)), "corrupted"
    yield "flipped-1", _flip(data, [len(data) - 1]), "corrupted"
    yield "flipped-header", _flip(data, [header - 5]), "header is damaged|corrupted|truncated|longer"
    yield "truncated-half", data[: len(data) // 2], "truncated"
    yield "truncated-1", data[:-1], "truncated"
    yield "header-only", data[:header], "truncated"
    yield "appended", data + b"x", "longer than written"
    yield "empty", b"", "empty"
    yield "foreign-torch-save", foreign.getvalue(), "not a sparsekernels checkpoint"
    yield "foreign-text", b'{"config": 1}\n', "not a sparsekernels checkpoint"
    yield "random", rng.integers(0, 256, 1000, dtype=np.uint8).tobytes(), "not a sparsekernels checkpoint"
    yield "not-a-dict", _with_header(_torch_bytes([1, 2])), "not a state dict"
    yield "future-version", data.replace(b"CHECKPOINT 1 ", b"CHECKPOINT 7 ", 1), "format version 7"


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_every_damaged_checkpoint_gives_one_clear_error(good_checkpoint, tmp_path):
    intact = load_checkpoint(good_checkpoint)
    assert torch.equal(intact["weights"], GOOD_WEIGHTS) and intact["step"] == 3 and intact["config"] == {"lr": 0.1}
    for name, blob, message in corruptions(good_checkpoint):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(blob)
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value), f"{name}: the error must name the file"
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_resume_rejects_damaged_and_mismatched_checkpoints(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    common = [*TINY, "--epochs", "2", "--checkpoint-every", "1"]
    train.main([*common, "--out", str(out)])
    ckpt = out / "checkpoint-epoch001.pt"
    for name, blob, _ in list(corruptions(ckpt))[:4]:
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(blob)
        with pytest.raises(SystemExit, match=rf"--resume: checkpoint {bad}"):
            train.main([*common, "--out", str(tmp_path / name), "--resume", str(bad)])
    foreign = tmp_path / "foreign.pt"
    save_checkpoint(foreign, {"model": {}})
    with pytest.raises(SystemExit, match=rf"checkpoint {foreign}: not a training checkpoint"):
        train.main([*common, "--out", str(tmp_path / "f"), "--resume", str(foreign)])
    for flag in (["--amp", "bf16"], ["--channels-last"], ["--backend", "reference"], ["--compile"]):
        with pytest.raises(SystemExit, match=rf"error: {flag[0]} is .* computed with"):
            train.main([*common, *flag, "--out", str(tmp_path / "m"), "--resume", str(ckpt)])
    with pytest.raises(SystemExit, match="error: --fused-bn-relu is False but the checkpoint's run computed with True"):
        train.main([*common, "--no-fused-bn-relu", "--out", str(tmp_path / "m"), "--resume", str(ckpt)])
    resumed = tmp_path / "resumed"
    train.main([*common, "--out", str(resumed), "--resume", str(ckpt)])
    record = json.loads((resumed / "record.json").read_text())
    assert [s["start_epoch"] for s in record["segments"]] == [0, 1]
    assert all(s["amp"] == "none" and s["backend"] == "auto" for s in record["segments"])

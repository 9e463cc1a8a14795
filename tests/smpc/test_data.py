"""smpc.data: the shipped MNIST subset, IDX files, Boston housing."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from smpc.data import DatasetError, DatasetNotFoundError, load_boston, load_idx, load_mnist


def test_mnist_default_splits_are_stratified() -> None:
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32
    assert xt.shape == (1000, 1, 28, 28) and yt.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 400))
    assert torch.equal(torch.bincount(yt), torch.full((10,), 100))
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    xa, ya = load_mnist("all")
    assert xa.shape[0] == 5000 and ya.shape[0] == 5000


def test_mnist_rejects_bad_split() -> None:
    with pytest.raises(DatasetError, match="split"):
        load_mnist("validation")  # type: ignore[arg-type]


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs[:3], gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels[:3], gz)
    x, y = load_mnist("train", path=tmp_path)
    assert x.shape == (7, 1, 28, 28)
    assert torch.allclose(x[:, 0] * 255, torch.from_numpy(imgs).float())
    assert torch.equal(y, torch.from_numpy(labels))
    xa, _ = load_mnist("all", path=tmp_path)
    assert xa.shape[0] == 10


def test_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        load_mnist(path=tmp_path)
    with pytest.raises(DatasetNotFoundError):
        load_idx(tmp_path / "nope", tmp_path / "nope2")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x09\x01abcd")
    with pytest.raises(DatasetError, match="IDX"):
        load_idx(bad, bad)
    _write_idx(tmp_path / "i", np.zeros((2, 4, 4)), False)
    _write_idx(tmp_path / "l", np.zeros(3), False)
    with pytest.raises(DatasetError, match="labels"):
        load_idx(tmp_path / "i", tmp_path / "l")


def test_boston() -> None:
    x, y = load_boston()
    assert x.shape == (506, 13) and y.shape == (506,)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert float(y[0]) == pytest.approx(24.0)

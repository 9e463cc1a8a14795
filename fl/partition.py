"""Split a labelled dataset among simulated clients (top layer, ``fl``).

Four schemes, all deterministic under ``seed``:

* ``"iid"``: a random permutation cut into near-equal parts.
* ``"shards"``: the classic non-IID split of McMahan et al. (2017): sort by
  label, cut into ``n_clients * classes_per_client`` equal shards and give each
  client ``classes_per_client`` shards, so each client holds about
  ``classes_per_client`` label classes (exactly that many when shards do not
  straddle class boundaries, as with balanced classes; we redraw the shard
  assignment to avoid a client receiving two shards of one class).
* ``"dirichlet"``: per class, client proportions drawn from
  ``Dirichlet(alpha)`` (Hsu et al. 2019); small ``alpha`` = very skewed.
* ``"natural"``: by a per-sample owner id (a writer, a hospital), as
  TensorFlow Federated's EMNIST is split by its 3,383 writers: one client per
  distinct id, or the distinct ids dealt at random into ``n_clients`` groups.

Datasets: :func:`partition`, :class:`~fl.client.Client` and
:func:`~fl.simulation.make_clients` take tensors or the usual torch data
containers (:func:`as_tensors`): a ``(features, labels)`` pair, a
``TensorDataset``, any map-style ``Dataset`` whose items are
``(features, label)`` pairs, a ``Subset`` of one, or a ``DataLoader`` (its
dataset; the client batches with the strategy's ``batch_size``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from fl.errors import ConfigError

__all__ = ["Partition", "Scheme", "as_tensors", "partition"]

DataLike = Any  # a tensor pair, TensorDataset, Dataset, Subset or DataLoader (see as_tensors)


def _count(value: Any, name: str, low: int) -> int:
    """``value`` as an int >= ``low`` (ints and numpy ints; not bool, not 2.5)."""
    if isinstance(value, bool):
        raise ConfigError(f"`{name}` must be an int >= {low}; got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ConfigError(f"`{name}` must be an int >= {low}; got {value!r}") from None
    if n < low:
        raise ConfigError(f"`{name}` must be an int >= {low}; got {n}")
    return int(n)


def _stack(values: list[Any], what: str) -> torch.Tensor:
    try:
        return torch.stack([torch.as_tensor(v) for v in values])
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"the {what} of the dataset's items must be tensors (or numbers) of one shape: {exc}"
        ) from exc


def as_tensors(data: DataLike, *, name: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a labelled dataset as ``(features, labels)`` tensors.

    Accepts a ``(features, labels)`` pair of tensors (or arrays), a
    ``TensorDataset`` of two tensors, a ``Subset`` of any of these, a
    ``DataLoader`` (its ``dataset``: sampler and batch size are ignored), or any
    map-style ``Dataset`` with ``len()`` whose items are ``(features, label)``
    pairs (items are read once and stacked, so transforms run once).

    Raises:
        ConfigError: Anything else (naming what was received), mismatched
            lengths, or an empty dataset.
    """
    if isinstance(data, DataLoader):
        return as_tensors(data.dataset, name=name)
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = torch.as_tensor(data[0]), torch.as_tensor(data[1])
    elif isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise ConfigError(
                f"`{name}` as a TensorDataset must hold (features, labels); "
                f"got {len(data.tensors)} tensors"
            )
        x, y = data.tensors
    elif isinstance(data, Subset) and isinstance(data.dataset, TensorDataset | tuple | list):
        x, y = as_tensors(data.dataset, name=name)
        idx = torch.as_tensor(list(data.indices), dtype=torch.int64)
        x, y = x[idx], y[idx]
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ConfigError(f"`{name}` is empty")
        if not all(isinstance(it, tuple | list) and len(it) == 2 for it in items):
            raise ConfigError(
                f"the items of `{name}` must be (features, label) pairs; "
                f"item 0 is a {type(items[0]).__name__}"
            )
        x, y = (
            _stack([it[0] for it in items], "features"),
            _stack([it[1] for it in items], "labels"),
        )
    else:
        raise ConfigError(
            f"`{name}` must be a (features, labels) pair, a TensorDataset, a map-style Dataset "
            f"of (features, label) items, a Subset or a DataLoader; got {type(data).__name__}"
        )
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"`{name}`: features {tuple(x.shape)} and labels {tuple(y.shape)} must have the same "
            "number of rows"
        )
    if x.shape[0] == 0:
        raise ConfigError(f"`{name}` is empty")
    return x, y


class Scheme(StrEnum):
    """Partition schemes accepted by :func:`partition`."""

    IID = "iid"
    SHARDS = "shards"
    DIRICHLET = "dirichlet"
    NATURAL = "natural"


@dataclass(frozen=True, slots=True)
class Partition:
    """The result of :func:`partition`: which rows each client holds.

    Attributes:
        indices: One int64 index tensor per client (sorted, disjoint, covering the dataset).
        labels: The labels of the whole dataset (int64).
        num_classes: Number of label classes (max label + 1).
        scheme: The scheme used.
        owners: For ``"natural"``: the owner ids each client holds (sorted), one
            tuple per client; empty for the other schemes.
    """

    indices: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    num_classes: int
    scheme: Scheme
    owners: tuple[tuple[Any, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def sizes(self) -> list[int]:
        """Number of examples per client."""
        return [int(ix.numel()) for ix in self.indices]

    def histogram(self) -> torch.Tensor:
        """Class histogram, int64 ``[n_clients, num_classes]``."""
        rows = [torch.bincount(self.labels[ix], minlength=self.num_classes) for ix in self.indices]
        return torch.stack(rows) if rows else torch.zeros(0, self.num_classes, dtype=torch.int64)

    def summary(self) -> str:
        """A printable table: one row per client, one column per class, plus totals."""
        hist = self.histogram()
        width = max(5, len(str(int(hist.max()))) + 1) if hist.numel() else 5
        head = "client " + "".join(f"{c:>{width}d}" for c in range(self.num_classes)) + "   total"
        lines = [f"partition scheme={self.scheme.value} clients={len(self)}", head]
        for i, row in enumerate(hist.tolist()):
            lines.append(f"{i:6d} " + "".join(f"{v:>{width}d}" for v in row) + f"{sum(row):8d}")
        return "\n".join(lines)

    def subsets(
        self, features: torch.Tensor | DataLike, labels: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Slice ``(features, labels)`` into one ``(x_i, y_i)`` pair per client.

        ``features`` may also be a dataset (see :func:`as_tensors`) when
        ``labels`` is None.
        """
        if not isinstance(features, torch.Tensor):
            if labels is not None:
                raise ConfigError("give `labels` only with a features tensor, not with a dataset")
            features, labels = as_tensors(features)
        y = self.labels if labels is None else labels
        if features.shape[0] != y.shape[0]:
            raise ConfigError(
                f"`features` has {features.shape[0]} rows but there are {y.shape[0]} labels"
            )
        return [(features[ix], y[ix]) for ix in self.indices]

    def plot(self, path: str | Path) -> Path:
        """Save the class histogram as a stacked bar chart (PNG).

        Raises:
            ImportError: ``matplotlib`` (the ``demo`` extra) is not installed.
        """
        try:
            import matplotlib
        except ImportError as e:
            raise ImportError(
                "plotting needs `matplotlib`, which is not installed; it comes with the "
                "demo extra: pip install 'smpc-fl[demo]'"
            ) from e

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        hist = self.histogram().numpy()
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(self) + 2), 3.5))
        bottom = np.zeros(len(self))
        for c in range(self.num_classes):
            ax.bar(np.arange(len(self)), hist[:, c], bottom=bottom, label=str(c))
            bottom += hist[:, c]
        ax.set_xlabel("client")
        ax.set_ylabel("examples")
        ax.set_title(f"partition: {self.scheme.value}")
        ax.legend(
            title="class", fontsize="small", ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left"
        )
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def _labels_of(dataset: object) -> torch.Tensor:
    if isinstance(dataset, DataLoader):
        return _labels_of(dataset.dataset)
    if isinstance(dataset, torch.Tensor | np.ndarray):
        labels = torch.as_tensor(dataset)
    elif isinstance(dataset, tuple | list) and len(dataset) == 2:
        labels = torch.as_tensor(dataset[1])
    elif hasattr(dataset, "targets"):  # torchvision datasets: no need to read the images
        labels = torch.as_tensor(dataset.targets)
    elif isinstance(dataset, TensorDataset) and dataset.tensors:
        labels = dataset.tensors[-1]
    elif isinstance(dataset, Subset):
        labels = _labels_of(dataset.dataset)[torch.as_tensor(list(dataset.indices))]
    elif isinstance(dataset, Dataset):
        labels = as_tensors(dataset)[1]
    else:
        raise ConfigError(
            "`dataset` must be a label tensor, a (features, labels) pair, a TensorDataset, a "
            "map-style Dataset of (features, label) items, a Subset, a DataLoader or an object "
            f"with `.targets`; got {type(dataset).__name__}"
        )
    if labels.numel() == 0:
        raise ConfigError("`dataset` is empty: there is nothing to partition")
    if (
        labels.ndim != 1
        or labels.dtype.is_floating_point
        or labels.dtype.is_complex
        or labels.dtype == torch.bool
    ):
        raise ConfigError(
            "labels must be a 1-D integer tensor; "
            f"got dtype {labels.dtype}, shape {tuple(labels.shape)}"
        )
    if int(labels.min()) < 0:
        raise ConfigError("labels must be >= 0")
    return labels.to(torch.int64)


def _iid(n: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), n_clients))


def _shards(
    labels: np.ndarray, n_clients: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n_shards = n_clients * k
    if n_shards > labels.size:
        raise ConfigError(
            f"`n_clients * classes_per_client` = {n_shards} shards exceeds "
            f"the {labels.size} examples"
        )
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, n_shards)
    shard_class = [np.unique(labels[s]) for s in shards]

    def clean(rows: np.ndarray) -> bool:
        return all(
            len({int(c) for j in row for c in shard_class[j]})
            == sum(len(shard_class[j]) for j in row)
            for row in rows
        )

    best: np.ndarray | None = None
    for _ in range(200):  # random assignment, redrawn if a client got two shards of one class
        perm = rng.permutation(n_shards).reshape(n_clients, k)
        if clean(perm):
            best = perm
            break
    if best is None:  # deal label-sorted shards round-robin to randomly relabelled clients
        relabel = rng.permutation(n_clients)
        best = np.arange(n_shards).reshape(k, n_clients).T[relabel]
    return [np.concatenate([shards[j] for j in row]) for row in best]


def _dirichlet(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props) * idx.size).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.concatenate(p) for p in parts]
        if min(p.size for p in out) >= min_size:
            return out
    raise ConfigError(
        f"could not draw a Dirichlet(alpha={alpha}) split where every client holds >= "
        f"{min_size} examples in 1000 tries; raise `alpha` or lower `min_size`"
    )


def _owner_ids(groups: object, n: int) -> np.ndarray:
    """The per-sample owner ids as a 1-D numpy array of ints or strings."""
    if isinstance(groups, torch.Tensor):
        if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
            raise ConfigError(
                f"`groups` must hold integer or string owner ids; got a {groups.dtype} tensor"
            )
        arr = groups.detach().cpu().numpy()
    elif isinstance(groups, np.ndarray | Sequence) and not isinstance(groups, str | bytes):
        if not isinstance(groups, np.ndarray):
            kinds = {type(g) for g in groups}
            if len(kinds) > 1:  # numpy would turn 1 and "1" into the same string id
                raise ConfigError(
                    "`groups` must hold owner ids of one type; got "
                    f"{sorted(k.__name__ for k in kinds)}"
                )
        try:
            arr = np.asarray(groups)
        except ValueError as exc:
            raise ConfigError(f"`groups` must be a 1-D sequence of owner ids: {exc}") from exc
    else:
        raise ConfigError(
            "`groups` must be a 1-D tensor, array or sequence of per-sample owner ids; "
            f"got {type(groups).__name__}"
        )
    if arr.ndim != 1:
        raise ConfigError(f"`groups` must be 1-D (one owner id per sample); got shape {arr.shape}")
    if arr.size != n:
        raise ConfigError(f"`groups` must have one owner id per sample ({n}); got {arr.size} ids")
    if arr.size and arr.dtype.kind not in "iuUS":
        raise ConfigError(f"`groups` must hold integer or string owner ids; got dtype {arr.dtype}")
    return arr


def _natural(
    owners: np.ndarray, n_clients: int | None, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[tuple[Any, ...]]]:
    ids, inverse = np.unique(owners, return_inverse=True)
    if n_clients is None or n_clients == ids.size:
        groups = [np.array([k]) for k in range(ids.size)]
    else:
        if n_clients > ids.size:
            raise ConfigError(
                f"`n_clients` must be <= the number of distinct owner ids ({ids.size}) "
                f"for scheme 'natural'; got {n_clients}"
            )
        groups = [np.sort(g) for g in np.array_split(rng.permutation(ids.size), n_clients)]
    order = np.argsort(inverse, kind="stable")  # rows grouped by owner, in row order
    bounds = np.searchsorted(inverse[order], np.arange(ids.size + 1))
    rows = [order[bounds[k] : bounds[k + 1]] for k in range(ids.size)]
    parts = [np.concatenate([rows[k] for k in g]) for g in groups]
    names = [tuple(ids[k].item() for k in g) for g in groups]
    return parts, names


def partition(
    dataset: object,
    n_clients: int | None = None,
    scheme: Scheme | str = Scheme.IID,
    *,
    seed: int = 0,
    classes_per_client: int = 2,
    alpha: float = 0.5,
    min_size: int = 1,
    groups: object = None,
) -> Partition:
    """Split a labelled dataset among ``n_clients`` clients.

    Args:
        dataset: The labels (1-D int tensor), a ``(features, labels)`` pair, a
            ``TensorDataset`` (labels last), an object with ``.targets``
            (torchvision), a map-style ``Dataset`` of ``(features, label)``
            items, a ``Subset`` of any of these, or a ``DataLoader`` (its dataset).
        n_clients: Number of clients (>= 1, <= number of examples). For
            ``"natural"``: ``None`` (default there) gives one client per
            distinct owner id, in sorted id order; an int ``k`` deals the
            distinct ids at random (under ``seed``) into ``k`` groups of
            near-equal numbers of ids (not of examples), one client per group.
        scheme: ``"iid"``, ``"shards"``, ``"dirichlet"`` or ``"natural"``.
        seed: Seed of the split (same seed, same split).
        classes_per_client: For ``"shards"``: shards (≈ classes) per client.
        alpha: For ``"dirichlet"``: concentration (> 0).
        min_size: For ``"dirichlet"``: redraw until every client has this many examples.
        groups: For ``"natural"`` (required there, rejected otherwise): one
            owner id per sample (a writer, a hospital), integers or strings, as
            a 1-D tensor, numpy array or sequence.

    Returns:
        A :class:`Partition`; ``print(p.summary())`` shows the class histogram,
        ``p.owners`` the owner ids behind each client of a natural split.

    Raises:
        ConfigError: Invalid scheme or parameters, or ``groups`` of the wrong
            length, shape or type.
    """
    labels = _labels_of(dataset)
    try:
        kind = Scheme(scheme)
    except ValueError as exc:
        raise ConfigError(
            f"`scheme` must be one of {[s.value for s in Scheme]}; got {scheme!r}"
        ) from exc
    n = int(labels.numel())
    if kind is not Scheme.NATURAL and groups is not None:
        raise ConfigError(f"`groups` is only used by scheme 'natural'; got scheme {kind.value!r}")
    if n_clients is None:
        if kind is not Scheme.NATURAL:
            raise ConfigError(f"`n_clients` is required for scheme {kind.value!r}; got None")
    else:
        n_clients = _count(n_clients, "n_clients", 1)
        if n_clients > n:
            raise ConfigError(
                f"`n_clients` must be an int in [1, {n}] (the dataset size); got {n_clients}"
            )
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    owners: tuple[tuple[Any, ...], ...] = ()
    if kind is Scheme.NATURAL:
        if groups is None:
            raise ConfigError(
                "scheme 'natural' needs `groups`: one owner id per sample (e.g. writer ids)"
            )
        if n == 0:
            raise ConfigError("scheme 'natural' needs a non-empty dataset")
        parts, names = _natural(
            _owner_ids(groups, n), None if n_clients is None else int(n_clients), rng
        )
        owners = tuple(names)
    elif kind is Scheme.IID:
        assert n_clients is not None
        parts = _iid(n, int(n_clients), rng)
    elif kind is Scheme.SHARDS:
        classes_per_client = _count(classes_per_client, "classes_per_client", 1)
        assert n_clients is not None
        parts = _shards(y, int(n_clients), classes_per_client, rng)
    else:
        assert n_clients is not None
        if not alpha > 0:
            raise ConfigError(f"`alpha` must be > 0; got {alpha}")
        min_size = _count(min_size, "min_size", 0)
        if min_size * n_clients > n:
            raise ConfigError(f"`min_size` must be in [0, n / n_clients]; got {min_size}")
        parts = _dirichlet(y, int(n_clients), alpha, min_size, rng)
    indices = tuple(torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts)
    num_classes = int(labels.max()) + 1 if n else 0
    return Partition(
        indices=indices, labels=labels, num_classes=num_classes, scheme=kind, owners=owners
    )

"""Vertical federated learning: parties hold different feature columns of the same samples.

Top layer (``fl``), over ``smpc``'s public API only. Two or more parties hold
the same samples (rows aligned by a common id, e.g. after a private set
intersection, which is outside this module) but different *features*; one of
them also holds the labels. :func:`partition_features` splits a data set's
feature columns among parties for simulations; :func:`share_features` makes
the secret-shared join (each party shares its own columns with
``sess.share(..., src=owner)``, then ``smpc.cat`` along the feature axis);
:func:`vertical_training` trains a network on that join, everything
secret-shared, and :func:`centralised_training` is its plaintext reference
(same initial weights, batches and hyper-parameters on the joined features).

Threat model: that of ``smpc`` (semi-honest parties, a crypto provider that
colludes with no party). What is public: the number of samples, each party's
number of columns, the batch order (a seeded permutation) and the model's
shapes. No party sees another's columns or the labels; training reveals only
the final weights (to everyone who decrypts them) and, optionally, the loss
every ``log_every`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

import smpc

from .encrypted import TrainingReport, train_on_shares
from .errors import ConfigError

__all__ = [
    "FeaturePartition",
    "FeatureScheme",
    "centralised_training",
    "partition_features",
    "share_features",
    "vertical_training",
]


class FeatureScheme(StrEnum):
    """How :func:`partition_features` assigns columns to parties."""

    CONTIGUOUS = "contiguous"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class FeaturePartition:
    """Which feature columns each party holds.

    Attributes:
        columns: One sorted int64 index tensor per party (disjoint, covering
            ``range(n_features)``), positions along ``axis``.
        n_features: Size of the feature axis.
        axis: The feature axis of the data (``-1``: the last; ``1`` for a
            ``[N, F]`` table; axis 0 is always the samples).
        scheme: How the columns were assigned.
    """

    columns: tuple[torch.Tensor, ...]
    n_features: int
    axis: int
    scheme: FeatureScheme

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def sizes(self) -> list[int]:
        """Number of columns per party."""
        return [int(c.numel()) for c in self.columns]

    @property
    def order(self) -> torch.Tensor:
        """The original column of each position of the concatenated parts."""
        return torch.cat(self.columns)

    def _axis_of(self, x: torch.Tensor, name: str) -> int:
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"`{name}` must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() < 2:
            raise ConfigError(
                f"`{name}` must have a sample axis and a feature axis; got shape {tuple(x.shape)}"
            )
        axis = self.axis % x.dim()
        if axis == 0:
            raise ConfigError(f"the feature axis must not be axis 0 (the samples); got {self.axis}")
        return axis

    def split(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Each party's columns of ``features`` (a copy per party).

        Raises:
            ConfigError: ``features`` has no axis ``axis`` of size ``n_features``.
        """
        axis = self._axis_of(features, "features")
        if features.shape[axis] != self.n_features:
            raise ConfigError(
                f"`features` must have {self.n_features} columns along axis {self.axis}; "
                f"got shape {tuple(features.shape)}"
            )
        return [features.index_select(axis, c) for c in self.columns]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split` (the plaintext oracle of :func:`share_features`)."""
        if len(parts) != len(self.columns):
            raise ConfigError(f"`parts` must hold {len(self.columns)} tensors; got {len(parts)}")
        axis = self._axis_of(parts[0], "parts[0]")
        joined = torch.cat(list(parts), dim=axis)
        return joined.index_select(axis, torch.argsort(self.order))


def partition_features(
    features: torch.Tensor | int,
    n_parties: int = 2,
    scheme: FeatureScheme | str = FeatureScheme.CONTIGUOUS,
    *,
    sizes: Sequence[int] | None = None,
    axis: int = -1,
    seed: int = 0,
) -> FeaturePartition:
    """Split the feature columns of a data set among ``n_parties`` parties.

    Args:
        features: The data (``[N, ..., F, ...]``; its size along ``axis`` is the
            number of columns) or the number of columns itself.
        n_parties: Number of parties (>= 2 and <= the number of columns).
        scheme: ``"contiguous"``: consecutive blocks in order (party 0 gets the
            first columns; e.g. the left and right halves of each image row
            with ``axis=-1``); ``"random"``: random disjoint sets (seeded).
        sizes: Columns per party (summing to the number of columns); default:
            near-equal, the first parties getting one more when it does not divide.
        axis: The feature axis (not 0, the samples); ``-1`` by default.
        seed: Seed of the ``"random"`` scheme.

    Returns:
        A :class:`FeaturePartition`; ``p.split(x)`` gives each party's columns.

    Raises:
        ConfigError: Invalid arguments (named, with what was expected and got).
    """
    if isinstance(features, torch.Tensor):
        if features.dim() < 2:
            raise ConfigError(
                "`features` must have a sample axis and a feature axis; "
                f"got shape {tuple(features.shape)}"
            )
        if axis % features.dim() == 0:
            raise ConfigError(f"`axis` must not be 0 (the samples); got {axis}")
        n_features = int(features.shape[axis])
    elif isinstance(features, int) and not isinstance(features, bool):
        n_features = features
    else:
        raise ConfigError(
            f"`features` must be a torch.Tensor or a column count; got {type(features).__name__}"
        )
    if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
        raise ConfigError(f"`axis` must be a non-zero int (axis 0 holds the samples); got {axis!r}")
    try:
        kind = FeatureScheme(scheme)
    except ValueError as exc:
        raise ConfigError(
            f"`scheme` must be one of {[s.value for s in FeatureScheme]}; got {scheme!r}"
        ) from exc
    if isinstance(n_parties, bool) or not isinstance(n_parties, int) or n_parties < 2:
        raise ConfigError(f"`n_parties` must be an int >= 2; got {n_parties!r}")
    if n_parties > n_features:
        raise ConfigError(
            f"`n_parties` must be <= the number of columns {n_features}; got {n_parties}"
        )
    if sizes is None:
        base, extra = divmod(n_features, n_parties)
        counts = [base + (1 if i < extra else 0) for i in range(n_parties)]
    else:
        counts = list(sizes)
        if (
            len(counts) != n_parties
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts)
            or sum(counts) != n_features
        ):
            raise ConfigError(
                f"`sizes` must be {n_parties} positive ints summing to {n_features}; got {sizes!r}"
            )
    if kind is FeatureScheme.CONTIGUOUS:
        perm = np.arange(n_features)
    else:
        perm = np.random.default_rng(seed).permutation(n_features)
    cuts = np.cumsum(counts)[:-1]
    columns = tuple(
        torch.from_numpy(np.sort(block).astype(np.int64)) for block in np.split(perm, cuts)
    )
    return FeaturePartition(columns=columns, n_features=n_features, axis=axis, scheme=kind)


def share_features(
    parts: Sequence[torch.Tensor | None],
    sess: smpc.Session,
    *,
    owners: Sequence[int | str],
    partition: FeaturePartition | None = None,
    axis: int = -1,
) -> smpc.SharedTensor:
    """The secret-shared join of the parties' columns.

    Each part is shared by its owner (``sess.share(part, src=owner)``) and the
    shares are concatenated along the feature axis (``smpc.cat``, local). With
    a ``partition`` whose columns are not in order, the join is put back in
    the original column order by a public index (also local), so it equals
    ``partition.join(parts)``.

    Args:
        parts: One tensor per owner, aligned by sample (``None`` for the parts
            this process does not hold, in a distributed run).
        sess: The session; every owner is one of its parties.
        owners: The party (name or index) that holds each part.
        partition: The column assignment (gives the axis and the order).
        axis: The feature axis when ``partition`` is ``None``.

    Returns:
        The joined features, secret-shared.

    Cost: one sharing round per part (its owner sends one share to each
    other party); the join itself is local.
    """
    if len(parts) != len(owners) or len(parts) < 1:
        raise ConfigError(
            f"`parts` and `owners` must have the same (non-zero) length; "
            f"got {len(parts)} and {len(owners)}"
        )
    idx = [sess.party_index(o, name="owners") for o in owners]
    for part, owner in zip(parts, idx, strict=True):
        if (sess.rank is None or sess.rank == owner) and not isinstance(part, torch.Tensor):
            raise ConfigError(
                f"the part of party {sess.parties[owner]!r} must be a torch.Tensor on its owner; "
                f"got {type(part).__name__}"
            )
    shared = [sess.share(p, src=o) for p, o in zip(parts, idx, strict=True)]
    dim = partition.axis if partition is not None else axis
    rows = {s.shape[0] for s in shared}
    if len(rows) != 1:
        raise ConfigError(f"every part must hold the same samples; got row counts {sorted(rows)}")
    joined = smpc.cat(shared, dim=dim)
    if partition is not None:
        expected = partition.sizes
        got = [s.shape[dim] for s in shared]
        if got != expected:
            raise ConfigError(f"the parts must have {expected} columns along axis {dim}; got {got}")
        inverse = torch.argsort(partition.order)
        if not torch.equal(inverse, torch.arange(partition.n_features)):
            index: list[slice | torch.Tensor] = [slice(None)] * joined.dim()
            index[dim % joined.dim()] = inverse
            joined = joined[tuple(index)]
    return joined


def _targets(
    targets: torch.Tensor, loss: str, num_classes: int | None
) -> tuple[torch.Tensor, int | None]:
    if loss == "cross_entropy":
        k = int(targets.max()) + 1 if num_classes is None else num_classes
        return torch.nn.functional.one_hot(targets.long(), k).float(), k
    return targets.float(), num_classes


def vertical_training(
    model: torch.nn.Module,
    parts: Sequence[torch.Tensor | None],
    targets: torch.Tensor | None,
    sess: smpc.Session,
    *,
    owners: Sequence[int | str],
    label_owner: int | str,
    partition: FeaturePartition | None = None,
    axis: int = -1,
    model_owner: int | str | None = None,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    lr_decay: bool = False,
    loss: str = "cross_entropy",
    num_classes: int | None = None,
    log_every: int = 0,
    seed: int = 0,
) -> tuple[torch.nn.Module, TrainingReport]:
    """Train a network on the secret-shared join of vertically partitioned features.

    Protocol:
        1. Each owner shares its columns (:func:`share_features`); the join
           is ``smpc.cat`` along the feature axis.
        2. The label owner shares the labels (one-hot for cross-entropy).
        3. The model owner (default: the label owner) shares the initial
           weights (:func:`smpc.nn.encrypt`).
        4. SGD on shares over public, seeded minibatches, exactly as
           :func:`fl.encrypted_training`; the trained weights are decrypted.

    Args:
        model: Initial torch network (the model owner's copy); it sees the
            joined features in their original column order.
        parts: Each party's columns (``None`` for parts held elsewhere, in a
            distributed run).
        targets: Class indices ``[N]`` (cross-entropy) or regression targets,
            on the label owner (``None`` elsewhere).
        sess: The session; the owners are among its parties.
        owners: The party holding each part.
        label_owner: The party holding the labels.
        partition: The column assignment (gives the axis and order).
        axis: Feature axis when ``partition`` is ``None``.
        model_owner: Party that shares the initial weights (default: ``label_owner``).
        epochs: Passes over the data.
        batch_size: Examples per step.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_decay: Decay the learning rate linearly to 0 over the run.
        loss: ``"cross_entropy"`` or ``"mse"``.
        num_classes: Classes of the one-hot labels; needed on parties that do
            not hold ``targets`` (default there: from ``targets``).
        log_every: Reveal the loss every this many steps (0: never).
        seed: Seed of the public batch order.

    Returns:
        The trained network decrypted into a torch module, and a report.

    Raises:
        ConfigError: Invalid arguments.

    Cost: as :func:`fl.encrypted_training` per step; the input sharing is one
    round per party plus one for the labels.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ConfigError(f"`loss` must be 'cross_entropy' or 'mse'; got {loss!r}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"`epochs` and `batch_size` must be >= 1; got {epochs}, {batch_size}")
    labels_at = sess.party_index(label_owner, name="label_owner")
    holds_labels = sess.rank is None or sess.rank == labels_at
    y: torch.Tensor | None = None
    if holds_labels:
        if not isinstance(targets, torch.Tensor):
            raise ConfigError(
                f"`targets` must be a torch.Tensor on the label owner; got {type(targets).__name__}"
            )
        y, num_classes = _targets(targets, loss, num_classes)
    elif loss == "cross_entropy" and num_classes is None:
        raise ConfigError("`num_classes` must be given on parties that do not hold the labels")
    xs = share_features(parts, sess, owners=owners, partition=partition, axis=axis)
    ys = sess.share(y, src=labels_at)
    if ys.shape[0] != xs.shape[0]:
        raise ConfigError(
            f"`targets` must have one row per sample; got {ys.shape[0]} for {xs.shape[0]} samples"
        )
    return train_on_shares(
        model,
        xs,
        ys,
        sess,
        model_owner=label_owner if model_owner is None else model_owner,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        loss=loss,
        log_every=log_every,
        seed=seed,
    )


def centralised_training(
    model: torch.nn.Module,
    data: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    lr_decay: bool = False,
    loss: str = "cross_entropy",
    num_classes: int | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """The plaintext reference of :func:`vertical_training` on the joined features.

    Same batch order, learning-rate schedule and SGD rule (``torch.optim.SGD``,
    which ``smpc.optim.SGD`` follows), so with the same initial weights the
    two runs differ only by fixed-point rounding. Trains ``model`` in place and
    returns it.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ConfigError(f"`loss` must be 'cross_entropy' or 'mse'; got {loss!r}")
    y, _ = _targets(targets, loss, num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    total = epochs * -(-len(data) // batch_size)
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), batch_size):
            idx = order[i : i + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * (1 - step / total) if lr_decay else lr
            opt.zero_grad()
            out = model(data[idx])
            if loss == "cross_entropy":
                value = torch.nn.functional.cross_entropy(out, y[idx])
            else:
                value = torch.nn.functional.mse_loss(out, y[idx])
            value.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
    return model

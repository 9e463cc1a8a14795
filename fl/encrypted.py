"""Encrypted inference and fully encrypted training helpers (top layer, over ``smpc``'s public API).

Two roles share one :class:`smpc.Session`: a *model owner*, whose network is
secret-shared with :func:`smpc.nn.encrypt`, and a *data owner*, whose inputs
(and labels) are secret-shared batch by batch. No party sees the other's
plaintext: inference reveals only the predicted classes, and only to the data
owner; training reveals only the final weights (to whoever decrypts them) and,
optionally, the loss every ``log_every`` steps.

Threat model: that of ``smpc`` (semi-honest parties, a crypto provider that
colludes with no party). Shapes (batch size, layer sizes) are public.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import smpc
import smpc.nn as snn

from .errors import ConfigError

__all__ = ["encrypted_inference", "encrypted_training", "train_on_shares", "TrainingReport"]


def _check_data(data: torch.Tensor | None, name: str, rank: int | None, owner: int) -> None:
    if (rank is None or rank == owner) and not isinstance(data, torch.Tensor):
        raise ConfigError(
            f"`{name}` must be a torch.Tensor on its owner; got {type(data).__name__}"
        )


def encrypted_inference(
    model: torch.nn.Module,
    data: torch.Tensor | None,
    sess: smpc.Session,
    *,
    model_owner: int | str = 0,
    data_owner: int | str | None = None,
    batch_size: int = 100,
    n: int | None = None,
) -> torch.Tensor | None:
    """Predict classes of the data owner's inputs with the model owner's network, encrypted.

    Args:
        model: a torch network whose output is one score per class (``smpc.nn``
            must support its layers); only ``model_owner``'s copy is used.
        data: inputs ``[N, ...]`` (on the data owner; ``None`` elsewhere in a
            distributed run).
        sess: the session; both owners are among its parties.
        model_owner: party that shares the weights.
        data_owner: party that shares the inputs and receives the predictions
            (default: the last party).
        batch_size: inputs per encrypted batch.
        n: number of inputs (required on parties other than the data owner in a
            distributed run; otherwise ``len(data)``).

    Returns:
        Predicted class indices ``[N]`` on the data owner (in simulation, to the
        caller); ``None`` on the other parties.

    Cost: per batch one forward pass on shares plus an argmax (comparison tree)
    and one opening of the one-hot result to the data owner.
    """
    owner = sess.party_index(
        sess.world_size - 1 if data_owner is None else data_owner, name="data_owner"
    )
    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be >= 1; got {batch_size}")
    _check_data(data, "data", sess.rank, owner)
    if n is None:
        if data is None:
            raise ConfigError("`n` must be given on parties that do not hold `data`")
        n = len(data)
    enc = snn.encrypt(model, sess, src=model_owner)
    enc.eval()
    preds: list[torch.Tensor] = []
    with smpc.no_grad():
        for i in range(0, n, batch_size):
            xb = None if data is None else data[i : i + batch_size]
            scores = enc(sess.share(xb, src=owner))
            onehot = smpc.functional.argmax(scores, scores.dim() - 1)
            got = onehot.reveal(to=owner)
            if got is not None:
                preds.append(got.argmax(-1))
    return torch.cat(preds) if preds else None


@dataclass
class TrainingReport:
    """What :func:`encrypted_training` measured."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    rounds: int = 0
    bytes: int = 0


def encrypted_training(
    model: torch.nn.Module,
    data: torch.Tensor | None,
    targets: torch.Tensor | None,
    sess: smpc.Session,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    loss: str = "cross_entropy",
    num_classes: int | None = None,
    model_owner: int | str = 0,
    data_owner: int | str | None = None,
    log_every: int = 0,
    seed: int = 0,
) -> tuple[torch.nn.Module, TrainingReport]:
    """Train the model owner's network on the data owner's data, everything secret-shared.

    Args:
        model: initial torch network (model owner's copy).
        data: training inputs ``[N, ...]`` (data owner).
        targets: class indices ``[N]`` for ``loss="cross_entropy"`` (one-hot
            encoded before sharing), or regression targets for ``loss="mse"``.
        sess: the session.
        epochs: passes over the data.
        batch_size: examples per step.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        loss: ``"cross_entropy"`` or ``"mse"``.
        num_classes: classes for the one-hot targets (default: ``max(targets)+1``).
        model_owner: party that shares the initial weights.
        data_owner: party that shares data and targets (default: the last).
        log_every: reveal the loss every this many steps (0: never).
        seed: seed of the public batch order.

    Returns:
        The trained network decrypted into a torch module, and a report.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ConfigError(f"`loss` must be 'cross_entropy' or 'mse'; got {loss!r}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"`epochs` and `batch_size` must be >= 1; got {epochs}, {batch_size}")
    owner = sess.party_index(
        sess.world_size - 1 if data_owner is None else data_owner, name="data_owner"
    )
    _check_data(data, "data", sess.rank, owner)
    _check_data(targets, "targets", sess.rank, owner)
    if sess.rank is not None and sess.rank != owner:
        raise ConfigError(
            "encrypted_training runs in simulation; use smpc.run with smpc.nn directly"
        )
    assert data is not None and targets is not None
    if len(data) != len(targets):
        raise ConfigError(
            f"`data` and `targets` must have the same length; got {len(data)} and {len(targets)}"
        )
    if loss == "cross_entropy":
        k = int(targets.max()) + 1 if num_classes is None else num_classes
        y = torch.nn.functional.one_hot(targets.long(), k).float()
    else:
        y = targets.float()
    xs = sess.share(data, src=owner)
    ys = sess.share(y, src=owner)
    return train_on_shares(
        model,
        xs,
        ys,
        sess,
        model_owner=model_owner,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        loss=loss,
        log_every=log_every,
        seed=seed,
    )


def train_on_shares(
    model: torch.nn.Module,
    xs: smpc.SharedTensor,
    ys: smpc.SharedTensor,
    sess: smpc.Session,
    *,
    model_owner: int | str = 0,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    lr_decay: bool = False,
    loss: str = "cross_entropy",
    log_every: int = 0,
    seed: int = 0,
) -> tuple[torch.nn.Module, TrainingReport]:
    """SGD on already shared inputs and targets (the loop of :func:`encrypted_training`).

    Each epoch visits the rows in a public permutation drawn from a generator
    seeded with ``seed``; with ``lr_decay`` the learning rate of step ``s`` of
    ``S`` is ``lr * (1 - s / S)``.

    Args:
        model: Initial torch network, shared by ``model_owner``.
        xs: Inputs ``[N, ...]``, secret-shared.
        ys: Targets ``[N, ...]`` (one-hot for cross-entropy), secret-shared.
        sess: The session of ``xs`` and ``ys``.
        model_owner: Party that shares the initial weights.
        epochs: Passes over the data.
        batch_size: Examples per step.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        lr_decay: Decay the learning rate linearly to 0 over the run.
        loss: ``"cross_entropy"`` or ``"mse"``.
        log_every: Reveal the loss every this many steps (0: never).
        seed: Seed of the public batch order.

    Returns:
        The trained network decrypted into a torch module, and a report.
    """
    if loss not in ("cross_entropy", "mse"):
        raise ConfigError(f"`loss` must be 'cross_entropy' or 'mse'; got {loss!r}")
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"`epochs` and `batch_size` must be >= 1; got {epochs}, {batch_size}")
    n = xs.shape[0]
    enc = snn.encrypt(model, sess, src=model_owner)
    opt = smpc.optim.SGD(enc.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn: snn.Module = snn.CrossEntropyLoss() if loss == "cross_entropy" else snn.MSELoss()
    report = TrainingReport()
    before = sess.stats.snapshot()
    g = torch.Generator().manual_seed(seed)
    total = epochs * -(-n // batch_size)
    enc.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if lr_decay:
                opt.lr = lr * (1 - report.steps / total)
            opt.zero_grad()
            value = loss_fn(enc(xs[idx]), ys[idx])
            value.backward()
            opt.step()
            report.steps += 1
            if log_every and report.steps % log_every == 0:
                shown = value.reveal()
                assert shown is not None
                report.losses.append(float(shown))
    used = sess.stats - before
    report.rounds = used.rounds
    report.bytes = max(used.bytes_per_party) if sess.simulated else used.bytes
    return enc.decrypt(), report

"""A federated client: local data, local training, local evaluation (top layer, ``fl``).

Clients are plain objects, so a simulation holds thousands of them in one
process at no start-up cost: the server lends one worker ``nn.Module`` that
each client loads the global weights into, trains, and hands back. Batches
are sliced from index tensors (no ``DataLoader``), which keeps per-step
overhead at the level of the model's own forward/backward.

What is federated (:func:`federated_tensors`): the trainable parameters, then
the model's floating-point buffers (BatchNorm ``running_mean`` /
``running_var``), in that order, flattened into one vector. Every aggregator
averages that vector, so normalisation statistics are federated exactly like
weights (sample-weighted; uniformly weighted, clipped and noised with DP). The
integer counter ``num_batches_tracked`` is not a statistic of the data: the
server advances it itself (see :class:`~fl.server.Server`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from fl.errors import ConfigError
from fl.partition import DataLike, as_tensors
from fl.types import ClientMetrics, ClientUpdate, FitConfig

__all__ = [
    "Client",
    "LossFn",
    "OptimizerFactory",
    "batch_counters",
    "evaluate_model",
    "federated_tensors",
    "flatten",
    "load_vector",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]


def federated_tensors(model: nn.Module) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    """The tensors of ``model`` that federated rounds train and average.

    Returns:
        ``(params, stats)``: the parameters with ``requires_grad`` (frozen ones
        stay as they are), and the persistent floating-point buffers (BatchNorm
        running statistics and the like), each in module registration order.
        The federated vector is ``params`` then ``stats``, flattened.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    persistent = set(model.state_dict(keep_vars=True))
    stats = [b for name, b in model.named_buffers() if name in persistent and b.is_floating_point()]
    return params, stats


def batch_counters(model: nn.Module) -> list[torch.Tensor]:
    """The ``num_batches_tracked`` counters of the model's normalisation layers."""
    return [
        b
        for name, b in model.named_buffers()
        if name.rsplit(".", 1)[-1] == "num_batches_tracked" and not b.is_floating_point()
    ]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened and concatenated, detached (the inverse of :func:`load_vector`)."""
    if not tensors:
        return torch.zeros(0)
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@torch.no_grad()
def load_vector(params: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Copy a flat vector into ``params`` (parameters or buffers).

    Unlike ``torch.nn.utils.vector_to_parameters``, which makes the parameters
    views of the vector (so training would write into the caller's vector).
    """
    total = sum(p.numel() for p in params)
    if vector.numel() != total:
        raise ConfigError(f"vector has {vector.numel()} values; the parameters hold {total}")
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(vector[offset : offset + n].view_as(p))
        offset += n


def _sgd(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


def _is_classification(output: torch.Tensor, labels: torch.Tensor) -> bool:
    """Class scores ``[n, classes]`` against integer labels ``[n]``: accuracy is defined.

    Decided from the data, not from the loss, so ``nn.CrossEntropyLoss()``,
    ``F.nll_loss``, a wrapped or custom loss all report accuracy.
    """
    return (
        output.ndim == 2
        and output.shape[1] > 1
        and labels.ndim == 1
        and not labels.dtype.is_floating_point
        and not labels.dtype.is_complex
        and labels.dtype != torch.bool
    )


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn = nn.functional.cross_entropy,
    *,
    batch_size: int = 4096,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on a dataset.

    ``loss_fn`` is any mean-reduced loss, a function (``F.cross_entropy``) or a
    module (``nn.CrossEntropyLoss()``) alike. Accuracy is reported whenever the
    model outputs class scores ``[n, classes]`` for integer labels ``[n]``
    (whatever the loss); it is NaN only for other targets (regression) or an
    empty dataset.

    Returns:
        ``(loss, accuracy)``.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, int(labels.shape[0])
    classification = n > 0
    try:
        for i in range(0, n, batch_size):
            out = model(features[i : i + batch_size])
            y = labels[i : i + batch_size]
            total_loss += float(loss_fn(out, y)) * y.shape[0]
            classification = classification and _is_classification(out, y)
            if classification:
                correct += int((out.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    acc = correct / n if classification else float("nan")
    return total_loss / max(n, 1), acc


class Client:
    """One data owner of a federation.

    Args:
        client_id: Unique id (an int >= 0).
        features: Local inputs, first dimension = examples; or, with
            ``labels=None``, a labelled dataset: a ``TensorDataset``, a
            map-style ``Dataset`` of ``(features, label)`` items, a ``Subset``
            or a ``DataLoader`` (read once into tensors, see
            :func:`fl.partition.as_tensors`).
        labels: Local targets (None when ``features`` is a dataset).
        loss_fn: ``loss_fn(output, target)``; cross-entropy by default.
        optimizer: ``optimizer(params, lr)`` building this client's own torch
            optimizer each round (default: plain SGD).
        test_data: The client's own held-out ``(features, labels)``: personalised
            strategies (:class:`fl.FedAMP`) evaluate the client's own model on it,
            and federated evaluation (:meth:`evaluate_metrics`) the global model;
            without it federated evaluation uses the training data.
    """

    def __init__(
        self,
        client_id: int,
        features: torch.Tensor | DataLike,
        labels: torch.Tensor | None = None,
        *,
        loss_fn: LossFn = nn.functional.cross_entropy,
        optimizer: OptimizerFactory = _sgd,
        test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if isinstance(client_id, bool) or not hasattr(client_id, "__index__") or client_id < 0:
            raise ConfigError(f"`client_id` must be an int >= 0; got {client_id!r}")
        client_id = int(client_id)
        if not isinstance(features, torch.Tensor):
            if labels is not None:
                raise ConfigError(
                    f"client {client_id}: give `labels` only with a features tensor; "
                    f"`features` is a {type(features).__name__}"
                )
            features, labels = as_tensors(features, name=f"client {client_id}'s data")
        elif labels is None:
            raise ConfigError(f"client {client_id}: `labels` is required with a features tensor")
        elif not isinstance(labels, torch.Tensor):
            raise ConfigError(
                f"client {client_id}: `labels` must be a torch.Tensor; got {type(labels).__name__}"
            )
        if features.ndim == 0 or labels.ndim == 0:
            raise ConfigError(
                f"client {client_id}: features and labels need a first (examples) dimension"
            )
        if features.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"client {client_id}: {features.shape[0]} feature rows but {labels.shape[0]} labels"
            )
        if features.shape[0] == 0:
            raise ConfigError(f"client {client_id} holds no examples")
        if test_data is not None:
            if not (isinstance(test_data, tuple) and len(test_data) == 2):
                raise ConfigError(
                    f"client {client_id}: `test_data` must be a (features, labels) pair; "
                    f"got {type(test_data).__name__}"
                )
            tx, ty = test_data
            if tx.shape[0] != ty.shape[0] or tx.shape[0] == 0:
                raise ConfigError(
                    f"client {client_id}: `test_data` must hold matching, non-empty features "
                    f"and labels; got {tx.shape[0]} feature rows and {ty.shape[0]} labels"
                )
        self.client_id = client_id
        self.test_data = test_data
        self.features = features
        self.labels = labels
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.test_data = test_data

    def __repr__(self) -> str:
        test = "" if self.test_data is None else f", test examples={self.num_test_examples}"
        return f"Client(id={self.client_id}, examples={self.num_examples}{test})"

    @property
    def num_examples(self) -> int:
        """Number of local training examples."""
        return int(self.labels.shape[0])

    @property
    def num_test_examples(self) -> int:
        """Number of held-out local test examples (0 without ``test_data``)."""
        return 0 if self.test_data is None else int(self.test_data[1].shape[0])

    def fit(
        self,
        model: nn.Module,
        global_vector: torch.Tensor,
        config: FitConfig,
        *,
        generator: torch.Generator,
        anchor: torch.Tensor | None = None,
    ) -> ClientUpdate:
        """Train ``model`` (loaded with ``global_vector``) on the local data.

        With ``config.proximal_mu > 0`` every step adds the gradient of
        ``mu/2 ||w - a||^2``, where the anchor ``a`` is ``global_vector``
        (FedProx) or ``anchor`` when given (FedAMP: the client starts from its
        own model and is pulled toward its cloud model).

        Args:
            model: A worker module with the global architecture (overwritten).
            global_vector: The flat global vector (parameters, then floating buffers).
            config: Epochs, batch size, learning rate, proximal ``mu``.
            generator: Source of the shuffling order (deterministic runs).
            anchor: Flat parameters of the proximal term (default ``global_vector``).

        Returns:
            The update ``local - global`` (trainable parameters then floating
            buffers, see :func:`federated_tensors`) and the example count.
        """
        params, stats = federated_tensors(model)
        if anchor is not None and anchor.shape != global_vector.shape:
            raise ConfigError(
                f"`anchor` must have the shape of `global_vector` {tuple(global_vector.shape)}; "
                f"got {tuple(anchor.shape)}"
            )
        anchors: list[torch.Tensor] | None = None
        if config.proximal_mu > 0:
            load_vector([*params, *stats], global_vector if anchor is None else anchor)
            anchors = [p.detach().clone() for p in params]
        load_vector([*params, *stats], global_vector)
        opt = self.optimizer(params, config.lr)
        n, bs = self.num_examples, config.batch_size
        model.train()
        last_epoch_loss = 0.0
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator)
            epoch_loss = torch.zeros(())
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                out = model(self.features[idx])
                loss = self.loss_fn(out, self.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # torch stub gap
                if anchors is not None:
                    with torch.no_grad():
                        for p, a in zip(params, anchors, strict=True):
                            if p.grad is not None:
                                p.grad.add_(p - a, alpha=config.proximal_mu)
                opt.step()
                epoch_loss += loss.detach() * idx.numel()
            last_epoch_loss = float(epoch_loss) / n
        with torch.no_grad():
            delta = flatten([*params, *stats]) - global_vector
        return ClientUpdate(self.client_id, delta, n, last_epoch_loss)

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Loss and accuracy of ``model`` on the local data."""
        return evaluate_model(model, self.features, self.labels, self.loss_fn)

    def evaluate_test(self, model: nn.Module) -> tuple[float, float]:
        """Loss and accuracy of ``model`` on the local test split (``test_data``).

        Raises:
            ConfigError: The client holds no test split.
        """
        if self.test_data is None:
            raise ConfigError(f"client {self.client_id} holds no `test_data`")
        return evaluate_model(model, *self.test_data, self.loss_fn)

    def evaluate_metrics(self, model: nn.Module) -> ClientMetrics:
        """Federated evaluation: ``model`` on the client's test split (else its training data).

        Returns:
            The number of examples, the mean loss and the accuracy (NaN unless
            the loss is cross-entropy).
        """
        x, y = self.test_data if self.test_data is not None else (self.features, self.labels)
        loss, acc = evaluate_model(model, x, y, self.loss_fn)
        return ClientMetrics(self.client_id, int(y.shape[0]), loss, acc)

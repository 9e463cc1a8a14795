"""A federated client: local data, local training, local evaluation (top layer, ``fl``).

Clients are plain objects, so a simulation holds thousands of them in one
process at no start-up cost: the server lends one worker ``nn.Module`` that
each client loads the global weights into, trains, and hands back. Batches
are sliced from index tensors (no ``DataLoader``), which keeps per-step
overhead at the level of the model's own forward/backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from fl.errors import ConfigError
from fl.types import ClientMetrics, ClientUpdate, FitConfig

__all__ = ["Client", "LossFn", "OptimizerFactory", "evaluate_model", "load_vector"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]


@torch.no_grad()
def load_vector(params: list[nn.Parameter], vector: torch.Tensor) -> None:
    """Copy a flat vector into ``params``.

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


def _is_classification(loss_fn: LossFn) -> bool:
    return loss_fn is nn.functional.cross_entropy


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn = nn.functional.cross_entropy,
    *,
    batch_size: int = 4096,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on a dataset (accuracy NaN for regression).

    Returns:
        ``(loss, accuracy)``.
    """
    model.eval()
    total_loss, correct, n = 0.0, 0, int(labels.shape[0])
    for i in range(0, n, batch_size):
        out = model(features[i : i + batch_size])
        y = labels[i : i + batch_size]
        total_loss += float(loss_fn(out, y)) * y.shape[0]
        if _is_classification(loss_fn):
            correct += int((out.argmax(dim=1) == y).sum())
    model.train()
    acc = correct / n if _is_classification(loss_fn) and n else float("nan")
    return total_loss / max(n, 1), acc


class Client:
    """One data owner of a federation.

    Args:
        client_id: Unique id (>= 0).
        features: Local inputs, first dimension = examples.
        labels: Local targets.
        loss_fn: ``loss_fn(output, target)``; cross-entropy by default.
        optimizer: ``optimizer(params, lr)`` building this client's own torch
            optimizer each round (default: plain SGD).
        test_data: The client's own held-out ``(features, labels)``, used by
            federated evaluation (:meth:`evaluate_metrics`); without it the
            client evaluates on its training data.
    """

    def __init__(
        self,
        client_id: int,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        loss_fn: LossFn = nn.functional.cross_entropy,
        optimizer: OptimizerFactory = _sgd,
        test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if client_id < 0:
            raise ConfigError(f"`client_id` must be >= 0; got {client_id}")
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
        self.features = features
        self.labels = labels
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.test_data = test_data

    def __repr__(self) -> str:
        return f"Client(id={self.client_id}, examples={self.num_examples})"

    @property
    def num_examples(self) -> int:
        """Number of local training examples."""
        return int(self.labels.shape[0])

    def fit(
        self,
        model: nn.Module,
        global_vector: torch.Tensor,
        config: FitConfig,
        *,
        generator: torch.Generator,
    ) -> ClientUpdate:
        """Train ``model`` (loaded with ``global_vector``) on the local data.

        Args:
            model: A worker module with the global architecture (overwritten).
            global_vector: Flat global parameters.
            config: Epochs, batch size, learning rate, FedProx ``mu``.
            generator: Source of the shuffling order (deterministic runs).

        Returns:
            The update ``local - global`` and the example count.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        load_vector(params, global_vector)
        anchors = [p.detach().clone() for p in params] if config.proximal_mu > 0 else None
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
            delta = parameters_to_vector(params) - global_vector
        return ClientUpdate(self.client_id, delta, n, last_epoch_loss)

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Loss and accuracy of ``model`` on the local data."""
        return evaluate_model(model, self.features, self.labels, self.loss_fn)

    def evaluate_metrics(self, model: nn.Module) -> ClientMetrics:
        """Federated evaluation: ``model`` on the client's test split (else its training data).

        Returns:
            The number of examples, the mean loss and the accuracy (NaN unless
            the loss is cross-entropy).
        """
        x, y = self.test_data if self.test_data is not None else (self.features, self.labels)
        loss, acc = evaluate_model(model, x, y, self.loss_fn)
        return ClientMetrics(self.client_id, int(y.shape[0]), loss, acc)

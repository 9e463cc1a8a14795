"""In-process simulation of a whole federation (top layer, ``fl``).

Helpers that build :class:`~fl.client.Client` objects from a
:class:`~fl.partition.Partition` and run a :class:`~fl.server.Server`; all
clients live in one process and share one worker model, so a round costs
only the clients' training and the aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fl.aggregators import Aggregator
from fl.client import Client, LossFn, OptimizerFactory, _sgd
from fl.errors import ConfigError
from fl.partition import DataLike, Partition
from fl.server import DropoutModel, FailurePolicy, Server
from fl.strategy import Strategy
from fl.types import History

__all__ = ["make_clients", "run_simulation"]


def make_clients(
    partition: Partition,
    features: torch.Tensor | DataLike,
    labels: torch.Tensor | None = None,
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    optimizer: OptimizerFactory = _sgd,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> list[Client]:
    """One :class:`Client` per part of ``partition`` (ids 0..n-1).

    Args:
        partition: Which rows each client holds.
        features: The whole dataset's inputs, or (with ``labels=None``) a
            labelled dataset: ``TensorDataset``, map-style ``Dataset`` of
            ``(features, label)`` items, ``Subset`` or ``DataLoader``
            (see :func:`fl.partition.as_tensors`).
        labels: The whole dataset's labels (default: the partition's labels).
        loss_fn: Each client's training loss.
        optimizer: Each client's optimizer factory.
        test_fraction: Fraction of each client's rows held out as its local
            test split (``Client.test_data``, for personalised evaluation, as
            PFLlib's 75/25 split); 0 keeps every row for training.
        seed: Seed of the train/test split of each client.

    Raises:
        ConfigError: ``test_fraction`` outside [0, 1), or a client left with no
            training row.
    """
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"`test_fraction` must be in [0, 1); got {test_fraction}")
    clients = []
    for i, (x, y) in enumerate(partition.subsets(features, labels)):
        test: tuple[torch.Tensor, torch.Tensor] | None = None
        n_test = int(round(test_fraction * y.shape[0]))
        if n_test > 0:
            if n_test >= y.shape[0]:
                raise ConfigError(
                    f"`test_fraction` {test_fraction} leaves client {i} no training rows"
                )
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            order = torch.randperm(y.shape[0], generator=g)
            te, tr = order[:n_test].sort().values, order[n_test:].sort().values
            test = (x[te], y[te])
            x, y = x[tr], y[tr]
        clients.append(Client(i, x, y, loss_fn=loss_fn, optimizer=optimizer, test_data=test))
    return clients


def run_simulation(
    model: nn.Module,
    clients: Sequence[Client],
    *,
    num_rounds: int,
    strategy: Strategy | None = None,
    aggregator: Aggregator | None = None,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    seed: int = 0,
    on_failure: FailurePolicy = FailurePolicy.RAISE,
    dropout: DropoutModel | None = None,
    progress: bool | None = None,
    checkpoint: str | None = None,
) -> History:
    """Build a :class:`Server` and run ``num_rounds`` rounds; ``model`` ends trained.

    The arguments are :class:`Server`'s and :meth:`Server.run`'s; ``progress``
    defaults, as there, to a bar only when stderr is a terminal.
    """
    server = Server(
        model,
        clients,
        strategy=strategy,
        aggregator=aggregator,
        test_data=test_data,
        loss_fn=loss_fn,
        seed=seed,
        on_failure=on_failure,
        dropout=dropout,
    )
    return server.run(num_rounds, progress=progress, checkpoint=checkpoint)

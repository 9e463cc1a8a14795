"""In-process simulation of a whole federation (top layer, ``fl``).

Helpers that build :class:`~fl.client.Client` objects from a
:class:`~fl.partition.Partition` and run a :class:`~fl.server.Server`; all
clients live in one process and share one worker model, so a round costs
only the clients' training and the aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fl.aggregators import Aggregator
from fl.client import Client, LossFn, OptimizerFactory, _sgd
from fl.errors import ConfigError
from fl.evaluation import FederatedEvaluation
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
        test_fraction: Hold out this fraction of each client's rows (at random
            under ``seed``, at least one row when > 0, and at least one row
            left for training) as the client's own test split for federated
            evaluation, as LEAF and TensorFlow Federated split each writer's data.
        seed: Seed of the hold-out draw.

    Raises:
        ConfigError: ``test_fraction`` outside [0, 1).
    """
    if not (isinstance(test_fraction, int | float) and 0 <= test_fraction < 1):
        raise ConfigError(f"`test_fraction` must be in [0, 1); got {test_fraction!r}")
    clients = []
    for i, (x, y) in enumerate(partition.subsets(features, labels)):
        n = int(y.shape[0])
        n_test = 0 if test_fraction == 0 else min(n - 1, max(1, round(test_fraction * n)))
        if n_test == 0:
            clients.append(Client(i, x, y, loss_fn=loss_fn, optimizer=optimizer))
            continue
        order = torch.from_numpy(np.random.default_rng([seed, i]).permutation(n))
        test, train = order[:n_test].sort().values, order[n_test:].sort().values
        clients.append(
            Client(
                i,
                x[train],
                y[train],
                loss_fn=loss_fn,
                optimizer=optimizer,
                test_data=(x[test], y[test]),
            )
        )
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
    federated_evaluation: FederatedEvaluation | None = None,
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
        federated_evaluation=federated_evaluation,
    )
    return server.run(num_rounds, progress=progress, checkpoint=checkpoint)

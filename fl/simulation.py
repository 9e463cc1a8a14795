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
    """
    return [
        Client(i, x, y, loss_fn=loss_fn, optimizer=optimizer)
        for i, (x, y) in enumerate(partition.subsets(features, labels))
    ]


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

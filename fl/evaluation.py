"""Federated evaluation: clients evaluate the model on their own data (top layer, ``fl``).

Each evaluation round the server samples clients; each evaluates the model
it is sent (the global model, or its personalised one) on its own data and
answers with four counts::

    (loss sum, correct, classified examples, examples)

The server adds them up and reports the sample-weighted loss
``sum loss_sum / sum examples`` and the accuracy ``sum correct / sum classified``
(SecretFlow's ``evaluate`` and Flower's ``evaluate_round`` report the same
figures), plus each client's own figures.

Secure evaluation: with ``secure=True`` the count vectors go through the
server's own aggregator (secret sharing, masking, ...) as a sum, so the
server learns only the totals over the clients that answered, and which
clients answered; per-client figures are then not recorded. The evaluation
sum runs with weight 1 per client and without differential privacy: the
evaluation figures are not covered by the training run's DP guarantee
(as in Flower and TensorFlow Federated, whose DP wraps the training
aggregation only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fl.aggregators import Aggregator
from fl.errors import ConfigError, ProtocolError
from fl.types import ClientMetrics

__all__ = [
    "FederatedEvaluation",
    "FederatedMetrics",
    "aggregate_metrics",
    "metrics_vector",
    "secure_sum",
]


@dataclass(frozen=True, slots=True)
class FederatedEvaluation:
    """When and how the server runs a federated evaluation (Flower-like options).

    Attributes:
        fraction_evaluate: Fraction of the available clients that evaluate (in (0, 1]).
        min_evaluate_clients: Lower bound on their number.
        evaluate_every: Evaluate after every ``k``-th round (round numbers divisible by ``k``).
        secure: Sum the clients' counts through the server's aggregator, so
            the server learns only the totals (no per-client figures).
        value_bound: Public bound on each of a client's four counts (loss sum,
            correct, classified, examples); an aggregator with a bounded input
            range (masking) uses it as its range for the evaluation sum. A
            count above it is a :class:`~fl.errors.QuantizationRangeError`.
    """

    fraction_evaluate: float = 1.0
    min_evaluate_clients: int = 1
    evaluate_every: int = 1
    secure: bool = False
    value_bound: float = 1e5

    def __post_init__(self) -> None:
        f = self.fraction_evaluate
        if not (isinstance(f, int | float) and 0 < f <= 1):
            raise ConfigError(f"`fraction_evaluate` must be in (0, 1]; got {f!r}")
        for name in ("min_evaluate_clients", "evaluate_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`{name}` must be an int >= 1; got {v!r}")
        if not isinstance(self.secure, bool):
            raise ConfigError(f"`secure` must be a bool; got {self.secure!r}")
        b = self.value_bound
        if not (isinstance(b, int | float) and b > 0 and math.isfinite(b)):
            raise ConfigError(f"`value_bound` must be a positive finite number; got {b!r}")

    def due(self, round_index: int) -> bool:
        """Whether round ``round_index`` (1-based) ends with an evaluation."""
        return round_index % self.evaluate_every == 0

    def num_sampled(self, n_available: int) -> int:
        """How many of ``n_available`` clients evaluate."""
        k = max(self.min_evaluate_clients, round(self.fraction_evaluate * n_available))
        return min(n_available, k)

    def sample(self, client_ids: Sequence[int], generator: torch.Generator) -> list[int]:
        """The evaluating clients (sorted ids), uniformly without replacement."""
        ids = list(client_ids)
        if not ids:
            raise ConfigError("no clients available to evaluate")
        k = self.num_sampled(len(ids))
        if k == len(ids):
            return sorted(ids)
        pick = torch.randperm(len(ids), generator=generator)[:k].tolist()
        return sorted(ids[i] for i in pick)


@dataclass(frozen=True, slots=True)
class FederatedMetrics:
    """The result of one federated evaluation.

    Attributes:
        loss: Sample-weighted mean loss over the clients that answered.
        accuracy: Correct / classified examples (NaN for a non-classification loss).
        num_examples: Total examples evaluated.
        clients: Ids of the clients whose counts are in the totals.
        per_client: Each client's own figures (empty for a secure evaluation).
    """

    loss: float
    accuracy: float
    num_examples: int
    clients: tuple[int, ...]
    per_client: tuple[ClientMetrics, ...] = ()


def metrics_vector(m: ClientMetrics) -> torch.Tensor:
    """A client's counts ``(loss sum, correct, classified, examples)`` as float64."""
    n = float(m.num_examples)
    classified = not math.isnan(m.accuracy)
    return torch.tensor(
        [
            m.loss * n,
            round(m.accuracy * n) if classified else 0.0,
            n if classified else 0.0,
            n,
        ],
        dtype=torch.float64,
    )


def _from_totals(
    totals: torch.Tensor, clients: tuple[int, ...], per_client: tuple[ClientMetrics, ...]
) -> FederatedMetrics:
    loss_sum, correct, classified, examples = (float(v) for v in totals)
    # counts are integers: the secure aggregators' fixed-point error is far below 1/2
    correct, classified, examples = round(correct), round(classified), round(examples)
    return FederatedMetrics(
        loss=loss_sum / examples if examples > 0 else math.nan,
        accuracy=correct / classified if classified > 0 else math.nan,
        num_examples=examples,
        clients=clients,
        per_client=per_client,
    )


def aggregate_metrics(
    metrics: Sequence[ClientMetrics],
    *,
    aggregator: Aggregator | None = None,
    value_bound: float = 1e5,
    round_index: int = 0,
) -> FederatedMetrics:
    """Combine the clients' evaluations into the sample-weighted global figures.

    Args:
        metrics: One entry per evaluating client.
        aggregator: ``None``: the server adds the plaintext counts and keeps
            each client's figures. An aggregator: the count vectors are
            summed through its protocol (weight 1 per client, no DP; see
            :meth:`~fl.aggregators.Aggregator.metrics_aggregator`), so the
            server learns only the totals.
        value_bound: Public bound on each count (the masking aggregator's range).
        round_index: Round number (domain separation of per-round keys).

    Returns:
        The global loss and accuracy, the clients in the totals, and (plain
        only) the per-client figures.

    Raises:
        ConfigError: No metrics, or duplicate client ids.
        AggregationError: The secure sum could not complete.
    """
    if not metrics:
        raise ConfigError("need at least one client's metrics to aggregate; got 0")
    ids = [m.client_id for m in metrics]
    if len(set(ids)) != len(ids):
        raise ConfigError("client ids in `metrics` must be unique")
    vectors = {m.client_id: metrics_vector(m) for m in metrics}
    if aggregator is None:
        totals = torch.stack(list(vectors.values())).sum(dim=0)
        ordered = tuple(sorted(metrics, key=lambda m: m.client_id))
        return _from_totals(totals, tuple(sorted(ids)), ordered)
    agg = aggregator.metrics_aggregator(value_bound=value_bound)
    totals, survivors = secure_sum(agg, vectors, round_index=round_index)
    return _from_totals(totals, survivors, ())


def secure_sum(
    aggregator: Aggregator,
    vectors: Mapping[int, torch.Tensor],
    *,
    round_index: int = 0,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Sum one vector per client through an aggregator's protocol, weight 1 each.

    The aggregator returns the mean over the clients that answered (its
    denominator is their total weight, i.e. their number), so the sum is the
    mean times that number.

    Args:
        aggregator: Drives the protocol (its DP, if any, applies: pass
            :meth:`~fl.aggregators.Aggregator.metrics_aggregator` output).
        vectors: Client id -> vector (same length).
        round_index: Round number.

    Returns:
        ``(sum, survivors)``.
    """
    dims = {v.numel() for v in vectors.values()}
    if len(dims) != 1:
        raise ConfigError(f"all vectors must have the same length; got lengths {sorted(dims)}")
    (dim,) = dims
    server = aggregator.server_session(dict.fromkeys(vectors, 1.0), dim, round_index=round_index)
    sessions = {
        cid: aggregator.client_session(cid, v.to(torch.float32)) for cid, v in vectors.items()
    }
    messages: dict[int, Any] | None = server.first()
    while messages is not None:
        replies: dict[int, Any] = {}
        for cid, msg in messages.items():
            if cid not in sessions:
                raise ProtocolError(f"server addressed unknown client {cid}")
            replies[cid] = sessions[cid].respond(msg)
        messages = server.step(replies)
    result = server.result()
    return result.mean.to(torch.float64) * len(result.survivors), tuple(result.survivors)

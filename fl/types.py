"""Value objects of the federated layer: updates, round configs, results, history.

A model travels through ``fl`` as one flat float32 vector, the trainable
parameters then the floating-point buffers such as BatchNorm's running
statistics (:func:`fl.client.federated_tensors`), which is what every
aggregator sums. These are plain frozen dataclasses with no behaviour beyond formatting.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fl.errors import ConfigError

__all__ = [
    "AggregateResult",
    "ClientUpdate",
    "FitConfig",
    "History",
    "RoundResult",
]


@dataclass(frozen=True, slots=True)
class FitConfig:
    """What the server asks a client to do in one round.

    Attributes:
        epochs: Local passes over the client's data.
        batch_size: Minibatch size.
        lr: Learning rate of the client's optimizer.
        proximal_mu: FedProx proximal weight (0 = plain FedAvg local training).
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"`epochs` must be >= 1; got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1; got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"`lr` must be a positive finite number; got {self.lr}")
        if not (self.proximal_mu >= 0 and math.isfinite(self.proximal_mu)):
            raise ConfigError(f"`proximal_mu` must be >= 0; got {self.proximal_mu}")


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """One client's answer to a round.

    Attributes:
        client_id: The client's id (its index in the federation).
        delta: Flat float32 vector, local model minus the global model it received
            (trainable parameters, then floating-point buffers).
        num_examples: Number of training examples behind this update (the FedAvg weight).
        train_loss: Mean training loss over the client's last local epoch.
    """

    client_id: int
    delta: torch.Tensor
    num_examples: int
    train_loss: float = float("nan")


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """What an aggregator hands back to the server for one round.

    Attributes:
        mean: The weighted mean of the surviving clients' updates (flat float32).
        survivors: Ids of the clients whose updates are in ``mean``.
        dropped: Ids of the selected clients that dropped out (any stage).
        upload_bytes: Bytes each surviving client uploaded, by client id.
        noise_std: Standard deviation of the DP noise in ``mean`` (0 without DP).
    """

    mean: torch.Tensor
    survivors: tuple[int, ...]
    dropped: tuple[int, ...] = ()
    upload_bytes: Mapping[int, int] = field(default_factory=dict)
    noise_std: float = 0.0


@dataclass(frozen=True, slots=True)
class RoundResult:
    """Metrics of one round, as stored in a :class:`History`.

    Attributes:
        round: 1-based round number.
        selected: Ids of the clients sampled for this round.
        survivors: Ids whose updates were aggregated (empty when the round failed).
        train_loss: Sample-weighted mean of the survivors' local training losses.
        test_loss: Loss of the new global model on the server's test set (NaN if none).
        test_accuracy: Accuracy of the new global model on the test set (NaN if none).
        seconds: Wall time of the round.
        upload_bytes: Mean bytes uploaded per surviving client.
        epsilon: DP epsilon spent so far (cumulative, NaN without DP).
        failed: True when the round could not complete; the global model is unchanged.
        error: The error message of a failed round.
    """

    round: int
    selected: tuple[int, ...]
    survivors: tuple[int, ...]
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float
    upload_bytes: float = 0.0
    epsilon: float = float("nan")
    failed: bool = False
    error: str | None = None


class History:
    """Per-round metrics of a run, in order; failed rounds are explicit records."""

    __slots__ = ("rounds",)

    def __init__(self, rounds: Sequence[RoundResult] = ()) -> None:
        self.rounds: list[RoundResult] = list(rounds)

    def append(self, result: RoundResult) -> None:
        """Add one round's record."""
        self.rounds.append(result)

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[RoundResult]:
        return iter(self.rounds)

    def __getitem__(self, index: int) -> RoundResult:
        return self.rounds[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        return self.rounds == other.rounds

    def __repr__(self) -> str:
        if not self.rounds:
            return "History(0 rounds)"
        last = self.rounds[-1]
        return (
            f"History({len(self.rounds)} rounds, last accuracy {last.test_accuracy:.4f}, "
            f"failed rounds {len(self.failed_rounds)})"
        )

    @property
    def accuracy(self) -> list[float]:
        """Test accuracy per round."""
        return [r.test_accuracy for r in self.rounds]

    @property
    def loss(self) -> list[float]:
        """Test loss per round."""
        return [r.test_loss for r in self.rounds]

    @property
    def train_loss(self) -> list[float]:
        """Weighted mean local training loss per round."""
        return [r.train_loss for r in self.rounds]

    @property
    def epsilon(self) -> list[float]:
        """Cumulative DP epsilon per round (NaN without DP)."""
        return [r.epsilon for r in self.rounds]

    @property
    def failed_rounds(self) -> list[RoundResult]:
        """The records of rounds that could not complete."""
        return [r for r in self.rounds if r.failed]

    def to_dicts(self) -> list[dict[str, Any]]:
        """The records as plain dicts (JSON-friendly)."""
        return [asdict(r) for r in self.rounds]

    def table(self) -> str:
        """A fixed-width text table of the main metrics."""
        lines = ["round  clients  train_loss  test_loss  accuracy  epsilon   seconds  status"]
        for r in self.rounds:
            status = f"FAILED: {r.error}" if r.failed else "ok"
            lines.append(
                f"{r.round:5d}  {len(r.survivors):3d}/{len(r.selected):<3d}  {r.train_loss:10.4f}  "
                f"{r.test_loss:9.4f}  {r.test_accuracy:8.4f}  {r.epsilon:7.3f}  {r.seconds:8.3f}  "
                f"{status}"
            )
        return "\n".join(lines)

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Save accuracy and loss per round as a PNG (see :func:`plot_histories`)."""
        return plot_histories({"run": self}, path, title=title)


def plot_histories(
    histories: Mapping[str, History], path: str | Path, *, title: str | None = None
) -> Path:
    """Plot several runs side by side (test accuracy and test loss per round) into a PNG.

    Args:
        histories: Label -> history.
        path: Output file (``.png``).
        title: Optional figure title.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, history in histories.items():
        rounds = [r.round for r in history.rounds]
        ax_acc.plot(rounds, history.accuracy, marker=".", label=label)
        ax_loss.plot(rounds, history.loss, marker=".", label=label)
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("test accuracy")
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("test loss")
    ax_acc.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

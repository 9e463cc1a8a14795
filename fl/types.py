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
    "ClientMetrics",
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
class ClientMetrics:
    """One client's evaluation of the model it was sent, on its own data.

    Attributes:
        client_id: The client's id.
        num_examples: Examples evaluated.
        loss: Mean loss over those examples.
        accuracy: Fraction classified correctly (NaN for a non-classification loss).
    """

    client_id: int
    num_examples: int
    loss: float
    accuracy: float


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
        eval_loss: Federated evaluation: sample-weighted mean loss of the new
            model over the evaluating clients' own data (NaN when not evaluated).
        eval_accuracy: Federated evaluation: correct / examples over those clients.
        eval_clients: Ids of the clients whose figures are in ``eval_loss``/``eval_accuracy``.
        eval_examples: Total examples behind the federated figures.
        client_metrics: Each evaluating client's own figures; empty when the
            evaluation went through a secure aggregator (the server learns only totals).
        eval_error: Why the federated evaluation of this round failed (None if it did not).
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
    eval_loss: float = float("nan")
    eval_accuracy: float = float("nan")
    eval_clients: tuple[int, ...] = ()
    eval_examples: int = 0
    client_metrics: tuple[ClientMetrics, ...] = ()
    eval_error: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundResult:
        """Inverse of ``dataclasses.asdict`` (as stored by :meth:`History.to_dicts`)."""
        return cls(
            **{
                **d,
                "selected": tuple(d["selected"]),
                "survivors": tuple(d["survivors"]),
                "eval_clients": tuple(d.get("eval_clients", ())),
                "client_metrics": tuple(
                    m if isinstance(m, ClientMetrics) else ClientMetrics(**m)
                    for m in d.get("client_metrics", ())
                ),
            }
        )


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
    def federated_loss(self) -> list[float]:
        """Federated evaluation: weighted mean loss on the clients' data per round (NaN if none)."""
        return [r.eval_loss for r in self.rounds]

    @property
    def federated_accuracy(self) -> list[float]:
        """Federated evaluation: accuracy on the clients' data per round (NaN if none)."""
        return [r.eval_accuracy for r in self.rounds]

    def per_client(self, metric: str = "accuracy") -> dict[int, list[tuple[int, float]]]:
        """Each client's own evaluation figures: ``{client_id: [(round, value), ...]}``.

        Args:
            metric: ``"accuracy"`` or ``"loss"``.

        Only rounds evaluated without a secure aggregator contribute (a secure
        evaluation reveals only the totals).
        """
        if metric not in ("accuracy", "loss"):
            raise ConfigError(f"`metric` must be 'accuracy' or 'loss'; got {metric!r}")
        out: dict[int, list[tuple[int, float]]] = {}
        for r in self.rounds:
            for m in r.client_metrics:
                out.setdefault(m.client_id, []).append((r.round, getattr(m, metric)))
        return dict(sorted(out.items()))

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
        """A fixed-width text table of the main metrics (plus federated evaluation, if any)."""
        fed = any(r.eval_clients or r.eval_error for r in self.rounds)
        head = "round  clients  train_loss  test_loss  accuracy  epsilon   seconds  "
        lines = [head + ("fed_loss  fed_acc  evaluated  " if fed else "") + "status"]
        for r in self.rounds:
            status = f"FAILED: {r.error}" if r.failed else "ok"
            if r.eval_error:
                status += f" (evaluation failed: {r.eval_error})"
            extra = (
                f"{r.eval_loss:8.4f}  {r.eval_accuracy:7.4f}  {len(r.eval_clients):9d}  "
                if fed
                else ""
            )
            lines.append(
                f"{r.round:5d}  {len(r.survivors):3d}/{len(r.selected):<3d}  {r.train_loss:10.4f}  "
                f"{r.test_loss:9.4f}  {r.test_accuracy:8.4f}  {r.epsilon:7.3f}  {r.seconds:8.3f}  "
                f"{extra}{status}"
            )
        return "\n".join(lines)

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Save accuracy and loss per round as a PNG (see :func:`plot_histories`)."""
        return plot_histories({"run": self}, path, title=title)


def plot_histories(
    histories: Mapping[str, History], path: str | Path, *, title: str | None = None
) -> Path:
    """Plot several runs side by side (test accuracy and test loss per round) into a PNG.

    Runs with a federated evaluation add its global figures as dashed lines
    ("label (federated)"); runs that recorded per-client figures get a third
    panel with each client's accuracy per round (dots, in the run's colour).

    Args:
        histories: Label -> history.
        path: Output file (``.png``).
        title: Optional figure title.

    Returns:
        The path written.

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

    out = Path(path)
    per_client = any(r.client_metrics for h in histories.values() for r in h.rounds)
    fig, axes = plt.subplots(1, 3 if per_client else 2, figsize=(15 if per_client else 10, 4))
    ax_acc, ax_loss = axes[0], axes[1]
    for label, history in histories.items():
        rounds = [r.round for r in history.rounds]
        (line,) = ax_acc.plot(rounds, history.accuracy, marker=".", label=label)
        ax_loss.plot(rounds, history.loss, marker=".", label=label, color=line.get_color())
        fed = [(r.round, r.eval_accuracy, r.eval_loss) for r in history.rounds if r.eval_clients]
        if fed:
            xs, accs, losses = zip(*fed, strict=True)
            style = {"marker": "x", "linestyle": "--", "color": line.get_color()}
            ax_acc.plot(xs, accs, label=f"{label} (federated)", **style)
            ax_loss.plot(xs, losses, label=f"{label} (federated)", **style)
        if per_client:
            points = [(x, a) for pts in history.per_client().values() for x, a in pts]
            if points:
                px, py = zip(*points, strict=True)
                axes[2].scatter(px, py, s=8, alpha=0.5, color=line.get_color(), label=label)
    if per_client:
        axes[2].set_xlabel("round")
        axes[2].set_ylabel("accuracy per client (own data)")
        axes[2].grid(alpha=0.3)
        axes[2].legend()
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

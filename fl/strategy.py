"""Federated strategies (top layer, ``fl``).

Which clients train, with what config, and how the server applies the
aggregated update.

A strategy never sees individual updates: it receives the aggregator's
(weighted) mean update, so it works unchanged with every aggregator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fl.errors import ConfigError
from fl.types import FitConfig

__all__ = ["FedAvg", "FedAvgM", "FedProx", "PersonalizedStrategy", "Strategy"]


@runtime_checkable
class Strategy(Protocol):
    """What the server asks of a strategy each round."""

    @property
    def fraction_fit(self) -> float:
        """Fraction of the available clients sampled per round."""
        ...

    def sample(
        self, round_index: int, client_ids: Sequence[int], generator: torch.Generator
    ) -> list[int]:
        """The clients to train this round (sorted ids)."""
        ...

    def fit_config(self, round_index: int) -> FitConfig:
        """Local-training configuration sent to the sampled clients."""
        ...

    def apply(self, global_vector: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """The next global model from the current one and the mean update."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Server-side strategy state (for checkpoints)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        ...


@runtime_checkable
class PersonalizedStrategy(Strategy, Protocol):
    """A strategy with one model per client (e.g. :class:`fl.FedAMP`).

    The server keeps each client's own model and the model the strategy
    computes for it (its anchor); the clients train from their own model with
    the proximal term toward the anchor, and evaluation is per client.
    """

    def personalize(self, models: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each client's new anchor from this round's uploaded models."""
        ...

    def upload_bytes(self, n_params: int) -> int:
        """Bytes one client uploads per round."""
        ...


class FedAvg:
    """Federated averaging (McMahan et al. 2017), sample-weighted.

    Args:
        fraction_fit: Fraction of clients sampled per round (uniformly, without replacement).
        min_fit_clients: Lower bound on the number sampled.
        epochs: Local epochs.
        batch_size: Local batch size.
        lr: Client learning rate.
        server_lr: Server step on the mean update (1.0 = plain averaging).
    """

    def __init__(
        self,
        *,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.05,
        server_lr: float = 1.0,
    ) -> None:
        if not 0 < fraction_fit <= 1:
            raise ConfigError(f"`fraction_fit` must be in (0, 1]; got {fraction_fit}")
        if min_fit_clients < 1:
            raise ConfigError(f"`min_fit_clients` must be >= 1; got {min_fit_clients}")
        if not (server_lr > 0 and math.isfinite(server_lr)):
            raise ConfigError(f"`server_lr` must be a positive finite number; got {server_lr}")
        self._fraction_fit = float(fraction_fit)
        self.min_fit_clients = min_fit_clients
        self.server_lr = float(server_lr)
        self.config = FitConfig(epochs=epochs, batch_size=batch_size, lr=lr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction_fit={self._fraction_fit}, {self.config})"

    @property
    def fraction_fit(self) -> float:
        """Fraction of the available clients sampled per round."""
        return self._fraction_fit

    def num_sampled(self, n_available: int) -> int:
        """How many clients a round samples out of ``n_available``."""
        return min(n_available, max(self.min_fit_clients, round(self._fraction_fit * n_available)))

    def sample(
        self, round_index: int, client_ids: Sequence[int], generator: torch.Generator
    ) -> list[int]:
        """Sample ``num_sampled`` clients uniformly without replacement."""
        ids = list(client_ids)
        if not ids:
            raise ConfigError("no clients available to sample")
        k = self.num_sampled(len(ids))
        if k == len(ids):
            return sorted(ids)
        pick = torch.randperm(len(ids), generator=generator)[:k].tolist()
        return sorted(ids[i] for i in pick)

    def fit_config(self, round_index: int) -> FitConfig:
        """The same local configuration every round."""
        return self.config

    def apply(self, global_vector: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """``w <- w + server_lr * mean_delta``."""
        return global_vector + self.server_lr * mean_delta

    def state_dict(self) -> dict[str, Any]:
        """FedAvg keeps no state between rounds."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg whose clients add ``mu/2 ||w - w_global||^2``.

    Args:
        mu: Proximal weight (> 0); the other arguments are FedAvg's.
    """

    def __init__(
        self,
        *,
        mu: float = 0.01,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.05,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            server_lr=server_lr,
        )
        if not (mu > 0 and math.isfinite(mu)):
            raise ConfigError(f"`mu` must be a positive finite number; got {mu}")
        self.config = FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, proximal_mu=mu)


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019): ``v <- beta v + delta; w <- w + lr v``.

    Args:
        server_momentum: ``beta`` in [0, 1); the other arguments are FedAvg's.
    """

    def __init__(
        self,
        *,
        server_momentum: float = 0.9,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        epochs: int = 1,
        batch_size: int = 32,
        lr: float = 0.05,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            server_lr=server_lr,
        )
        if not 0 <= server_momentum < 1:
            raise ConfigError(f"`server_momentum` must be in [0, 1); got {server_momentum}")
        self.server_momentum = float(server_momentum)
        self.velocity: torch.Tensor | None = None

    def apply(self, global_vector: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """Momentum step on the mean update."""
        if self.velocity is None:
            self.velocity = mean_delta.clone()
        else:
            self.velocity = self.server_momentum * self.velocity + mean_delta
        return global_vector + self.server_lr * self.velocity

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffer."""
        return {"velocity": None if self.velocity is None else self.velocity.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the momentum buffer."""
        v = state.get("velocity")
        self.velocity = None if v is None else v.clone()

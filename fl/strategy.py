"""Federated strategies (top layer, ``fl``).

Which clients train, with what config, and how the server applies the
aggregated update.

A strategy never sees individual updates: it receives the aggregator's
(weighted) mean update, so it works unchanged with every aggregator.

Server optimisers (:class:`FedAdagrad`, :class:`FedAdam`, :class:`FedYogi`,
Reddi et al., "Adaptive Federated Optimization", ICLR 2021) treat that mean
update as a pseudo-gradient and run an adaptive step on it, in plaintext on
the server: with a secure aggregator the server already learns the mean
update (that is what secure aggregation reveals), and the optimiser's state
``m``, ``v`` is a function of the mean updates only, so an adaptive server
learns nothing that FedAvg's server does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from fl.errors import ConfigError
from fl.types import FitConfig

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "PersonalizedStrategy",
    "Strategy",
]


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


class FedOpt(FedAvg):
    """Base of the adaptive server optimisers of Reddi et al. (ICLR 2021), Algorithm 2.

    Each round, with ``delta`` the aggregated (sample-weighted mean) client
    update, the pseudo-gradient of the round::

        m <- beta_1 m + (1 - beta_1) delta                 (m starts at 0)
        v <- second-moment rule of the subclass            (v starts at tau^2)
        x <- x + eta * m / (sqrt(v) + tau)

    with no bias correction, as in the paper. Subclasses define the ``v``
    rule (:meth:`second_moment`). The optimiser runs in plaintext on the
    server on the mean update, so it works with every aggregator and the
    server learns nothing beyond the mean updates that FedAvg's server sees.

    Args:
        eta: Server learning rate ``eta`` (> 0).
        eta_l: Client learning rate ``eta_l`` (> 0): the local SGD step size.
        beta_1: First-moment decay in [0, 1).
        beta_2: Second-moment decay in [0, 1) (unused by FedAdagrad).
        tau: Adaptivity ``tau`` (> 0): smaller is more adaptive.
        fraction_fit: Fraction of clients sampled per round.
        min_fit_clients: Lower bound on the number sampled.
        epochs: Local epochs.
        batch_size: Local batch size.
    """

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        eta_l: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
        epochs: int = 1,
        batch_size: int = 32,
    ) -> None:
        for name, value in (("eta", eta), ("eta_l", eta_l), ("tau", tau)):
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"`{name}` must be a positive finite number; got {value!r}")
        for name, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ConfigError(f"`{name}` must be in [0, 1); got {value!r}")
        super().__init__(
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            epochs=epochs,
            batch_size=batch_size,
            lr=eta_l,
            server_lr=eta,
        )
        self.eta = float(eta)
        self.eta_l = float(eta_l)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.tau = float(tau)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eta={self.eta}, eta_l={self.eta_l}, beta_1={self.beta_1}, "
            f"beta_2={self.beta_2}, tau={self.tau}, fraction_fit={self.fraction_fit}, "
            f"{self.config})"
        )

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """The next ``v`` from the previous ``v`` and ``delta ** 2`` (subclass rule)."""
        raise NotImplementedError

    def apply(self, global_vector: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        """One adaptive server step on the mean update (the pseudo-gradient)."""
        if mean_delta.shape != global_vector.shape:
            raise ConfigError(
                f"`mean_delta` has shape {tuple(mean_delta.shape)}; "
                f"the model vector has {tuple(global_vector.shape)}"
            )
        delta = mean_delta.to(global_vector.dtype)
        if self.m is None or self.v is None or self.m.shape != delta.shape:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, self.tau**2)
        self.m = self.beta_1 * self.m + (1 - self.beta_1) * delta
        self.v = self.second_moment(self.v, delta * delta)
        return global_vector + self.eta * self.m / (self.v.sqrt() + self.tau)

    def state_dict(self) -> dict[str, Any]:
        """The moment estimates ``m`` and ``v``."""
        return {
            "m": None if self.m is None else self.m.clone(),
            "v": None if self.v is None else self.v.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the moment estimates."""
        m, v = state.get("m"), state.get("v")
        self.m = None if m is None else m.clone()
        self.v = None if v is None else v.clone()


class FedAdagrad(FedOpt):
    """FedAdagrad (Reddi et al. 2021): ``v <- v + delta^2``.

    See :class:`FedOpt` for the step and the arguments (``beta_2`` is unused).
    """

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """Accumulate squared pseudo-gradients."""
        return v + delta_sq


class FedAdam(FedOpt):
    """FedAdam (Reddi et al. 2021): ``v <- beta_2 v + (1 - beta_2) delta^2``.

    See :class:`FedOpt` for the step and the arguments.
    """

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """Exponential moving average of squared pseudo-gradients."""
        return self.beta_2 * v + (1 - self.beta_2) * delta_sq


class FedYogi(FedOpt):
    """FedYogi (Reddi et al. 2021): ``v <- v - (1 - beta_2) delta^2 sign(v - delta^2)``.

    Yogi (Zaheer et al. 2018) moves ``v`` additively towards ``delta^2``, so
    ``v`` cannot collapse after one large update as Adam's can. See
    :class:`FedOpt` for the step and the arguments.
    """

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """Additive, sign-controlled update of ``v``."""
        return v - (1 - self.beta_2) * delta_sq * torch.sign(v - delta_sq)

"""The aggregator interface, the plaintext reference and the secret-sharing aggregator.

Top layer (``fl``). An aggregator turns the selected clients' updates into
their weighted mean. It is written as a message protocol between one server
session and one client session per client (:class:`ServerSession`,
:class:`ClientSession`), so the same code runs in the in-process simulation
(:meth:`Aggregator.aggregate`) and over the network (:mod:`fl.network`), where
a client that does not answer a stage is a dropout.

Weights: without DP, client ``i`` contributes ``w_i * delta_i`` with
``w_i = n_i / sum_j n_j`` over the selected clients (sample counts are public
metadata, as in FedAvg); the server divides the sum by the survivors' total
weight. With DP (:mod:`fl.dp`), ``w_i = 1/m`` for the ``m`` selected clients
and the denominator stays ``m`` (DP-FedAvg's fixed-denominator estimator).
"""

from __future__ import annotations

import contextlib
import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch

from fl.clipping import clip_by_l2_norm
from fl.dp import DifferentialPrivacy, GaussianNoise, RdpAccountant
from fl.errors import AggregationError, ConfigError, InsufficientClientsError, ProtocolError
from fl.types import AggregateResult, ClientUpdate

__all__ = [
    "Aggregator",
    "ClientSession",
    "InputRequest",
    "PlainAggregator",
    "SecretSharingAggregator",
    "ServerSession",
    "Stage",
    "check_update",
]


class Stage(StrEnum):
    """Stages of an aggregation round, in protocol order.

    Plain and secret-sharing aggregation use only :attr:`INPUT`; the masking
    protocol uses all four. A simulated dropout "at stage S" means the client
    never answers S or any later stage.
    """

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    INPUT = "input"
    UNMASK = "unmask"

    @property
    def order(self) -> int:
        """Position of the stage in the protocol."""
        return list(Stage).index(self)


class Message(Protocol):
    """Anything sent between a server session and a client session."""

    @property
    def stage(self) -> Stage: ...

    def nbytes(self) -> int:
        """Bytes this message would take on the wire (payload only)."""
        ...


class ServerSession(Protocol):
    """Server side of one aggregation round."""

    def first(self) -> dict[int, Any]:
        """Messages of the first stage, by client id."""
        ...

    def step(self, replies: Mapping[int, Any]) -> dict[int, Any] | None:
        """Take one stage's replies (missing ids = dropouts); next messages, or None when done."""
        ...

    def result(self) -> AggregateResult:
        """The aggregate, once :meth:`step` returned None."""
        ...


class ClientSession(Protocol):
    """Client side of one aggregation round."""

    def respond(self, message: Any) -> Any:
        """Answer one server message."""
        ...


@dataclass(frozen=True, slots=True)
class InputRequest:
    """Server -> client: send your weighted contribution (plain and secret sharing)."""

    weight: float
    dim: int
    channel: Any = None  # secret sharing: the aggregation parties' smpc session (simulation)

    @property
    def stage(self) -> Stage:
        """Always :attr:`Stage.INPUT`."""
        return Stage.INPUT

    def nbytes(self) -> int:
        """Payload size."""
        return 16


@dataclass(frozen=True, slots=True)
class PlainInput:
    """Client -> server: the weighted update in the clear (float32)."""

    client_id: int
    value: torch.Tensor

    @property
    def stage(self) -> Stage:
        """Always :attr:`Stage.INPUT`."""
        return Stage.INPUT

    def nbytes(self) -> int:
        """Payload size."""
        return self.value.numel() * self.value.element_size()


@dataclass(frozen=True, slots=True)
class SharedInput:
    """Client -> aggregation parties: the weighted update, secret-shared."""

    client_id: int
    value: Any  # smpc.SharedTensor
    wire_bytes: int

    @property
    def stage(self) -> Stage:
        """Always :attr:`Stage.INPUT`."""
        return Stage.INPUT

    def nbytes(self) -> int:
        """Bytes of all shares sent by the client (one ring element per party per coordinate)."""
        return self.wire_bytes


def check_update(delta: torch.Tensor, name: str) -> None:
    """Refuse an update that no aggregator can sum correctly.

    Args:
        delta: The update.
        name: How the error names it (``"round 3: client 7's update"``).

    Raises:
        ConfigError: ``delta`` is not a real (float or integer) tensor.
        AggregationError: ``delta`` holds NaN or inf (a diverged local training),
            which would make the mean NaN/inf, or be silently clipped to NaN.
    """
    if not isinstance(delta, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor; got {type(delta).__name__}")
    if delta.is_complex() or delta.dtype == torch.bool:
        raise ConfigError(f"{name} must be a real float tensor; got dtype {delta.dtype}")
    if delta.is_floating_point() and not bool(torch.isfinite(delta).all()):
        bad = int((~torch.isfinite(delta)).sum())
        raise AggregationError(
            f"{name} holds {bad} NaN/inf value(s) of {delta.numel()}: its local training "
            "diverged (lower the learning rate, clip the gradients or the update)"
        )


def prepare_contribution(
    delta: torch.Tensor,
    weight: float,
    dp: DifferentialPrivacy | None,
    *,
    name: str = "the update",
) -> torch.Tensor:
    """Client side: check, clip (with DP) and weight an update, as a flat float32 vector.

    Raises:
        ConfigError, AggregationError: see :func:`check_update`.
    """
    check_update(delta, name)
    v = delta.detach().reshape(-1).to(torch.float32)
    if dp is not None:
        v = clip_by_l2_norm(v, dp.clip_norm)
    return v * weight


class Aggregator(ABC):
    """Base of every aggregator: weights, DP accounting and the in-process driver.

    Subclasses implement :meth:`server_session` and :meth:`client_session`.
    """

    def __init__(self, *, dp: DifferentialPrivacy | None = None) -> None:
        if dp is not None and not isinstance(dp, DifferentialPrivacy):
            raise ConfigError(
                f"`dp` must be a DifferentialPrivacy or None; got {type(dp).__name__}"
            )
        self.dp = dp
        self.noise_multiplier: float = (
            0.0 if dp is None or dp.noise_multiplier is None else dp.noise_multiplier
        )
        self.sampling_rate: float = 1.0
        self.accountant = RdpAccountant()
        self._noise_generator: GaussianNoise | None = None

    # ----------------------------------------------------------------- DP
    def setup(self, *, num_rounds: int, sampling_rate: float) -> None:
        """Called by the server before a run: calibrates DP noise to the run's length."""
        if not 0 < sampling_rate <= 1:
            raise ConfigError(f"`sampling_rate` must be in (0, 1]; got {sampling_rate}")
        self.sampling_rate = sampling_rate
        if self.dp is not None:
            self.noise_multiplier = self.dp.resolve(
                num_rounds=num_rounds, sampling_rate=sampling_rate
            )

    @property
    def epsilon(self) -> float:
        """DP epsilon spent so far at ``dp.target_delta`` (NaN without DP)."""
        if self.dp is None:
            return math.nan
        return self.accountant.get_epsilon(self.dp.target_delta)

    def noise_generator(self) -> GaussianNoise:
        """The DP noise generator (created on first use)."""
        if self._noise_generator is None:
            assert self.dp is not None
            self._noise_generator = self.dp.generator()
        return self._noise_generator

    def average_noise_std(self, n_selected: int) -> float:
        """Std of the DP noise on the average for ``n_selected`` clients (0 without DP)."""
        if self.dp is None:
            return 0.0
        return self.noise_multiplier * self.dp.clip_norm / n_selected

    def weights(self, num_examples: Mapping[int, int]) -> dict[int, float]:
        """Per-client weights: ``n_i / sum n`` (or ``1/m`` with DP)."""
        if not num_examples:
            raise ConfigError("cannot weight an empty set of clients")
        for cid, n in num_examples.items():
            if isinstance(n, bool) or not hasattr(n, "__index__") or n < 0:
                raise ConfigError(f"client {cid}'s `num_examples` must be an int >= 0; got {n!r}")
        if self.dp is not None:
            return {cid: 1.0 / len(num_examples) for cid in num_examples}
        total = sum(num_examples.values())
        if total <= 0:
            raise ConfigError("the selected clients hold 0 examples in total")
        return {cid: n / total for cid, n in num_examples.items()}

    def finalize(
        self,
        total: torch.Tensor,
        survivors: Collection[int],
        weights: Mapping[int, float],
        *,
        noised: bool,
    ) -> tuple[torch.Tensor, float]:
        """Server side: turn the survivors' weighted sum into the mean (+ central DP noise).

        Raises:
            AggregationError: The mean is not finite (float32 overflow of the sum).
        """
        if self.dp is not None:
            std = self.average_noise_std(len(weights))
            if not noised and std > 0:
                total = total + self.noise_generator().normal(std, total.shape, total.dtype)
            mean = total
        else:
            std = 0.0
            mean = total / sum(weights[c] for c in survivors)
        if not bool(torch.isfinite(mean).all()):
            raise AggregationError(
                f"the mean of clients {sorted(survivors)} is not finite (float32 overflow); "
                "clip the updates"
            )
        return mean, std

    def record_round(self) -> None:
        """Account one completed round (DP)."""
        if self.dp is not None:
            self.accountant.step(self.noise_multiplier, self.sampling_rate)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the privacy accountant)."""
        return {
            "accountant": self.accountant.state_dict(),
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "noise_generator": None
            if self._noise_generator is None
            else self._noise_generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.accountant.load_state_dict(state["accountant"])
        self.noise_multiplier = float(state["noise_multiplier"])
        self.sampling_rate = float(state["sampling_rate"])
        if state.get("noise_generator") is not None:
            self.noise_generator().set_state(state["noise_generator"])

    def metrics_aggregator(self, *, value_bound: float) -> Aggregator:
        """A copy of this aggregator for summing evaluation counts.

        Same protocol, parties and settings, but without differential privacy
        (evaluation sums are outside the training run's DP accounting) and,
        for an aggregator with a bounded input range, a range of at least
        ``value_bound`` per coordinate. The original is not modified.

        Args:
            value_bound: Public bound on each coordinate of a client's vector.
        """
        if not (value_bound > 0 and math.isfinite(value_bound)):
            raise ConfigError(f"`value_bound` must be a positive finite number; got {value_bound}")
        out = copy.copy(self)
        out.dp = None
        out.noise_multiplier = 0.0
        out.accountant = RdpAccountant()
        out._noise_generator = None
        return out

    # ---------------------------------------------------------- protocol
    @abstractmethod
    def server_session(
        self, weights: Mapping[int, float], dim: int, *, round_index: int = 0
    ) -> ServerSession:
        """Start the server side of one round over the clients in ``weights``."""

    @abstractmethod
    def client_session(self, client_id: int, delta: torch.Tensor) -> ClientSession:
        """Start the client side of one round for one client's update."""

    def aggregate(
        self,
        updates: Sequence[ClientUpdate],
        *,
        round_index: int = 0,
        dropouts: Mapping[Stage, Collection[int]] | Mapping[str, Collection[int]] | None = None,
    ) -> AggregateResult:
        """Run one aggregation round in process.

        Args:
            updates: One update per selected client (same length vectors).
            round_index: Round number (domain separation of per-round keys).
            dropouts: Simulated dropouts: stage -> client ids that vanish when
                that stage's message reaches them (and never answer again).

        Returns:
            The weighted mean of the survivors' updates.

        Raises:
            AggregationError: The round cannot complete (e.g.
                :class:`~fl.errors.InsufficientClientsError`), or updates are invalid.
        """
        if not updates:
            raise ConfigError("need at least one update to aggregate; got 0")
        by_id = {u.client_id: u for u in updates}
        if len(by_id) != len(updates):
            raise ConfigError("client ids in `updates` must be unique")
        dim = updates[0].delta.numel()
        for u in updates:
            check_update(u.delta, f"round {round_index}: client {u.client_id}'s update")
            if u.delta.numel() != dim:
                raise ConfigError(
                    f"client {u.client_id}'s update has {u.delta.numel()} values; expected {dim}"
                )
        drop_at: dict[int, Stage] = {}
        for stage, ids in (dropouts or {}).items():
            try:
                st = Stage(stage)
            except ValueError as exc:
                raise ConfigError(
                    f"`dropouts` keys must be stages {[s.value for s in Stage]}; got {stage!r}"
                ) from exc
            for cid in ids:
                if cid not in by_id:
                    raise ConfigError(
                        f"`dropouts` names client {cid!r} at stage {st.value}, which is not in "
                        f"this round (clients {sorted(by_id)})"
                    )
                drop_at[cid] = st
        weights = self.weights({cid: u.num_examples for cid, u in by_id.items()})
        server = self.server_session(weights, dim, round_index=round_index)
        clients = {cid: self.client_session(cid, u.delta) for cid, u in by_id.items()}
        messages: dict[int, Any] | None = server.first()
        while messages is not None:
            replies: dict[int, Any] = {}
            for cid, msg in messages.items():
                if cid not in clients:
                    raise ProtocolError(f"server addressed unknown client {cid}")
                gone = drop_at.get(cid)
                if gone is not None and msg.stage.order >= gone.order:
                    continue
                replies[cid] = clients[cid].respond(msg)
            messages = server.step(replies)
        result = server.result()
        self.record_round()
        return result


# ------------------------------------------------------------------ plain
class _PlainServer:
    def __init__(
        self, agg: Aggregator, weights: Mapping[int, float], dim: int, channel: Any = None
    ):
        self.agg, self.weights, self.dim, self.channel = agg, dict(weights), dim, channel
        self._result: AggregateResult | None = None

    def first(self) -> dict[int, Any]:
        return {
            cid: InputRequest(weight=w, dim=self.dim, channel=self.channel)
            for cid, w in self.weights.items()
        }

    def _sum(self, replies: Mapping[int, Any]) -> torch.Tensor:
        total = torch.zeros(self.dim, dtype=torch.float64)
        for reply in replies.values():
            total += reply.value.to(torch.float64)
        return total.to(torch.float32)

    def step(self, replies: Mapping[int, Any]) -> None:
        for cid, reply in replies.items():
            if cid not in self.weights or reply.stage is not Stage.INPUT:
                raise ProtocolError(f"unexpected reply from client {cid} at stage {Stage.INPUT}")
        if not replies:
            raise InsufficientClientsError(Stage.INPUT.value, 0, 1)
        total = self._sum(replies)
        survivors = tuple(sorted(replies))
        mean, std = self.agg.finalize(total, survivors, self.weights, noised=False)
        self._result = AggregateResult(
            mean=mean,
            survivors=survivors,
            dropped=tuple(sorted(set(self.weights) - set(replies))),
            upload_bytes={cid: r.nbytes() for cid, r in replies.items()},
            noise_std=std,
        )
        return None

    def result(self) -> AggregateResult:
        if self._result is None:
            raise ProtocolError("result() called before the round finished")
        return self._result


class _PlainClient:
    def __init__(self, agg: Aggregator, client_id: int, delta: torch.Tensor) -> None:
        self.agg, self.client_id, self.delta = agg, client_id, delta

    def respond(self, message: Any) -> PlainInput:
        if not isinstance(message, InputRequest):
            raise ProtocolError(
                f"client {self.client_id}: unexpected message {type(message).__name__}"
            )
        return PlainInput(
            self.client_id,
            prepare_contribution(
                self.delta, message.weight, self.agg.dp, name=f"client {self.client_id}'s update"
            ),
        )


class PlainAggregator(Aggregator):
    """The reference: clients send weighted updates in the clear; the server sums.

    Security:
        None: the server sees every client's update.

    Cost:
        One message per client, 4 bytes (float32) per parameter.
    """

    def server_session(
        self, weights: Mapping[int, float], dim: int, *, round_index: int = 0
    ) -> ServerSession:
        """Start the server side of one round."""
        return _PlainServer(self, weights, dim)

    def client_session(self, client_id: int, delta: torch.Tensor) -> ClientSession:
        """Start the client side of one round."""
        return _PlainClient(self, client_id, delta)


# ---------------------------------------------------------- secret sharing
class _SecretSharingServer(_PlainServer):
    def __init__(
        self, agg: SecretSharingAggregator, weights: Mapping[int, float], dim: int
    ) -> None:
        import smpc

        self._stack = contextlib.ExitStack()
        self.session = self._stack.enter_context(
            smpc.Session(parties=agg.parties, frac_bits=agg.frac_bits, seed=agg.seed)
        )
        super().__init__(agg, weights, dim, channel=self.session)

    def step(self, replies: Mapping[int, Any]) -> None:
        try:
            return super().step(replies)
        finally:
            self._stack.close()

    def _sum(self, replies: Mapping[int, Any]) -> torch.Tensor:
        shared = [r.value for r in replies.values()]
        acc = shared[0]
        for s in shared[1:]:
            acc = acc + s
        revealed: torch.Tensor = acc.reveal()
        return revealed.to(torch.float32).reshape(-1)


class _SecretSharingClient(_PlainClient):
    def respond(self, message: Any) -> SharedInput:  # type: ignore[override]
        if not isinstance(message, InputRequest) or message.channel is None:
            raise ProtocolError(
                f"client {self.client_id}: unexpected message {type(message).__name__}"
            )
        x = prepare_contribution(
            self.delta, message.weight, self.agg.dp, name=f"client {self.client_id}'s update"
        )
        assert isinstance(self.agg, SecretSharingAggregator)
        shared = message.channel.share(x.to(torch.float64))
        return SharedInput(self.client_id, shared, wire_bytes=8 * x.numel() * self.agg.n_parties)


class SecretSharingAggregator(Aggregator):
    """Secure aggregation by additive secret sharing over ``smpc`` (Z_2^64, fixed point).

    Protocol:
        1. The server announces each selected client's weight ``w_i``.
        2. Client ``i`` encodes ``x_i = w_i * delta_i`` in fixed point
           (``frac_bits``) and splits it into additive shares ``[x_i]``, one
           per aggregation party (2 or 3 parties, plus smpc's crypto provider,
           which is not needed for additions).
        3. Each party adds the shares it received: ``[s] = sum_i [x_i]``
           (local, no communication).
        4. The parties open ``s`` to the server only; the server divides by the
           survivors' public total weight.

    Security:
        Semi-honest, non-colluding aggregation parties: any coalition of fewer
        than all parties sees only uniformly random ring elements. The server
        learns the weighted average (and nothing about single clients, beyond
        what the average reveals). All parties colluding learn every update.
        Dropped clients simply contribute nothing.

    Cost:
        Each client uploads ``8 * parties`` bytes per parameter; the
        parties exchange nothing until the final opening (one round).
        Fixed-point error per coordinate of the average: at most
        ``n * 2^-(frac_bits+1) / sum(w)``.

    Args:
        parties: Number (2 or 3) or names of the aggregation parties.
        frac_bits: Fixed-point precision of the encoding.
        dp: Optional differential privacy (central noise added by the server).
        seed: smpc testing switch for reproducible shares; ``None`` in real runs.
    """

    def __init__(
        self,
        parties: int | Sequence[str] = 2,
        *,
        frac_bits: int = 16,
        dp: DifferentialPrivacy | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(dp=dp)
        n = parties if isinstance(parties, int) else len(parties)
        if n < 2:
            raise ConfigError(f"`parties` must be >= 2; got {parties!r}")
        if dp is not None and dp.distributed:
            raise ConfigError("distributed DP noise needs MaskingAggregator; use distributed=False")
        self.parties: int | tuple[str, ...] = (
            parties if isinstance(parties, int) else tuple(parties)
        )
        self.n_parties = n
        self.frac_bits = frac_bits
        self.seed = seed

    def tolerance(self, n_clients: int, total_weight: float = 1.0) -> float:
        """Worst-case fixed-point error of one coordinate of the average."""
        return n_clients * 2.0 ** -(self.frac_bits + 1) / total_weight + 1e-6

    def server_session(
        self, weights: Mapping[int, float], dim: int, *, round_index: int = 0
    ) -> ServerSession:
        """Open an smpc session among the aggregation parties for this round."""
        try:
            return _SecretSharingServer(self, weights, dim)
        except ImportError as exc:  # pragma: no cover - smpc is part of this project
            raise AggregationError("SecretSharingAggregator needs the `smpc` package") from exc

    def client_session(self, client_id: int, delta: torch.Tensor) -> ClientSession:
        """Start the client side of one round."""
        return _SecretSharingClient(self, client_id, delta)

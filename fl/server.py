"""The federated server loop (top layer, ``fl``): rounds, evaluation, checkpoints.

Each round the server samples clients (strategy), has each train from the
current global model, aggregates the updates (aggregator: plain, secret
sharing or masking, with optional DP), applies the mean update (strategy) and
evaluates. The same loop drives the in-process simulation; the networked
runtime (:mod:`fl.network`) reuses the strategy and aggregator code.

Determinism: every random choice of round ``r`` (sampling, shuffling,
simulated dropouts) comes from a generator seeded by ``(seed, r)``, and a
checkpoint stores the global model, the round number, the strategy state,
the aggregator state (privacy accountant, DP noise generator) and the
history, so a resumed run continues exactly as if it had not stopped.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from fl.aggregators import Aggregator, PlainAggregator, Stage
from fl.client import Client, LossFn, evaluate_model, load_vector
from fl.errors import AggregationError, CheckpointError, ConfigError, FlError
from fl.strategy import FedAvg, Strategy
from fl.types import AggregateResult, ClientUpdate, History, RoundResult

__all__ = ["DropoutModel", "FailurePolicy", "Server", "round_generator"]

_CHECKPOINT_VERSION = 1
# The fields a checkpoint must hold, and their types.
_CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "round": int,
    "seed": int,
    "global_vector": torch.Tensor,
    "strategy": dict,
    "aggregator": dict,
    "history": list,
}


def _type_names(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join(names)


_MIX = 1_000_003


def round_generator(seed: int, round_index: int, salt: int = 0) -> torch.Generator:
    """The generator of round ``round_index`` (``salt`` separates uses, e.g. a client id)."""
    g = torch.Generator()
    g.manual_seed(((seed * _MIX + round_index) * _MIX + salt) % (1 << 62))
    return g


class FailurePolicy(StrEnum):
    """What the server does when a round cannot complete."""

    RAISE = "raise"  # re-raise the AggregationError to the caller
    RECORD = "record"  # keep the global model, append a failed RoundResult, go on


@dataclass(frozen=True, slots=True)
class DropoutModel:
    """Simulated client dropouts: each selected client drops with probability ``rate``.

    Attributes:
        rate: Per-client dropout probability per round.
        stage: The protocol stage at which dropped clients vanish; ``None``
            draws a stage uniformly per dropped client.
    """

    rate: float
    stage: Stage | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ConfigError(f"`rate` must be in [0, 1]; got {self.rate}")

    def draw(self, selected: Sequence[int], generator: torch.Generator) -> dict[Stage, list[int]]:
        """Which clients drop at which stage this round."""
        out: dict[Stage, list[int]] = {}
        stages = list(Stage)
        u = torch.rand(len(selected), generator=generator).tolist()
        s = torch.randint(len(stages), (len(selected),), generator=generator).tolist()
        for cid, ui, si in zip(selected, u, s, strict=True):
            if ui < self.rate:
                out.setdefault(self.stage if self.stage is not None else stages[si], []).append(cid)
        return out


class Server:
    """Runs federated rounds over in-process :class:`~fl.client.Client` objects.

    Args:
        model: The global model (its parameters are the initial weights; it is
            updated in place after every round).
        clients: The federation.
        strategy: Sampling, local config and server update (default :class:`FedAvg`).
        aggregator: How updates are combined (default :class:`PlainAggregator`).
        test_data: ``(features, labels)`` evaluated after every round.
        loss_fn: Loss used for evaluation (cross-entropy by default).
        seed: Seed of every random choice of the run.
        on_failure: Raise (default) or record a failed round.
        dropout: Simulated dropouts.
    """

    def __init__(
        self,
        model: nn.Module,
        clients: Sequence[Client],
        *,
        strategy: Strategy | None = None,
        aggregator: Aggregator | None = None,
        test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss_fn: LossFn = nn.functional.cross_entropy,
        seed: int = 0,
        on_failure: FailurePolicy = FailurePolicy.RAISE,
        dropout: DropoutModel | None = None,
    ) -> None:
        if not clients and type(self) is Server:
            raise ConfigError("a federation needs at least one client")
        ids = [c.client_id for c in clients]
        if len(set(ids)) != len(ids):
            raise ConfigError("client ids must be unique")
        self.model = model
        self.clients = {c.client_id: c for c in clients}
        self.strategy: Strategy = strategy if strategy is not None else FedAvg()
        self.aggregator: Aggregator = aggregator if aggregator is not None else PlainAggregator()
        self.test_data = test_data
        self.loss_fn = loss_fn
        self.seed = seed
        self.on_failure = FailurePolicy(on_failure)
        self.dropout = dropout
        self.worker = copy.deepcopy(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.global_vector = parameters_to_vector(self.params).detach().clone()
        self.round = 0
        self.history = History()
        self._prepared_for: int | None = None

    # ------------------------------------------------------------ rounds
    def _prepare(self, num_rounds: int) -> None:
        if self._prepared_for != num_rounds:
            self.aggregator.setup(num_rounds=num_rounds, sampling_rate=self.strategy.fraction_fit)
            self._prepared_for = num_rounds

    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the current global model (NaN without test data)."""
        if self.test_data is None:
            return math.nan, math.nan
        return evaluate_model(self.model, *self.test_data, self.loss_fn)

    def train_clients(self, selected: Sequence[int], round_index: int) -> list[ClientUpdate]:
        """Local training of the selected clients, each from the current global model."""
        config = self.strategy.fit_config(round_index)
        updates = []
        for cid in selected:
            g = round_generator(self.seed, round_index, cid + 1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=g)))
                updates.append(
                    self.clients[cid].fit(self.worker, self.global_vector, config, generator=g)
                )
        return updates

    def available_clients(self) -> list[int]:
        """Ids of the clients that can be sampled this round."""
        return sorted(self.clients)

    def train_and_aggregate(
        self, selected: Sequence[int], round_index: int, dropouts: Mapping[Stage, Sequence[int]]
    ) -> tuple[list[ClientUpdate], AggregateResult]:
        """Local training then aggregation (overridden by the networked server)."""
        updates = self.train_clients(selected, round_index)
        return updates, self.aggregator.aggregate(
            updates, round_index=round_index, dropouts=dropouts
        )

    def run_round(self, num_rounds: int | None = None) -> RoundResult:
        """Run the next round and append its record to :attr:`history`."""
        self._prepare(num_rounds if num_rounds is not None else self.round + 1)
        r = self.round + 1
        start = time.perf_counter()
        g = round_generator(self.seed, r)
        selected = self.strategy.sample(r, self.available_clients(), g)
        dropouts = self.dropout.draw(selected, g) if self.dropout is not None else {}
        try:
            updates, agg = self.train_and_aggregate(selected, r, dropouts)
        except AggregationError as exc:
            if self.on_failure is FailurePolicy.RAISE:
                raise
            result = RoundResult(
                round=r,
                selected=tuple(selected),
                survivors=(),
                train_loss=math.nan,
                test_loss=math.nan,
                test_accuracy=math.nan,
                seconds=time.perf_counter() - start,
                epsilon=self.aggregator.epsilon,
                failed=True,
                error=f"{type(exc).__name__}: {exc}",
            )
            self.round = r
            self.history.append(result)
            return result
        return self._complete(r, selected, updates, agg, start)

    def _complete(
        self,
        r: int,
        selected: Sequence[int],
        updates: Sequence[ClientUpdate],
        agg: AggregateResult,
        start: float,
    ) -> RoundResult:
        self.global_vector = self.strategy.apply(self.global_vector, agg.mean).detach()
        load_vector(self.params, self.global_vector)
        survivors = set(agg.survivors)
        kept = [u for u in updates if u.client_id in survivors]
        n = sum(u.num_examples for u in kept)
        train_loss = sum(u.train_loss * u.num_examples for u in kept) / n if n else math.nan
        test_loss, test_acc = self.evaluate()
        up = agg.upload_bytes
        result = RoundResult(
            round=r,
            selected=tuple(selected),
            survivors=tuple(agg.survivors),
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=time.perf_counter() - start,
            upload_bytes=sum(up.values()) / len(up) if up else 0.0,
            epsilon=self.aggregator.epsilon,
        )
        self.round = r
        self.history.append(result)
        return result

    def run(
        self,
        num_rounds: int,
        *,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 1,
    ) -> History:
        """Run until ``num_rounds`` rounds are done in total.

        With ``checkpoint``, an existing checkpoint at that path is loaded first
        (so re-running an interrupted command resumes it), and a new one is
        written every ``checkpoint_every`` rounds and at the end.

        Returns:
            The history of all rounds (including resumed ones).
        """
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed

        if num_rounds < 0:
            raise ConfigError(f"`num_rounds` must be >= 0; got {num_rounds}")
        if checkpoint_every < 1:
            raise ConfigError(f"`checkpoint_every` must be >= 1; got {checkpoint_every}")
        if checkpoint is not None and Path(checkpoint).exists():
            self.load_checkpoint(checkpoint)
        self._prepare(num_rounds)
        bar = tqdm(
            total=num_rounds, initial=self.round, disable=not progress, unit="round", desc="fl"
        )
        try:
            while self.round < num_rounds:
                res = self.run_round(num_rounds)
                bar.update(1)
                bar.set_postfix(acc=f"{res.test_accuracy:.4f}", loss=f"{res.test_loss:.4f}")
                if checkpoint is not None and (
                    self.round % checkpoint_every == 0 or self.round == num_rounds
                ):
                    self.save_checkpoint(checkpoint)
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the run."""
        return {
            "version": _CHECKPOINT_VERSION,
            "round": self.round,
            "seed": self.seed,
            "global_vector": self.global_vector.clone(),
            "strategy": self.strategy.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "history": self.history.to_dicts(),
            "rng": torch.random.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same model architecture and seed).

        Raises:
            CheckpointError: ``state`` lacks a field, holds one of the wrong type,
                or belongs to another model or seed.
        """
        if not isinstance(state, Mapping):
            raise CheckpointError(f"a checkpoint must hold a dict; got {type(state).__name__}")
        if state.get("version") != _CHECKPOINT_VERSION:
            raise CheckpointError(f"unsupported checkpoint version {state.get('version')!r}")
        missing = [k for k in _CHECKPOINT_FIELDS if k not in state]
        if missing:
            raise CheckpointError(f"the checkpoint lacks the fields {missing}")
        for key, types in _CHECKPOINT_FIELDS.items():
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise CheckpointError(
                    f"checkpoint field {key!r} must be {_type_names(types)}; "
                    f"got {type(value).__name__}"
                )
        vec = state["global_vector"]
        if vec.shape != self.global_vector.shape:
            raise CheckpointError(
                f"checkpoint holds {vec.numel()} parameters; "
                f"this model has {self.global_vector.numel()}"
            )
        if state["seed"] != self.seed:
            raise CheckpointError(
                f"checkpoint was made with seed {state['seed']}; this server has {self.seed}"
            )
        try:
            history = History(
                [
                    RoundResult(
                        **{
                            **d,
                            "selected": tuple(d["selected"]),
                            "survivors": tuple(d["survivors"]),
                        }
                    )
                    for d in state["history"]
                ]
            )
            self.strategy.load_state_dict(state["strategy"])
            self.aggregator.load_state_dict(state["aggregator"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, FlError) as exc:
            raise CheckpointError(
                f"the checkpoint's state is invalid: {type(exc).__name__}: {exc}"
            ) from exc
        self.round = int(state["round"])
        self.global_vector = vec.clone()
        load_vector(self.params, self.global_vector)
        self.history = history

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (temp file + rename)."""
        out = Path(path)
        tmp = out.with_name(out.name + ".tmp")
        try:
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, out)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {out}: {exc}") from exc
        return out

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a checkpoint written by :meth:`save_checkpoint`."""
        try:
            # weights_only: tensors and plain containers only; a pickle that would
            # build anything else (run code) is refused
            state = torch.load(Path(path), weights_only=True)
        except Exception as exc:  # unreadable, truncated, or not a weights-only file
            raise CheckpointError(
                f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}"
            ) from exc
        self.load_state_dict(state)

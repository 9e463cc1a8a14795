"""The federated server loop (top layer, ``fl``): rounds, evaluation, checkpoints.

Each round the server samples clients (strategy), has each train from the
current global model, aggregates the updates (aggregator: plain, secret
sharing or masking, with optional DP), applies the mean update (strategy) and
evaluates: on its own test set, and, with a :class:`~fl.evaluation.FederatedEvaluation`,
on sampled clients' own data (:meth:`Server.evaluate_clients`). The same
loop drives the in-process simulation; the networked runtime
(:mod:`fl.network`) reuses the strategy and aggregator code (without
federated evaluation).

What is federated: the trainable parameters and the floating-point buffers
(:func:`fl.client.federated_tensors`). The strategy's server update (server
learning rate, momentum) applies to the parameters only; the buffers, which
are statistics rather than weights (BatchNorm ``running_mean`` and
``running_var``), become the aggregated mean of the clients' local values:
sample-weighted without DP; with DP they are part of the clipped, noised
update like every weight (they are computed from the clients' data, so DP must
cover them), and ``running_var`` is clamped at 0 after the noise
(post-processing, no privacy cost). ``num_batches_tracked`` is a counter, not
a statistic: the server advances it by the survivors' mean number of local
batches, ``epochs * ceil(n_i / batch_size)``, weighted like the updates and
rounded; the example counts ``n_i`` are public metadata (as in FedAvg) and not
covered by DP. It only matters to BatchNorm layers built with
``momentum=None`` (cumulative averages); in simulation each client starts from
the global counter, a networked client keeps its own.

Determinism: every random choice of round ``r`` (sampling, shuffling,
simulated dropouts) comes from a generator seeded by ``(seed, r)``, and a
checkpoint stores the global model, the round number, the strategy state,
the aggregator state (privacy accountant, DP noise generator) and the
history, so a resumed run continues exactly as if it had not stopped.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl.aggregators import Aggregator, PlainAggregator, Stage
from fl.client import (
    Client,
    LossFn,
    batch_counters,
    evaluate_model,
    federated_tensors,
    flatten,
    load_vector,
)
from fl.errors import AggregationError, CheckpointError, ConfigError, FlError
from fl.evaluation import FederatedEvaluation, FederatedMetrics, aggregate_metrics
from fl.strategy import FedAvg, PersonalizedStrategy, Strategy
from fl.types import AggregateResult, ClientUpdate, History, RoundResult

__all__ = ["DropoutModel", "FailurePolicy", "Server", "round_generator", "show_progress"]

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
_EVAL_SALT = -1  # round_generator salt of the evaluation sample (client salts are >= 1)


def round_generator(seed: int, round_index: int, salt: int = 0) -> torch.Generator:
    """The generator of round ``round_index`` (``salt`` separates uses, e.g. a client id)."""
    g = torch.Generator()
    g.manual_seed(((seed * _MIX + round_index) * _MIX + salt) % (1 << 62))
    return g


DEMO_EXTRA = "pip install 'smpc-fl[demo]'"


def _tqdm_installed() -> bool:
    try:
        return importlib.util.find_spec("tqdm") is not None
    except (ImportError, ValueError):  # a broken or half-imported package
        return False


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: as asked, or (``None``) only on a terminal.

    ``None`` also needs ``tqdm`` installed (it comes with the ``demo`` extra);
    ``True`` without it is an error when the bar is made.
    """
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    tty = stream is not None and hasattr(stream, "isatty") and bool(stream.isatty())
    return tty and _tqdm_installed()


class _NoBar:
    """What ``run`` calls on a progress bar, doing nothing (no tqdm needed)."""

    def update(self, n: int = 1) -> None:
        """Nothing."""

    def set_postfix(self, **kwargs: str) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


def _progress_bar(show: bool, total: int, initial: int) -> Any:
    """A tqdm bar on stderr, or a :class:`_NoBar` (tqdm is imported only to show one)."""
    if not show:
        return _NoBar()
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed
    except ImportError as e:
        raise ImportError(
            f"`progress=True` draws a tqdm bar; `tqdm` is not installed. It comes with "
            f"the demo extra: {DEMO_EXTRA} (or pass progress=False)"
        ) from e
    return tqdm(total=total, initial=initial, unit="round", desc="fl")


def _running_var_slices(model: nn.Module, offset: int) -> list[slice]:
    """Where the ``running_var`` buffers lie in the federated vector.

    ``offset`` is where the buffers start (the number of parameter values).
    """
    _, stats = federated_tensors(model)
    names = {id(b): n for n, b in model.named_buffers()}
    out = []
    for b in stats:
        if names[id(b)].rsplit(".", 1)[-1] == "running_var":
            out.append(slice(offset, offset + b.numel()))
        offset += b.numel()
    return out


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


def _tensor_field(value: object, field: str) -> torch.Tensor:
    """A checkpoint entry that must be a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"checkpoint field {field!r} must map ids to tensors; got {type(value).__name__}"
        )
    return value


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
        on_failure: Raise (default) or record a failed round (a failed
            federated evaluation is recorded in ``RoundResult.eval_error``).
        dropout: Simulated dropouts (of training; evaluating clients all answer).
        federated_evaluation: Have sampled clients evaluate the new model on
            their own data after the rounds it names (see :mod:`fl.evaluation`).

    Personalised strategies (:class:`fl.FedAMP`, any
    :class:`~fl.strategy.PersonalizedStrategy`): the server keeps each client's
    own model (:attr:`personal_models`, held on the clients' behalf in the
    simulation) and its anchor (:attr:`cloud_models`); both start as ``model``'s
    weights, which stay unchanged. Each round's record holds the personalised
    test loss and accuracy (every client with ``test_data``, its own model on
    its own split, pooled over examples); :meth:`evaluate_personalized` gives
    them per client.
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
        federated_evaluation: FederatedEvaluation | None = None,
    ) -> None:
        if federated_evaluation is not None and not isinstance(
            federated_evaluation, FederatedEvaluation
        ):
            raise ConfigError(
                "`federated_evaluation` must be a FederatedEvaluation or None; "
                f"got {type(federated_evaluation).__name__}"
            )
        if not clients and type(self) is Server:
            raise ConfigError("a federation needs at least one client")
        ids = [c.client_id for c in clients]
        if len(set(ids)) != len(ids):
            raise ConfigError("client ids must be unique")
        if isinstance(strategy, PersonalizedStrategy) and not (
            aggregator is None or (type(aggregator) is PlainAggregator and aggregator.dp is None)
        ):
            raise ConfigError(
                f"{type(strategy).__name__} combines the client models itself; `aggregator` must "
                f"be None (got {type(aggregator).__name__}); for secret sharing use "
                "FedAMP(secure=True)"
            )
        self.model = model
        self.clients = {c.client_id: c for c in clients}
        self.strategy: Strategy = strategy if strategy is not None else FedAvg()
        self.aggregator: Aggregator = aggregator if aggregator is not None else PlainAggregator()
        self.test_data = test_data
        self.loss_fn = loss_fn
        self.seed = seed
        self.on_failure = FailurePolicy(on_failure)
        self.dropout = dropout
        self.federated_evaluation = federated_evaluation
        self.worker = copy.deepcopy(model)
        params, stats = federated_tensors(model)
        # the tensors of the federated vector, in order
        self.params: list[torch.Tensor] = [*params, *stats]
        self.num_parameters = sum(p.numel() for p in params)
        self._var_slices = _running_var_slices(model, self.num_parameters)
        self.global_vector = flatten(self.params).clone()
        self.round = 0
        self.history = History()
        self._prepared_for: int | None = None
        self.personal_models: dict[int, torch.Tensor] = {}
        self.cloud_models: dict[int, torch.Tensor] = {}

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

    def evaluate_personalized(self) -> tuple[float, float, dict[int, tuple[float, float]]]:
        """Each client's own model on its own test split.

        Returns:
            ``(loss, accuracy, {client id: (loss, accuracy)})``, the first two
            pooled over all test examples (NaN when no client has ``test_data``).
        """
        per: dict[int, tuple[float, float]] = {}
        tensors = self._worker_tensors()
        total_loss, total_correct, total_n = 0.0, 0.0, 0
        for cid in sorted(self.clients):
            client = self.clients[cid]
            if client.test_data is None:
                continue
            load_vector(tensors, self.personal_models.get(cid, self.global_vector))
            loss, acc = client.evaluate_test(self.worker)
            per[cid] = (loss, acc)
            n = client.num_test_examples
            total_loss += loss * n
            total_correct += acc * n
            total_n += n
        if not total_n:
            return math.nan, math.nan, per
        return total_loss / total_n, total_correct / total_n, per

    def _personalized_round(
        self,
        strategy: PersonalizedStrategy,
        r: int,
        selected: Sequence[int],
        dropouts: Mapping[Stage, Sequence[int]],
        start: float,
    ) -> RoundResult:
        dropped = {cid for ids in dropouts.values() for cid in ids}
        config = strategy.fit_config(r)
        models: dict[int, torch.Tensor] = {}
        updates: list[ClientUpdate] = []
        for cid in selected:
            if cid in dropped:
                continue
            own = self.personal_models.get(cid, self.global_vector)
            anchor = self.cloud_models.get(cid, own)
            g = round_generator(self.seed, r, cid + 1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=g)))
                upd = self.clients[cid].fit(self.worker, own, config, generator=g, anchor=anchor)
            updates.append(upd)
            models[cid] = (own + upd.delta).detach()
        if not models:
            raise AggregationError(f"round {r}: every selected client dropped out")
        cloud = strategy.personalize(models)
        self.personal_models.update(models)
        self.cloud_models.update({cid: u.detach().clone() for cid, u in cloud.items()})
        n = sum(u.num_examples for u in updates)
        train_loss = sum(u.train_loss * u.num_examples for u in updates) / n
        test_loss, test_acc, _ = self.evaluate_personalized()
        federated = self._federated_fields(r)
        eval_exception = federated.pop("_exception", None)
        result = RoundResult(
            round=r,
            selected=tuple(selected),
            survivors=tuple(sorted(models)),
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=time.perf_counter() - start,
            upload_bytes=float(strategy.upload_bytes(self.global_vector.numel())),
            epsilon=self.aggregator.epsilon,
            **federated,
        )
        self.round = r
        self.history.append(result)
        if eval_exception is not None and self.on_failure is FailurePolicy.RAISE:
            raise eval_exception
        return result

    def _worker_tensors(self) -> list[torch.Tensor]:
        """The worker module's federated tensors (parameters, then floating buffers)."""
        params, stats = federated_tensors(self.worker)
        return [*params, *stats]

    def client_vector(self, client_id: int) -> torch.Tensor:
        """The flat model client ``client_id`` evaluates.

        The global model, or with a personalised strategy (:class:`fl.FedAMP`)
        the client's own model.
        """
        if isinstance(self.strategy, PersonalizedStrategy):
            return self.personal_models.get(client_id, self.global_vector)
        return self.global_vector

    def evaluate_clients(self, round_index: int) -> FederatedMetrics:
        """Federated evaluation: sampled clients evaluate on their own data.

        The sample comes from the round's generator (independent of the
        training sample). With ``secure=True`` the counts are summed through
        :attr:`aggregator` (without its DP) and the server learns only the totals.

        Raises:
            ConfigError: No :class:`~fl.evaluation.FederatedEvaluation` configured.
            AggregationError: The secure sum could not complete.
        """
        fe = self.federated_evaluation
        if fe is None:
            raise ConfigError("this server has no `federated_evaluation` configured")
        ids = fe.sample(
            self.available_clients(), round_generator(self.seed, round_index, _EVAL_SALT)
        )
        tensors = self._worker_tensors()
        metrics = []
        for cid in ids:
            load_vector(tensors, self.client_vector(cid))
            metrics.append(self.clients[cid].evaluate_metrics(self.worker))
        return aggregate_metrics(
            metrics,
            aggregator=self.aggregator if fe.secure else None,
            value_bound=fe.value_bound,
            round_index=round_index,
        )

    def _federated_fields(self, round_index: int) -> dict[str, Any]:
        """The RoundResult fields of this round's federated evaluation (none if not due)."""
        fe = self.federated_evaluation
        if fe is None or not fe.due(round_index):
            return {}
        try:
            fm = self.evaluate_clients(round_index)
        except AggregationError as exc:
            # the round itself completed: it is recorded before a RAISE policy re-raises
            return {"eval_error": f"{type(exc).__name__}: {exc}", "_exception": exc}
        return {
            "eval_loss": fm.loss,
            "eval_accuracy": fm.accuracy,
            "eval_clients": fm.clients,
            "eval_examples": fm.num_examples,
            "client_metrics": fm.per_client,
        }

    def train_clients(self, selected: Sequence[int], round_index: int) -> list[ClientUpdate]:
        """Local training of the selected clients, each from the current global model."""
        config = self.strategy.fit_config(round_index)
        updates = []
        for cid in selected:
            with torch.no_grad():  # each client starts from the global batch counters
                for mine, theirs in zip(
                    batch_counters(self.worker), batch_counters(self.model), strict=True
                ):
                    mine.copy_(theirs)
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
            if isinstance(self.strategy, PersonalizedStrategy):
                return self._personalized_round(self.strategy, r, selected, dropouts, start)
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
        survivors = set(agg.survivors)
        kept = [u for u in updates if u.client_id in survivors]
        self.global_vector = self._next_vector(agg.mean)
        load_vector(self.params, self.global_vector)
        self._advance_counters(r, kept)
        n = sum(u.num_examples for u in kept)
        train_loss = sum(u.train_loss * u.num_examples for u in kept) / n if n else math.nan
        test_loss, test_acc = self.evaluate()
        federated = self._federated_fields(r)
        eval_exception = federated.pop("_exception", None)
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
            **federated,
        )
        self.round = r
        self.history.append(result)
        if eval_exception is not None and self.on_failure is FailurePolicy.RAISE:
            raise eval_exception
        return result

    def _next_vector(self, mean: torch.Tensor) -> torch.Tensor:
        """Strategy step on the parameters; the buffers become the aggregated mean."""
        k = self.num_parameters
        weights = self.strategy.apply(self.global_vector[:k], mean[:k])
        out = torch.cat([weights, self.global_vector[k:] + mean[k:]]).detach()
        for sl in self._var_slices:  # DP noise may push a variance below 0
            out[sl].clamp_(min=0.0)
        return out

    def _advance_counters(self, round_index: int, kept: Sequence[ClientUpdate]) -> None:
        """Advance ``num_batches_tracked`` by the survivors' weighted mean local batches."""
        counters = batch_counters(self.model)
        if not counters or not kept:
            return
        cfg = self.strategy.fit_config(round_index)
        weights = self.aggregator.weights({u.client_id: u.num_examples for u in kept})
        steps = sum(
            weights[u.client_id] * cfg.epochs * math.ceil(u.num_examples / cfg.batch_size)
            for u in kept
        ) / sum(weights.values())
        with torch.no_grad():
            for c in counters:
                c.add_(round(steps))

    def run(
        self,
        num_rounds: int,
        *,
        progress: bool | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 1,
    ) -> History:
        """Run until ``num_rounds`` rounds are done in total.

        With ``checkpoint``, an existing checkpoint at that path is loaded first
        (so re-running an interrupted command resumes it), and a new one is
        written every ``checkpoint_every`` rounds and at the end.

        Args:
            num_rounds: Total rounds (resumed ones included).
            progress: Show a tqdm bar on stderr: ``None`` (default) shows it
                only when stderr is a terminal and tqdm is installed (the ``demo``
                extra), so logs and pipes stay clean.
            checkpoint: Checkpoint file (optional).
            checkpoint_every: Rounds between checkpoints.

        Returns:
            The history of all rounds (including resumed ones).
        """
        if num_rounds < 0:
            raise ConfigError(f"`num_rounds` must be >= 0; got {num_rounds}")
        if checkpoint_every < 1:
            raise ConfigError(f"`checkpoint_every` must be >= 1; got {checkpoint_every}")
        if checkpoint is not None and Path(checkpoint).exists():
            self.load_checkpoint(checkpoint)
        self._prepare(num_rounds)
        bar = _progress_bar(show_progress(progress), num_rounds, self.round)
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
            "counters": [int(c) for c in batch_counters(self.model)],
            "strategy": self.strategy.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "history": self.history.to_dicts(),
            "rng": torch.random.get_rng_state(),
            "personal_models": {k: v.clone() for k, v in self.personal_models.items()},
            "cloud_models": {k: v.clone() for k, v in self.cloud_models.items()},
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
            history = History([RoundResult.from_dict(d) for d in state["history"]])
            personal = {
                int(k): _tensor_field(v, "personal_models")
                for k, v in state.get("personal_models", {}).items()
            }
            cloud = {
                int(k): _tensor_field(v, "cloud_models")
                for k, v in state.get("cloud_models", {}).items()
            }
            counters = [int(v) for v in state.get("counters", [])]
            self.strategy.load_state_dict(state["strategy"])
            self.aggregator.load_state_dict(state["aggregator"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, FlError) as exc:
            raise CheckpointError(
                f"the checkpoint's state is invalid: {type(exc).__name__}: {exc}"
            ) from exc
        self.round = int(state["round"])
        self.global_vector = vec.clone()
        load_vector(self.params, self.global_vector)
        with torch.no_grad():
            for c, value in zip(batch_counters(self.model), counters, strict=False):
                c.fill_(value)
        self.personal_models = {k: v.clone() for k, v in personal.items()}
        self.cloud_models = {k: v.clone() for k, v in cloud.items()}
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

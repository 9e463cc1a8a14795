"""The server side of :mod:`fl.flower`: the :class:`SecureAggregation` workflow.

Drives each round's stages over a Flower ``Grid`` (push the requests, pull
the replies until the stage's timeout; a node whose reply is an error, fails
to decode or is late is that stage's dropout) with
:class:`~fl.secure_aggregation.MaskingServer`, the secret-sharing parties'
relay or the plain aggregator, applies the mean update with the strategy and
records the :class:`~fl.History`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fl import shamir
from fl.aggregators import Aggregator, PlainAggregator, SecretSharingAggregator, Stage
from fl.errors import (
    AggregationError,
    ConfigError,
    InsufficientClientsError,
    ProtocolError,
    QuantizationRangeError,
)
from fl.flower.records import (
    _KEY_BYTES,
    _SEED_BYTES,
    _TAG,
    _TRAIN,
    _TRAINED,
    FAST_INPUT,
    FAST_KEYS,
    FAST_TRAIN,
    FAST_UNMASK,
    RECORD,
    SS_INPUT,
    SS_SUM,
    SS_TRAIN,
    _array,
    _blobs,
    _config,
    _decode_reply,
    _encode,
    _get,
    _ints,
    _pairs,
    flatten_arrays,
    unflatten_arrays,
)
from fl.secure_aggregation import MaskingAggregator, MaskingServer, _Masker, _self_key
from fl.server import FailurePolicy
from fl.strategy import FedAvg, Strategy
from fl.types import AggregateResult, History, RoundResult


class SecureAggregation:
    """Server-side Flower workflow: ``fl`` strategy + ``fl`` aggregator over a ``Grid``.

    Call it from a ``ServerApp``'s ``main`` with the grid and the initial
    arrays; it runs ``num_rounds`` rounds and returns the final arrays and an
    :class:`~fl.History` (node ids in ``selected``/``survivors``). The
    ``ClientApp`` must use :func:`secure_aggregation_mod`.

    Args:
        aggregator: :class:`~fl.MaskingAggregator` (any ``bits``,
            ``threshold``, ``neighbours``, ``dp``),
            :class:`~fl.SecretSharingAggregator` (``parties`` of the round's
            nodes act as aggregation parties; ``frac_bits``, central ``dp``) or
            :class:`~fl.PlainAggregator`.
        strategy: Any :class:`~fl.Strategy` (default :class:`~fl.FedAvg`):
            samples the nodes, gives the fit configuration (sent as the
            ``"config"`` record: ``lr``, ``epochs``, ``batch_size``,
            ``proximal_mu``, ``server-round``) and applies the mean update.
        num_rounds: Rounds to run.
        timeout: Seconds to wait for the replies of one stage; later replies
            are dropouts. ``None`` waits for every reply (only for trusted,
            reliable nodes).
        train_timeout: Seconds for stage 0, which includes local training
            (default: ``timeout``).
        min_nodes: Wait (up to ``timeout``) until this many nodes are connected
            before each round.
        on_failure: ``"raise"`` (default) re-raises
            :class:`~fl.InsufficientClientsError`; ``"record"`` keeps the model
            and appends a failed :class:`~fl.RoundResult`.
        evaluate_fn: Optional ``f(round, arrays) -> (loss, accuracy)`` run on
            the server after each round.
        seed: Seed of node sampling (public randomness, not a secret).
        poll_interval: First wait (seconds) between pulls of the replies with
            ``grid.push_messages``/``pull_messages``, backing off to 0.02 s
            during a stage's first 10 s and to 0.1 s after; Flower's
            ``send_and_receive`` waits 0.1 s between pulls, which every stage
            would pay. ``None`` uses ``grid.send_and_receive``.
        reuse_keys: With a :class:`~fl.MaskingAggregator`: after a first
            standard round in which the nodes also advertise long-term key
            pairs, run each round in two exchanges (training + masked input,
            then unmask) on those keys while the selected nodes keep them
            (see "Masking in two exchanges" in the :mod:`fl.flower` docstring). Weights
            come from the sample counts the nodes reported in their previous
            round. Default ``False``: the four-stage protocol every round.

    Raises:
        ConfigError: Bad arguments (named).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        strategy: Strategy | None = None,
        *,
        num_rounds: int = 1,
        timeout: float | None = 60.0,
        train_timeout: float | None = None,
        min_nodes: int = 1,
        on_failure: str | FailurePolicy = FailurePolicy.RAISE,
        evaluate_fn: Callable[[int, ArrayRecord], tuple[float, float]] | None = None,
        seed: int = 0,
        poll_interval: float | None = 0.005,
        reuse_keys: bool = False,
    ) -> None:
        if not isinstance(
            aggregator, MaskingAggregator | PlainAggregator | SecretSharingAggregator
        ):
            raise ConfigError(
                "`aggregator` must be a MaskingAggregator, SecretSharingAggregator or "
                f"PlainAggregator; got {type(aggregator).__name__}"
            )
        if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
            raise ConfigError(f"`num_rounds` must be a positive int; got {num_rounds!r}")
        for name, t in (("timeout", timeout), ("train_timeout", train_timeout)):
            if t is not None and not (t > 0 and math.isfinite(t)):
                raise ConfigError(f"`{name}` must be a positive number or None; got {t!r}")
        if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 1:
            raise ConfigError(f"`min_nodes` must be a positive int; got {min_nodes!r}")
        self.aggregator = aggregator
        self.strategy: Strategy = strategy if strategy is not None else FedAvg()
        self.num_rounds = num_rounds
        self.timeout = timeout
        self.train_timeout = train_timeout if train_timeout is not None else timeout
        self.min_nodes = min_nodes
        self.on_failure = FailurePolicy(on_failure)
        self.evaluate_fn = evaluate_fn
        self.seed = seed
        if poll_interval is not None and not (poll_interval > 0 and math.isfinite(poll_interval)):
            raise ConfigError(
                f"`poll_interval` must be a positive number or None; got {poll_interval!r}"
            )
        self.poll_interval = poll_interval
        if not isinstance(reuse_keys, bool):
            raise ConfigError(f"`reuse_keys` must be a bool; got {reuse_keys!r}")
        if reuse_keys and not isinstance(aggregator, MaskingAggregator):
            raise ConfigError(
                f"`reuse_keys` needs a MaskingAggregator; got {type(aggregator).__name__}"
            )
        self.reuse_keys = reuse_keys
        self._long_term: dict[int, tuple[bytes, bytes]] = {}
        self._counts: dict[int, int] = {}
        self.history = History()
        self.stage_seconds: list[dict[str, float]] = []
        """Diagnostics: wall seconds of each stage's exchange, one dict per round."""
        self.parties: list[tuple[int, ...]] = []
        """Secret sharing: the node ids of each round's aggregation parties (public)."""

    def __repr__(self) -> str:
        return (
            f"SecureAggregation({type(self.aggregator).__name__}, "
            f"{type(self.strategy).__name__}, num_rounds={self.num_rounds})"
        )

    # ------------------------------------------------------------ helpers
    def _nodes(self, grid: Any) -> list[int]:
        deadline = time.monotonic() + (self.timeout or 60.0)
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= self.min_nodes or time.monotonic() > deadline:
                return nodes
            time.sleep(0.2)

    def _exchange(
        self,
        grid: Any,
        round_index: int,
        stage: Stage | str,
        contents: Mapping[int, RecordDict],
        node_of: Mapping[int, int],
        timeout: float | None,
        wire: dict[int, int],
        need: int | None = None,
    ) -> tuple[dict[int, Any], dict[int, RecordDict]]:
        """One request/reply exchange; the decoded replies by client index.

        With ``need``, returns as soon as ``need`` replies decoded (the other
        nodes' later replies are never read); otherwise waits for every node
        or the timeout.
        """
        start = time.perf_counter()
        messages = []
        ttl = None if timeout is None else max(timeout * 2, 60.0)
        for cid, content in contents.items():
            messages.append(
                Message(content, node_of[cid], _TRAIN, ttl=ttl, group_id=str(round_index))
            )
        cid_of = {n: c for c, n in node_of.items()}
        replies: dict[int, Any] = {}
        raw: dict[int, RecordDict] = {}
        for batch in self._send_and_receive(grid, messages, timeout):
            for reply in batch:
                node = int(reply.metadata.src_node_id)
                if node not in cid_of or cid_of[node] not in contents or reply.has_error():
                    continue  # an error reply is a dropout of this stage
                cid = cid_of[node]
                try:
                    replies[cid] = (
                        _decode_reply(reply.content, cid, stage)
                        if isinstance(stage, Stage) and stage is not Stage.ADVERTISE_KEYS
                        else reply.content
                    )
                except (ProtocolError, ValueError, KeyError, TypeError):
                    continue  # a malformed reply is a dropout too (never trusted)
                raw[cid] = reply.content
                wire[cid] = wire.get(cid, 0) + _content_bytes(reply.content)
            if need is not None and len(replies) >= need:
                break
        times = self.stage_seconds[-1] if self.stage_seconds else {}
        times[str(stage)] = time.perf_counter() - start
        return replies, raw

    def _send_and_receive(
        self, grid: Any, messages: list[Message], timeout: float | None
    ) -> Iterator[list[Message]]:
        """Reply batches: ``grid.send_and_receive``, or push/pull polled every ``poll_interval``."""
        if self.poll_interval is None:
            yield list(grid.send_and_receive(messages, timeout=timeout))
            return
        pending = set(grid.push_messages(messages))
        begin = time.monotonic()
        deadline = None if timeout is None else begin + timeout
        wait = self.poll_interval
        while pending:
            got = list(grid.pull_messages(pending))
            pending -= {m.metadata.reply_to_message_id for m in got}
            if got:
                yield got
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return
            time.sleep(wait)
            # a reply is seen within 20 ms for the first 10 s (a stage's usual span); then
            # back off to Flower's own 0.1 s while waiting long (e.g. for slow training)
            cap = 0.02 if time.monotonic() - begin < 10.0 else 0.1
            wait = min(wait * 1.5, max(cap, self.poll_interval))

    def _fit_config(self, round_index: int) -> ConfigRecord:
        fc = self.strategy.fit_config(round_index)
        return ConfigRecord(
            {
                "lr": float(fc.lr),
                "epochs": int(fc.epochs),
                "batch_size": int(fc.batch_size),
                "proximal_mu": float(fc.proximal_mu),
                "server-round": int(round_index),
            }
        )

    # ---------------------------------------------------------- one round
    def _round(
        self, grid: Any, arrays: ArrayRecord, round_index: int
    ) -> tuple[torch.Tensor, RoundResult]:
        start = time.perf_counter()
        agg = self.aggregator
        nodes = self._nodes(grid)
        gen = torch.Generator()
        gen.manual_seed((self.seed * 1_000_003 + round_index) % (1 << 62))
        picked = self.strategy.sample(round_index, list(range(len(nodes))), gen)
        node_of = {cid: nodes[i] for cid, i in enumerate(sorted(picked))}
        selected = tuple(node_of.values())
        global_vector = flatten_arrays(arrays)
        dim = int(global_vector.numel())
        wire: dict[int, int] = {}
        self.stage_seconds.append({})
        config = self._fit_config(round_index)
        if self.reuse_keys:
            result, counts, losses = self._fast_round(
                grid,
                arrays,
                config,
                round_index,
                node_of,
                dim,
                wire,
                keys_first=not self._can_reuse_keys(node_of),
            )
        else:
            result, counts, losses = self._standard_round(
                grid, arrays, config, round_index, node_of, dim, wire, gen
            )

        agg.record_round()
        new_vector = self.strategy.apply(global_vector, result.mean).detach()
        surv = result.survivors
        n_tot = sum(counts[c] for c in surv if c in losses)
        train_loss = (
            sum(losses[c] * counts[c] for c in surv if c in losses) / n_tot if n_tot else math.nan
        )
        test_loss = test_acc = math.nan
        if self.evaluate_fn is not None:
            test_loss, test_acc = self.evaluate_fn(
                round_index, unflatten_arrays(new_vector, arrays)
            )
        up = [wire.get(c, 0) for c in surv]
        record = RoundResult(
            round=round_index,
            selected=selected,
            survivors=tuple(node_of[c] for c in surv),
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=time.perf_counter() - start,
            upload_bytes=sum(up) / len(up) if up else 0.0,
            epsilon=agg.epsilon,
        )
        return new_vector, record

    def _can_reuse_keys(self, node_of: Mapping[int, int]) -> bool:
        """A fast round needs every selected node's long-term keys and sample count."""
        return self.reuse_keys and all(
            n in self._long_term and n in self._counts for n in node_of.values()
        )

    def _fast_round(
        self,
        grid: Any,
        arrays: ArrayRecord,
        config: ConfigRecord,
        round_index: int,
        node_of: Mapping[int, int],
        dim: int,
        wire: dict[int, int],
        *,
        keys_first: bool = False,
    ) -> tuple[AggregateResult, dict[int, int], dict[int, float]]:
        """The masking round on long-term keys (``reuse_keys=True``).

        Two exchanges (``fast_train``, ``fast_unmask``) while every selected
        node's keys and sample count are known; otherwise (``keys_first``)
        three: ``fast_keys`` (training, the long-term public keys and the
        count), ``fast_input`` (the masked update) and ``fast_unmask``.
        """
        agg = self.aggregator
        assert isinstance(agg, MaskingAggregator)
        losses: dict[int, float] = {}
        stage = FAST_TRAIN
        if keys_first:  # (re)learn keys and counts: train + keys, then the masked input
            stage = FAST_INPUT
            first = {
                c: RecordDict(
                    {
                        RECORD: ConfigRecord({"stage": FAST_KEYS, "client_id": c}),
                        "arrays": arrays,
                        "config": config,
                    }
                )
                for c in node_of
            }
            got, _ = self._exchange(
                grid, round_index, FAST_KEYS, first, node_of, self.train_timeout, wire
            )
            for c, content in got.items():
                rec = content.config_records.get(RECORD)
                if rec is None or rec.get("stage") != FAST_KEYS:
                    continue
                n = rec.get("num_examples")
                lt = (rec.get("lt_c_pk"), rec.get("lt_s_pk"))
                if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                    continue
                if not all(isinstance(k, bytes) and len(k) == _KEY_BYTES for k in lt):
                    continue
                self._long_term[node_of[c]] = (bytes(lt[0]), bytes(lt[1]))
                self._counts[node_of[c]] = n
                losses.update(_losses(c, content))
            node_of = {c: n for c, n in node_of.items() if c in got and n in self._long_term}
            if not node_of:
                raise InsufficientClientsError(Stage.ADVERTISE_KEYS.value, 0, 1)
        counts = {c: self._counts[n] for c, n in node_of.items()}
        weights = agg.weights(counts)  # this round's counts, or those of the nodes' last round
        session = MaskingServer(agg, weights, dim)  # fresh round id, graph, threshold, quantizer
        t, rid = session.threshold, session.round_id
        contents: dict[int, RecordDict] = {}
        for c, setup in session.first().items():
            content = _encode(setup, c)
            holders = sorted((*setup.neighbours, c))
            rec = content.config_records[RECORD]
            rec["stage"] = stage
            rec["weight"] = float(weights[c])
            rec["dp_clip"] = float(agg.dp.clip_norm if agg.dp is not None else 0.0)
            rec["ids"] = holders
            rec["c_pks"] = [self._long_term[node_of[v]][0] for v in holders]
            rec["s_pks"] = [self._long_term[node_of[v]][1] for v in holders]
            if stage == FAST_TRAIN:
                content["arrays"] = arrays
                content["config"] = config
            contents[c] = content
        replies, _ = self._exchange(
            grid,
            round_index,
            stage,
            contents,
            node_of,
            self.train_timeout if stage == FAST_TRAIN else self.timeout,
            wire,
        )
        ys: dict[int, np.ndarray] = {}
        inbox: dict[int, dict[int, bytes]] = {c: {} for c in node_of}
        for c, content in replies.items():
            rec = content.config_records.get(RECORD)
            try:
                if rec is None or _get(rec, "stage", str) != stage:
                    raise ProtocolError("reply for another stage")
                n = _get(rec, "num_examples", int)
                if n <= 0:
                    raise ProtocolError("`num_examples` must be positive")
                y = session.quantizer.unpack(_array(content), dim)
                cts = _pairs(_ints(rec, "ids"), _blobs(rec, "cts"), "cts")
                if not set(cts) <= set(session.graph[c]):
                    raise ProtocolError("shares addressed to non-neighbours")
            except (ProtocolError, QuantizationRangeError, ValueError, TypeError):
                continue  # a malformed reply is a dropout, never trusted
            ys[c] = y
            self._counts[node_of[c]] = int(n)
            for v, ct in cts.items():
                inbox[v][c] = ct
            losses.update(_losses(c, content))
        for c, n in node_of.items():
            if c not in ys and stage == FAST_TRAIN:  # it may have lost its keys: it advertises
                self._long_term.pop(n, None)  # them again in a `fast_keys` exchange
        u2 = tuple(sorted(ys))
        if len(u2) < t:
            raise InsufficientClientsError(Stage.INPUT.value, len(u2), t)
        dropped = tuple(c for c in node_of if c not in ys)
        unmask = {
            c: RecordDict(
                {
                    RECORD: _config(
                        {
                            "stage": FAST_UNMASK,
                            "survivors": list(u2),
                            "dropped": list(dropped),
                            "ids": [u for u in sorted(inbox[c]) if u in ys],
                            "cts": [inbox[c][u] for u in sorted(inbox[c]) if u in ys],
                        }
                    )
                }
            )
            for c in u2
        }
        # nothing dropped: any t nodes' shares rebuild every self mask, so stop at t replies
        shares, _ = self._exchange(
            grid,
            round_index,
            FAST_UNMASK,
            unmask,
            node_of,
            self.timeout,
            wire,
            need=None if dropped else t,
        )
        b_pts: dict[int, dict[int, int]] = {u: {} for u in u2}
        pair: dict[tuple[int, int], bytes] = {}
        answered = 0
        for v, content in shares.items():
            rec = content.config_records.get(RECORD)
            try:
                if rec is None or _get(rec, "stage", str) != FAST_UNMASK:
                    raise ProtocolError("reply for another stage")
                b = _pairs(_ints(rec, "b_ids"), _blobs(rec, "b"), "b")
                pk = _pairs(_ints(rec, "p_ids"), _blobs(rec, "p"), "p")
            except (ProtocolError, ValueError, TypeError):
                continue
            answered += 1
            for u, share in b.items():
                if u in b_pts:
                    b_pts[u][session.participants.index(v) + 1] = int.from_bytes(share, "big")
            for w, key in pk.items():
                if w in dropped and w in session.graph[v] and len(key) == 16:
                    pair[(v, w)] = key
        if answered < t:
            raise InsufficientClientsError(Stage.UNMASK.value, answered, t)
        total = np.zeros(dim, dtype=np.uint32)
        for y in ys.values():
            total += y
        lagrange: dict[tuple[int, ...], Any] = {}
        minus: list[bytes] = []
        plus: list[bytes] = []
        for u in u2:
            if len(b_pts[u]) < t:
                raise InsufficientClientsError(Stage.UNMASK.value, len(b_pts[u]), t)
            seed = shamir.reconstruct(b_pts[u], t, lagrange).to_bytes(32, "big")
            minus.append(_self_key(seed, rid))
        for w in dropped:
            for u in session.graph[w]:
                if u not in ys:
                    continue
                if (u, w) not in pair:
                    raise AggregationError(
                        f"secure aggregation failed at stage `unmask`: node {node_of[u]} sent "
                        f"its input but not the key of its mask with dropped node {node_of[w]}; "
                        "with reused keys only it holds that key, so the round cannot complete"
                    )
                (minus if u < w else plus).append(pair[(u, w)])  # u added +mask when u < w
        _Masker().apply(total, plus, minus)
        summed = session.quantizer.dequantize(total)
        noised = agg.dp is not None and agg.dp.distributed
        mean, std = agg.finalize(summed, u2, weights, noised=noised)
        if noised:
            std = session._client_noise_std() * math.sqrt(len(u2))
        result = AggregateResult(
            mean=mean,
            survivors=u2,
            dropped=dropped,
            upload_bytes={c: wire.get(c, 0) for c in u2},
            noise_std=std,
        )
        return result, {c: self._counts[node_of[c]] for c in u2}, losses

    def _standard_round(
        self,
        grid: Any,
        arrays: ArrayRecord,
        config: ConfigRecord,
        round_index: int,
        node_of: Mapping[int, int],
        dim: int,
        wire: dict[int, int],
        gen: torch.Generator,
    ) -> tuple[AggregateResult, dict[int, int], dict[int, float]]:
        """Stage 0 (training) and the aggregator's own stages."""
        agg = self.aggregator
        dp_clip = agg.dp.clip_norm if agg.dp is not None else 0.0
        masking = isinstance(agg, MaskingAggregator)
        sharing = isinstance(agg, SecretSharingAggregator)
        session: Any
        round_id = os.urandom(16)  # secret sharing: binds keys and ciphertexts to the round
        if masking:
            assert isinstance(agg, MaskingAggregator)
            session = MaskingServer(agg, {c: 1.0 for c in node_of}, dim)
            first = {c: _encode(m, c) for c, m in session.first().items()}
        elif sharing:
            session = None
            first = {
                c: RecordDict(
                    {
                        RECORD: ConfigRecord(
                            {"stage": SS_TRAIN, "client_id": c, "round_id": round_id}
                        )
                    }
                )
                for c in node_of
            }
        else:
            session = None
            first = {
                c: RecordDict({RECORD: ConfigRecord({"stage": _TRAINED, "client_id": c})})
                for c in node_of
            }
        for content in first.values():
            content.config_records[RECORD]["dp_clip"] = float(dp_clip)
            content["arrays"] = arrays
            content["config"] = config
        stage0, raw = self._exchange(
            grid, round_index, Stage.ADVERTISE_KEYS, first, node_of, self.train_timeout, wire
        )
        counts: dict[int, int] = {}
        keys: dict[int, Any] = {}
        losses: dict[int, float] = {}
        for c, content in stage0.items():
            rec = content.config_records[RECORD]
            n = rec.get("num_examples")
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                continue
            try:
                if masking:
                    keys[c] = _decode_reply(content, c, Stage.ADVERTISE_KEYS)
                elif sharing:
                    keys[c] = _get(rec, "pk", bytes)
                    if len(keys[c]) != _KEY_BYTES:
                        raise ProtocolError("`pk` must be a 32-byte X25519 key")
            except ProtocolError:
                continue
            counts[c] = n
            for m in content.metric_records.values():
                loss = m.get("train_loss")
                if isinstance(loss, float | int):
                    losses[c] = float(loss)
        if not counts:
            raise InsufficientClientsError(
                Stage.ADVERTISE_KEYS.value, 0, session.threshold if masking else 1
            )
        weights = agg.weights(counts)
        if masking:
            session.weights = {c: weights.get(c, 0.0) for c in node_of}
            msgs = session.step(keys)
            stage = Stage.SHARE_KEYS
            while msgs is not None:
                contents = {c: _encode(m, c) for c, m in msgs.items()}
                if stage is Stage.INPUT:
                    for c, content in contents.items():
                        content.config_records[RECORD]["weight"] = float(weights[c])
                replies, _ = self._exchange(
                    grid, round_index, stage, contents, node_of, self.timeout, wire
                )
                msgs = session.step(replies)
                if stage is not Stage.UNMASK:
                    stage = list(Stage)[stage.order + 1]
            result = session.result()
        elif sharing:
            assert isinstance(agg, SecretSharingAggregator)
            result = self._secret_sharing(
                grid, round_index, round_id, node_of, keys, weights, dim, wire, gen
            )
        else:
            plain = agg.server_session(weights, dim, round_index=round_index)
            msgs = {c: m for c, m in plain.first().items() if c in counts}
            contents = {c: _encode(m, c) for c, m in msgs.items()}
            replies, _ = self._exchange(
                grid, round_index, Stage.INPUT, contents, node_of, self.timeout, wire
            )
            plain.step(replies)
            result = plain.result()
        return result, counts, losses

    def _secret_sharing(
        self,
        grid: Any,
        round_index: int,
        round_id: bytes,
        node_of: Mapping[int, int],
        keys: Mapping[int, bytes],
        weights: Mapping[int, float],
        dim: int,
        wire: dict[int, int],
        gen: torch.Generator,
    ) -> AggregateResult:
        """Stages ``ss_input`` and ``ss_sum`` of :class:`~fl.SecretSharingAggregator`."""
        from smpc import FixedPoint

        agg = self.aggregator
        assert isinstance(agg, SecretSharingAggregator)
        n_parties = agg.n_parties
        live = sorted(keys)
        if len(live) < n_parties:
            raise InsufficientClientsError("train", len(live), n_parties)
        # the parties: n_parties of the nodes that trained, picked with public randomness
        pick = torch.randperm(len(live), generator=gen)[:n_parties].tolist()
        parties = [live[i] for i in pick]
        self.parties.append(tuple(node_of[c] for c in parties))
        request = {
            "stage": SS_INPUT,
            "round_id": round_id,
            "frac_bits": int(agg.frac_bits),
            "parties": parties,
            "party_pks": [keys[c] for c in parties],
        }
        contents = {
            c: RecordDict({RECORD: _config(request | {"weight": float(weights[c])})}) for c in live
        }
        replies, _ = self._exchange(
            grid, round_index, SS_INPUT, contents, node_of, self.timeout, wire
        )
        shares: dict[int, tuple[bytes, list[bytes], Array]] = {}
        for c, content in replies.items():
            rec = content.config_records.get(RECORD)
            arrays = content.array_records.get(RECORD + ".arrays")
            try:
                if rec is None or arrays is None or "share" not in arrays:
                    raise ProtocolError("the reply carries no shares")
                if _get(rec, "stage", str) != SS_INPUT:
                    raise ProtocolError("reply for another stage")
                eph, cts = _get(rec, "eph", bytes), _blobs(rec, "cts")
                share = arrays["share"]
                if len(eph) != _KEY_BYTES or len(cts) != n_parties - 1:
                    raise ProtocolError("wrong key or number of seeds")
                if any(len(ct) != _SEED_BYTES + _TAG for ct in cts):
                    raise ProtocolError("a seed ciphertext has the wrong length")
                if share.dtype != "uint8" or tuple(share.shape) != (8 * dim + _TAG,):
                    raise ProtocolError(f"the share has shape {share.dtype}{share.shape}")
            except ProtocolError:
                continue  # malformed: a dropout of this stage, never relayed
            shares[c] = (eph, cts, share)
        survivors = sorted(shares)
        if not survivors:
            raise InsufficientClientsError("input", 0, 1)
        ephs = [shares[c][0] for c in survivors]
        last = n_parties - 1
        to_parties: dict[int, RecordDict] = {}
        for role, p in enumerate(parties):
            head = {
                "stage": SS_SUM,
                "round_id": round_id,
                "role": role,
                "last": last,
                "dim": dim,
                "ids": survivors,
                "eph": ephs,
            }
            if role < last:
                head["cts"] = [shares[c][1][role] for c in survivors]
            content = RecordDict({RECORD: _config(head)})
            if role == last:
                content[RECORD + ".arrays"] = ArrayRecord({str(c): shares[c][2] for c in survivors})
            to_parties[p] = content
        sums, _ = self._exchange(grid, round_index, SS_SUM, to_parties, node_of, self.timeout, wire)
        total = np.zeros(dim, dtype=np.uint64)
        got = 0
        for p in parties:
            content = sums.get(p)
            arrays = None if content is None else content.array_records.get(RECORD + ".arrays")
            if arrays is None or "y" not in arrays:
                continue
            y = arrays["y"].numpy()
            if y.dtype != np.uint64 or y.shape != (dim,):
                continue
            total += y
            got += 1
        if got < n_parties:
            raise InsufficientClientsError("sum", got, n_parties)
        ring = torch.from_numpy(total.view(np.int64))
        summed = FixedPoint(agg.frac_bits).decode(ring, torch.float64).to(torch.float32)
        mean, std = agg.finalize(summed, survivors, weights, noised=False)
        upload = {c: wire.get(c, 0) for c in survivors}
        return AggregateResult(
            mean=mean,
            survivors=tuple(survivors),
            dropped=tuple(sorted(set(node_of) - set(survivors))),
            upload_bytes=upload,
            noise_std=std,
        )

    def __call__(self, grid: Any, arrays: ArrayRecord) -> tuple[ArrayRecord, History]:
        """Run the rounds; return the final arrays and the history.

        Args:
            grid: The ``Grid`` given to the ``ServerApp``'s ``main``.
            arrays: The initial global model.

        Raises:
            InsufficientClientsError: A round lost too many nodes
                (with ``on_failure="raise"``), naming the stage.
        """
        if not isinstance(arrays, ArrayRecord):
            raise ConfigError(f"`arrays` must be a flwr ArrayRecord; got {type(arrays).__name__}")
        n_nodes = len(self._nodes(grid))
        self.aggregator.setup(
            num_rounds=self.num_rounds,
            sampling_rate=self.strategy.fraction_fit if n_nodes else 1.0,
        )
        for r in range(len(self.history) + 1, len(self.history) + self.num_rounds + 1):
            start = time.perf_counter()
            try:
                vector, record = self._round(grid, arrays, r)
            except AggregationError as exc:
                if self.on_failure is FailurePolicy.RAISE:
                    raise
                self.history.append(
                    RoundResult(
                        round=r,
                        selected=(),
                        survivors=(),
                        train_loss=math.nan,
                        test_loss=math.nan,
                        test_accuracy=math.nan,
                        seconds=time.perf_counter() - start,
                        failed=True,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )
                continue
            arrays = unflatten_arrays(vector, arrays)
            self.history.append(record)
        return arrays, self.history


def _losses(c: int, content: RecordDict) -> dict[int, float]:
    """``{c: train_loss}`` when a reply's metrics carry one."""
    for m in content.metric_records.values():
        loss = m.get("train_loss")
        if isinstance(loss, float | int) and not isinstance(loss, bool):
            return {c: float(loss)}
    return {}


def _value_bytes(v: Any) -> int:
    if isinstance(v, list):
        return sum(_value_bytes(x) for x in v)
    if isinstance(v, bytes | str):
        return len(v)
    return 8  # ints, floats and bools travel as 64-bit values


def _content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: arrays as serialized, records field by field."""
    total = 0
    for rec in content.values():
        if isinstance(rec, ArrayRecord):
            total += int(rec.count_bytes())
        else:
            total += sum(len(k) + _value_bytes(v) for k, v in rec.items())
    return total

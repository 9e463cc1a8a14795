"""Networked federated learning over ``torch.distributed`` (top layer, ``fl``).

The server (rank 0) and each client (ranks 1..n) are separate processes,
possibly on separate machines. They join one ``gloo`` process group over TCP
and exchange messages encoded by the schema-checked codec of :mod:`smpc.codec`
(never pickled): the payload travels by ``gloo`` point-to-point
``send``/``recv``; the "a message is waiting" signal goes through the
group's TCP key-value store, whose ``wait`` has a timeout that does not tear
down the group (a timed-out ``gloo`` receive would close every connection).

The server runs the very same :class:`~fl.server.Server` loop, strategy and
aggregator protocol as the simulation; only delivery changes. A client that
misses a stage deadline, or whose connection breaks (killed process, lost
machine), is a dropout for the rest of the run, never a hang: the aggregator
carries on with the survivors (the masking aggregator recovers their masks)
or the round fails with a visible error (:class:`~fl.server.FailurePolicy`).

Launch on several machines (one command per process; rank 0 is the server;
credentials from ``smpc-credentials creds --fl-server --fl-clients 3``)::

    SMPC_CREDENTIALS=creds MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 WORLD_SIZE=4 RANK=0 \
        python my_fl_app.py
    SMPC_CREDENTIALS=creds MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 WORLD_SIZE=4 RANK=1 \
        python my_fl_app.py
    ...

where ``my_fl_app.py`` calls :func:`run_server` on rank 0 and
:func:`run_client` elsewhere (see ``docs/fl.md``). Over TLS the server listens
on ``MASTER_PORT`` only. With ``insecure=True`` (plain gloo) the server hosts
a store on ``MASTER_PORT`` and gloo picks its own ports, so open the firewall
between the machines.

The gloo path (one host, or ``insecure``) signals waiting messages through
the store; the TLS path reads them from the connection.

Messages: each is an envelope (:meth:`smpc.codec.Codec.encode_message`) with
the link's sequence number and a kind from an allow-list (``hello``, ``fit``,
``fitted``, ``agg``, ``error``, ``stop``), whose fields are checked by kind;
aggregator messages are the dataclasses of :mod:`fl.aggregators` and
:mod:`fl.secure_aggregation`, model vectors are typed tensor frames. A client
that sends a malformed, oversized, replayed or unexpected message is dropped
(a dropout, logged); a server that does is reported by the client as
:class:`~fl.errors.NetworkError`. Nothing received is ever unpickled.

Failures: a client whose server dies or goes silent for ``idle_timeout``
raises :class:`~fl.errors.NetworkError` naming the server, never a raw
transport error.

Security: across machines the link is TLS 1.3 with mutual authentication
(:mod:`fl.tls_link`; credentials from ``smpc-credentials``, roles ``fl:server``
and ``fl:client:<id>``; a client's certificate must name the client its hello
claims); no rendezvous store is used then. Without credentials a run whose
server is not on the loopback refuses to start, unless ``insecure=True``
(plain gloo, with a warning). On one host without credentials, gloo on the
loopback as before.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fl.aggregators import Aggregator, InputRequest, PlainInput, Stage
from fl.client import Client, LossFn
from fl.errors import ConfigError, FlError, InsufficientClientsError, NetworkError
from fl.secure_aggregation import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    MaskingSetup,
    ShareDelivery,
    UnmaskRequest,
    UnmaskShares,
)
from fl.server import FailurePolicy, Server, round_generator
from fl.strategy import PersonalizedStrategy, Strategy
from fl.tls_link import TlsLink
from fl.types import AggregateResult, ClientUpdate, FitConfig, History
from smpc import ProtocolError
from smpc.codec import Codec, check_length
from smpc.credentials import CredentialsError, InsecureTransportWarning, role_uri
from smpc.credentials import resolve as resolve_credentials

__all__ = ["NetworkConfig", "NetworkServer", "run_client", "run_server"]


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Where and how long to wait.

    Attributes:
        world_size: Server + clients.
        master_addr: Address of the server (rank 0), which hosts the store.
        master_port: TCP port of the store.
        stage_timeout: Seconds the server waits for all replies of one stage
            (including local training); a client that misses it is a dropout.
        heartbeat_timeout: A client beats every ``heartbeat_timeout / 5``
            seconds from a background thread; one silent for longer than this
            (killed, crashed, disconnected) is a dropout at once, even while a
            long stage is still within its deadline.
        connect_timeout: Seconds to wait for every process to join.
        idle_timeout: Seconds a client waits for the server's next message.
        max_message_bytes: The largest message accepted from a peer (its
            announced size is checked before a buffer is allocated).
        transport: ``"auto"`` (default): TLS when this process has credentials
            (or the server is not on the loopback), else gloo on the loopback;
            ``"tls"``: TLS 1.3 with mutual authentication (:mod:`fl.tls_link`),
            also on one host; ``"gloo"``: plain gloo TCP (across machines only
            with ``insecure``).
        credentials: A folder made by ``smpc-credentials`` holding ``ca.pem`` and
            this process's ``fl-server`` or ``fl-client-<id>`` files (default:
            ``$SMPC_CREDENTIALS``).
        insecure: Across machines without credentials, use plain gloo TCP
            (warns: updates, masked inputs and key material travel readable).
    """

    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    stage_timeout: float = 600.0
    heartbeat_timeout: float = 5.0
    connect_timeout: float = 120.0
    idle_timeout: float = 3600.0
    max_message_bytes: int = 1 << 31
    transport: str = "auto"
    credentials: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.transport not in ("auto", "tls", "gloo"):
            raise ConfigError(
                f"`transport` must be 'auto', 'tls' or 'gloo'; got {self.transport!r}"
            )
        if self.world_size < 2:
            raise ConfigError(
                f"`world_size` must be >= 2 (server + clients); got {self.world_size}"
            )
        for name in ("stage_timeout", "heartbeat_timeout", "connect_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"`{name}` must be > 0; got {getattr(self, name)}")

    @classmethod
    def from_env(cls, *, stage_timeout: float = 600.0) -> tuple[NetworkConfig, int]:
        """Read ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK``.

        Returns:
            The config and this process's rank.
        """
        try:
            cfg = cls(
                world_size=int(os.environ["WORLD_SIZE"]),
                master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(os.environ.get("MASTER_PORT", "29500")),
                stage_timeout=stage_timeout,
            )
            return cfg, int(os.environ["RANK"])
        except KeyError as exc:
            raise ConfigError(f"environment variable {exc.args[0]} is not set") from exc


# torch.distributed re-exports its stores without declaring them public to mypy
_TCPStore = dist.TCPStore  # type: ignore[attr-defined]
_PrefixStore = dist.PrefixStore  # type: ignore[attr-defined]

_PEER_ERRORS = (RuntimeError, dist.DistError, TimeoutError, ConnectionError, OSError, EOFError)

log = logging.getLogger(__name__)

# The secure-aggregation messages a round's payloads may be.
_AGG_MESSAGES = (
    InputRequest,
    PlainInput,
    MaskingSetup,
    AdvertiseKeys,
    KeyRoster,
    EncryptedShares,
    ShareDelivery,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
)
# Everything a networked message may hold beyond plain values and tensors.
_MESSAGE_TYPES = (FitConfig, Stage, *_AGG_MESSAGES)
# The fields of each message kind, by direction (a value of the listed types each).
_TO_SERVER: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "hello": (int, int),
    "fitted": (int, (int, float)),
    "agg": (_AGG_MESSAGES,),
    "error": (str,),
}
_TO_CLIENT: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "fit": (int, torch.Tensor, FitConfig, int),
    "agg": (_AGG_MESSAGES,),
    "stop": (),
}


def _check_fields(
    kind: str, body: object, schema: dict[str, tuple[type | tuple[type, ...], ...]], peer: str
) -> tuple[Any, ...]:
    """``body`` as the field tuple of a ``kind`` message, or ProtocolError naming ``peer``."""
    want = schema[kind]
    if not isinstance(body, tuple) or len(body) != len(want):
        raise ProtocolError(
            f"{peer} sent a {kind!r} message with {type(body).__name__} fields; expected "
            f"{len(want)} fields"
        )
    for i, (value, types) in enumerate(zip(body, want, strict=True)):
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolError(
                f"{peer} sent a {kind!r} message whose field {i} is a {type(value).__name__}"
            )
    return body


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_link(config: NetworkConfig, rank: int, client_id: int | None) -> TlsLink | None:
    """The TLS link of this process, or ``None`` for gloo (secure by default across hosts).

    Raises:
        ConfigError: across machines without credentials and without ``insecure``
            (says how to create them).
    """
    uri = role_uri("fl-server") if rank == 0 else role_uri("fl-client", str(client_id))
    try:
        creds = resolve_credentials(config.credentials, uri)
    except CredentialsError as exc:
        raise ConfigError(str(exc)) from exc
    local = _is_loopback(config.master_addr)
    if config.transport == "gloo" or (config.transport == "auto" and creds is None):
        if not local and not config.insecure:
            raise ConfigError(
                f"rank {rank} ({uri}): the fl server {config.master_addr} is not on this host "
                "and this process has no credentials: networked fl across machines uses TLS "
                "with mutual authentication. Create them with `smpc-credentials creds "
                "--fl-server --fl-clients N`, give each machine ca.pem and its role's .pem "
                "and .key, and pass NetworkConfig(credentials='creds') (or set "
                "SMPC_CREDENTIALS); or pass insecure=True to send in plaintext"
            )
        if not local:
            msg = (
                f"rank {rank}: insecure=True: fl messages travel over plain gloo TCP, "
                "unencrypted and unauthenticated: model updates, masked inputs, key "
                "advertisements and shares can be read, and anyone who reaches the store "
                "port can join as a client or tamper with signals"
            )
            warnings.warn(msg, InsecureTransportWarning, stacklevel=3)
            log.warning(msg)
        return None
    if creds is None:
        raise ConfigError(
            f"rank {rank} ({uri}): `transport` 'tls' needs credentials: create them with "
            "`smpc-credentials creds --fl-server --fl-clients N` and pass "
            "NetworkConfig(credentials='creds')"
        )
    try:
        return TlsLink(
            rank,
            config.world_size,
            config.master_addr,
            config.master_port,
            creds,
            connect_timeout=config.connect_timeout,
            max_message_bytes=config.max_message_bytes,
        )
    except (OSError, ValueError) as exc:
        raise NetworkError(
            f"rank {rank} could not join the federation at "
            f"{config.master_addr}:{config.master_port} over TLS: {exc}"
        ) from exc


class _Channel:
    """Codec-encoded messages between rank 0 and the clients (gloo payload, store signal)."""

    def __init__(self, config: NetworkConfig, rank: int, client_id: int | None = None) -> None:
        if not 0 <= rank < config.world_size:
            raise ConfigError(f"`rank` must be in [0, {config.world_size}); got {rank}")
        self.rank = rank
        self.config = config
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}
        self.pending: dict[int, list[Any]] = {}
        self.bytes_sent = 0
        self.codec = Codec(_MESSAGE_TYPES, max_bytes=config.max_message_bytes)
        self.link = _tls_link(config, rank, client_id)
        if self.link is not None:
            return
        try:
            self.store = _TCPStore(
                config.master_addr,
                config.master_port,
                config.world_size,
                is_master=rank == 0,
                timeout=datetime.timedelta(seconds=config.connect_timeout),
                wait_for_workers=False,
            )
            dist.init_process_group(
                "gloo",
                store=_PrefixStore("gloo", self.store),
                rank=rank,
                world_size=config.world_size,
                timeout=datetime.timedelta(
                    seconds=max(config.idle_timeout, config.connect_timeout)
                ),
            )
        except (RuntimeError, dist.DistError) as exc:
            raise NetworkError(
                f"rank {rank} could not join the federation at "
                f"{config.master_addr}:{config.master_port}: {exc}"
            ) from exc

    @staticmethod
    def who(rank: int) -> str:
        """A display name for ``rank``."""
        return "the server (rank 0)" if rank == 0 else f"the client at rank {rank}"

    def send(self, dst: int, obj: tuple[Any, ...]) -> None:
        """Send message ``(kind, *fields)`` to ``dst``."""
        seq = self.sent.get(dst, 0)
        data = self.codec.encode_message(seq, obj[0], tuple(obj[1:]))
        self.sent[dst] = seq + 1
        if self.link is not None:
            self.link.send(dst, data, self.config.stage_timeout)
            self.bytes_sent += len(data)
            return
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        work = dist.isend(payload, dst=dst)
        # keep the buffer and handle alive until the peer has taken the message
        self.pending.setdefault(dst, []).append((work, payload))
        self.store.set(f"fl/{self.rank}->{dst}/{seq}", str(payload.numel()))
        self.bytes_sent += payload.numel()

    def settle(self, peer: int) -> None:
        """Complete sends to ``peer`` (call only once the peer answered: cannot block)."""
        if self.link is not None:  # TLS sends complete when they return
            return
        for work, _ in self.pending.pop(peer, []):
            work.wait()

    def forget(self, peer: int) -> None:
        """Drop a dead peer's pending sends without waiting on them."""
        if self.link is not None:
            self.link.forget(peer)
        self.pending.pop(peer, None)

    def ready(self, src: int) -> bool:
        """Whether the next message from ``src`` is waiting (never blocks)."""
        if self.link is not None:
            return self.link.ready(src)
        return bool(self.store.check([f"fl/{src}->{self.rank}/{self.received.get(src, 0)}"]))

    def beats(self, rank: int) -> int:
        """Heartbeat counter of ``rank``."""
        if self.link is not None:
            return self.link.beats(rank)
        return int(self.store.add(f"fl/beat/{rank}", 0))

    def start_heartbeat(self) -> threading.Event:
        """Beat from a background thread on a separate store connection; set the event to stop."""
        stop = threading.Event()
        if self.link is not None:
            link, period = self.link, self.config.heartbeat_timeout / 5

            def beat_tls() -> None:
                while not stop.is_set():
                    try:
                        link.beat()
                    except _PEER_ERRORS:
                        return
                    stop.wait(period)

            threading.Thread(target=beat_tls, name=f"fl-heartbeat-{self.rank}", daemon=True).start()
            return stop
        store = _TCPStore(
            self.config.master_addr,
            self.config.master_port,
            is_master=False,
            timeout=datetime.timedelta(seconds=self.config.connect_timeout),
        )
        key, period = f"fl/beat/{self.rank}", self.config.heartbeat_timeout / 5

        def beat() -> None:
            while not stop.is_set():
                try:
                    store.add(key, 1)
                except _PEER_ERRORS:
                    return
                stop.wait(period)

        threading.Thread(target=beat, name=f"fl-heartbeat-{self.rank}", daemon=True).start()
        return stop

    def recv(self, src: int, timeout: float) -> tuple[Any, ...]:
        """The next message ``(kind, *fields)`` from ``src``, checked by kind.

        Raises:
            ProtocolError: malformed, oversized, replayed or unexpected (names ``src``).
        """
        seq = self.received.get(src, 0)
        peer = self.who(src)
        if self.link is not None:
            data = self.link.recv(src, max(timeout, 0.001))
        else:
            key = f"fl/{src}->{self.rank}/{seq}"
            self.store.wait([key], datetime.timedelta(seconds=max(timeout, 0.001)))
            announced = self.store.get(key)
            self.store.delete_key(key)
            try:
                size = int(announced)
            except ValueError:
                raise ProtocolError(f"{peer} announced a message size {announced[:40]!r}") from None
            check_length(size, self.config.max_message_bytes, peer=peer, what="a message")
            buf = torch.empty(size, dtype=torch.uint8)
            dist.recv(buf, src=src)
            data = buf.numpy().tobytes()
        self.received[src] = seq + 1
        schema = _TO_CLIENT if self.rank else _TO_SERVER
        kind, body = self.codec.decode_message(data, seq=seq, kinds=schema, peer=peer)
        fields = _check_fields(kind, body, schema, peer)
        if self.link is not None and kind == "hello":  # the certificate names the client
            uri = self.link.identity(src)
            if uri != role_uri("fl-client", str(fields[0])):
                raise ProtocolError(
                    f"{peer} says it is client {fields[0]} but its certificate names {uri!r}"
                )
        return (kind, *fields)

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
        elif dist.is_initialized():
            dist.destroy_process_group()


class NetworkServer(Server):
    """A :class:`~fl.server.Server` whose clients are remote processes (rank 0).

    Args:
        model: The global model.
        config: Network configuration (``world_size - 1`` clients).
        strategy: As for :class:`Server`.
        aggregator: As for :class:`Server`: plain or masking. (The
            secret-sharing aggregator needs its smpc parties as processes of
            their own, which this runtime does not start: a ConfigError.)
        test_data: As for :class:`Server`.
        loss_fn: As for :class:`Server`.
        seed: As for :class:`Server`.
        on_failure: As for :class:`Server`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: NetworkConfig,
        *,
        strategy: Strategy | None = None,
        aggregator: Aggregator | None = None,
        test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss_fn: LossFn = nn.functional.cross_entropy,
        seed: int = 0,
        on_failure: FailurePolicy = FailurePolicy.RAISE,
    ) -> None:
        from fl.aggregators import SecretSharingAggregator
        from fl.paillier import PaillierAggregator

        if isinstance(aggregator, SecretSharingAggregator | PaillierAggregator):
            raise ConfigError(
                "networked mode supports PlainAggregator and MaskingAggregator; "
                f"{type(aggregator).__name__} runs in simulation only"
            )
        if isinstance(strategy, PersonalizedStrategy):
            raise ConfigError(
                f"networked mode runs global-model strategies; {type(strategy).__name__} "
                "(personalised) runs in simulation only"
            )
        super().__init__(
            model,
            (),
            strategy=strategy,
            aggregator=aggregator,
            test_data=test_data,
            loss_fn=loss_fn,
            seed=seed,
            on_failure=on_failure,
        )
        self.config = config
        self.channel = _Channel(config, 0)
        self.rank_of: dict[int, int] = {}
        self.examples: dict[int, int] = {}
        self.alive: set[int] = set()
        deadline = time.monotonic() + config.connect_timeout
        for rank in range(1, config.world_size):
            try:
                msg = self.channel.recv(rank, deadline - time.monotonic())
            except ProtocolError as exc:  # a hostile or broken peer: left out, the run goes on
                log.warning("rank %d left out of the federation: %s", rank, exc)
                continue
            except _PEER_ERRORS:
                continue  # never joined: absent from the start
            if msg[0] != "hello" or msg[1] in self.rank_of:
                log.warning("rank %d left out of the federation: invalid hello %r", rank, msg[:2])
                continue
            _, cid, n = msg
            self.rank_of[cid] = rank
            self.examples[cid] = n
            self.alive.add(cid)
        if not self.alive:
            raise NetworkError("no client joined the federation")

    def available_clients(self) -> list[int]:
        """Clients still connected."""
        return sorted(self.alive)

    def _drop(self, cid: int) -> None:
        self.alive.discard(cid)
        self.channel.forget(self.rank_of[cid])

    def _exchange(self, messages: Mapping[int, Any], expect: str) -> dict[int, Any]:
        """Send one message per client, collect ``expect`` replies until the stage deadline.

        A client that replies with another kind, or a malformed message, is dropped.
        """
        for cid, msg in messages.items():
            if cid in self.alive:
                try:
                    self.channel.send(self.rank_of[cid], msg)
                except _PEER_ERRORS:
                    self._drop(cid)
        deadline = time.monotonic() + self.config.stage_timeout
        replies: dict[int, Any] = {}
        pending = [cid for cid in messages if cid in self.alive]
        seen = {cid: (self.channel.beats(self.rank_of[cid]), time.monotonic()) for cid in pending}
        while pending:
            now = time.monotonic()
            for cid in list(pending):
                rank = self.rank_of[cid]
                try:
                    if self.channel.ready(rank):
                        reply = self.channel.recv(rank, self.config.heartbeat_timeout)
                        self.channel.settle(rank)
                    else:
                        beat = self.channel.beats(rank)
                        if beat != seen[cid][0]:
                            seen[cid] = (beat, now)
                        elif now - seen[cid][1] > self.config.heartbeat_timeout or now > deadline:
                            raise TimeoutError(f"client {cid} is silent")
                        continue
                except ProtocolError as exc:  # a malformed or hostile reply: a dropout
                    log.warning("client %d dropped: %s", cid, exc)
                    pending.remove(cid)
                    self._drop(cid)
                    continue
                except _PEER_ERRORS:
                    pending.remove(cid)
                    self._drop(cid)
                    continue
                pending.remove(cid)
                if reply[0] == "error":
                    self._drop(cid)  # the client refused (e.g. its own threshold check)
                    continue
                if reply[0] != expect:
                    log.warning("client %d dropped: sent %r, expected %r", cid, reply[0], expect)
                    self._drop(cid)
                    continue
                replies[cid] = reply
            if pending:
                time.sleep(0.005)
        return replies

    def train_and_aggregate(
        self, selected: Sequence[int], round_index: int, dropouts: Mapping[Stage, Sequence[int]]
    ) -> tuple[list[ClientUpdate], AggregateResult]:
        """Remote training, then the aggregator's protocol over the network."""
        config = self.strategy.fit_config(round_index)
        fit_msgs = {
            cid: ("fit", round_index, self.global_vector, config, self.seed) for cid in selected
        }
        fitted = self._exchange(fit_msgs, "fitted")
        updates = [
            ClientUpdate(cid, torch.empty(0), int(n), float(loss))
            for cid, (_, n, loss) in sorted(fitted.items())
        ]
        if not updates:
            raise InsufficientClientsError("fit", 0, 1)
        weights = self.aggregator.weights({u.client_id: u.num_examples for u in updates})
        session = self.aggregator.server_session(
            weights, self.global_vector.numel(), round_index=round_index
        )
        messages: dict[int, Any] | None = session.first()
        while messages is not None:
            replies = self._exchange({cid: ("agg", m) for cid, m in messages.items()}, "agg")
            messages = session.step({cid: r[1] for cid, r in replies.items()})
        result = session.result()
        self.aggregator.record_round()
        return updates, result

    def shutdown(self) -> None:
        """Tell the connected clients to exit, then leave the process group."""
        for cid in sorted(self.alive):
            with contextlib.suppress(*_PEER_ERRORS):
                self.channel.send(self.rank_of[cid], ("stop",))
        time.sleep(0.2)
        self.channel.close()


def run_server(
    model: nn.Module,
    config: NetworkConfig,
    *,
    num_rounds: int,
    strategy: Strategy | None = None,
    aggregator: Aggregator | None = None,
    test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    seed: int = 0,
    on_failure: FailurePolicy = FailurePolicy.RAISE,
    progress: bool = False,
    checkpoint: str | None = None,
) -> History:
    """Rank 0: run ``num_rounds`` rounds over the remote clients and return the history."""
    server = NetworkServer(
        model,
        config,
        strategy=strategy,
        aggregator=aggregator,
        test_data=test_data,
        loss_fn=loss_fn,
        seed=seed,
        on_failure=on_failure,
    )
    try:
        return server.run(num_rounds, progress=progress, checkpoint=checkpoint)
    finally:
        server.shutdown()


def run_client(
    client: Client,
    model: nn.Module,
    config: NetworkConfig,
    *,
    rank: int,
    aggregator: Aggregator,
) -> int:
    """Ranks 1..n: serve the server's requests until it says stop.

    Args:
        client: This process's client (its data stays here).
        model: A module of the global architecture (used as the local worker).
        config: Network configuration (same as the server's).
        rank: This process's rank (>= 1).
        aggregator: An aggregator configured like the server's (its client side runs here).

    Returns:
        The number of rounds this client trained in.
    """
    if rank < 1:
        raise ConfigError(f"a client's `rank` must be >= 1; got {rank}")
    channel = _Channel(config, rank, client.client_id)
    stop_heartbeat = channel.start_heartbeat()
    me = f"client {client.client_id} (rank {rank})"
    server = f"the server (rank 0, {config.master_addr}:{config.master_port})"

    def send(msg: tuple[Any, ...]) -> None:
        try:
            channel.send(0, msg)
        except _PEER_ERRORS as exc:
            raise NetworkError(
                f"{me}: lost {server} while sending {msg[0]!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def recv() -> tuple[Any, ...]:
        try:
            msg = channel.recv(0, config.idle_timeout)
            channel.settle(0)
        except ProtocolError as exc:
            raise NetworkError(f"{me}: {server} sent a message this client refuses: {exc}") from exc
        except _PEER_ERRORS as exc:
            raise NetworkError(
                f"{me}: lost {server}: it died, exited or sent nothing within "
                f"idle_timeout={config.idle_timeout:g} s ({type(exc).__name__}: {exc})"
            ) from exc
        return msg

    session = None
    rounds = 0
    try:
        send(("hello", client.client_id, client.num_examples))
        while True:
            msg = recv()
            kind = msg[0]
            if kind == "stop":
                return rounds
            if kind == "fit":
                _, round_index, global_vector, fit_config, seed = msg
                g = round_generator(seed, round_index, client.client_id + 1)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=g)))
                    update = client.fit(model, global_vector, fit_config, generator=g)
                session = aggregator.client_session(client.client_id, update.delta)
                rounds += 1
                send(("fitted", update.num_examples, update.train_loss))
            else:  # "agg": the kinds were checked on receipt
                if session is None:
                    raise NetworkError(f"{me}: {server} sent an aggregation message before any fit")
                try:
                    reply = session.respond(msg[1])
                except FlError as exc:  # report, then stay available for later rounds
                    send(("error", f"{type(exc).__name__}: {exc}"))
                    continue
                send(("agg", reply))
    finally:
        stop_heartbeat.set()
        channel.close()

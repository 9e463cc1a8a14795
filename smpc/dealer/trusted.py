"""Trusted crypto provider as its own process, for the distributed runtime (runtime layer).

The provider is rank ``world_size`` of the runtime's gloo group (see
:mod:`smpc.comm.rendezvous`). Its traffic is cut to the minimum with per-party
seeds (the CrypTen TTP idea):

1. At start it sends each party ``i`` a 16-byte AES key ``k_i`` (from
   ``os.urandom``; from :func:`~smpc.prg.key_from_seed` under the session's
   testing ``seed``).
2. For every request, party ``i`` expands from AES-CTR(``k_i``), in component
   order, its shares of the ``RANDOM`` components and, if ``i < n - 1``, of the
   ``DERIVED`` ones. Parties ``0 .. n-2`` never talk to the provider again.
3. The last party sends the request (a small frozen dataclass, encoded by
   :func:`~smpc.dealer.base.request_codec`: class name and typed fields, never
   pickled) to the provider and receives only the *correction* shares ``value - sum(others)``
   of the derived components. The provider expands every party's stream to
   compute them.
4. Latency: the provider computes the correction of the request it expects
   next (the one that followed the same two requests last time: a training or
   inference loop repeats its requests) while the party computes; a wrong
   guess is undone (AES-CTR streams rewound, kept masks restored), so the
   parties get the same values either way. The last party posts the receive of
   a large correction with its request, so the bytes stream in while it computes.

Every party therefore draws exactly what :func:`~smpc.dealer.local.generate_stacked`
would give it up to the choice of stream (only the sums matter), and the
provider's traffic per request is the correction shares alone: the bytes
:class:`~smpc.dealer.local.LocalDealer` counts for the same request.

Ending: the last party sends CLOSE when its session closes. The provider waits
for each request at most ``idle_timeout`` (default: the session timeout): when
the parties are gone without a CLOSE (a partition, a stalled or killed party,
an unreachable host) it raises :class:`~smpc.errors.PartyTimeoutError` naming
the last party within that time, instead of waiting forever. A party's own
waits are bounded by the same timeout, so a live session never leaves the
provider idle longer unless every party idles at once (plain-text work of the
program between two protocol steps): pass a larger ``idle_timeout`` then.

Security: semi-honest; the provider sees no secret and must not collude with
any party. Nothing the provider reads is unpickled: a request is decoded by the
schema-checked codec (:mod:`smpc.codec`), which builds only the allowed request
classes, checks every field's type and refuses anything else with
:class:`~smpc.errors.ProtocolError`; a request whose components exceed
``max_request_bytes`` is refused before anything is allocated.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch._C._distributed_c10d import ProcessGroupGloo, Store

from ..codec import Codec
from ..comm.framing import INLINE_BYTES, Channel, MessageKind, Pending, PointToPoint, Waitable
from ..comm.rendezvous import connect, identities_of
from ..comm.stats import Stats
from ..comm.torchdist import TorchDistCommunicator
from ..comm.unixsock import UnixSocketGroup
from ..credentials import Credentials
from ..errors import DealerError, PartyTimeoutError, ProtocolDesyncError, ProtocolError
from ..prg import KEY_BYTES, AesPrg, key_from_seed
from .base import (
    POOL,
    Batch,
    Component,
    KeptMasks,
    Request,
    fused_correction,
    kept_values,
    poolable,
    request_codec,
)

__all__ = ["TrustedDealer", "TrustedDealerClient", "Shares", "DealerStats", "dealer_key"]


# Correction sends kept in flight while the provider serves the next requests.
_INFLIGHT = 2


def dealer_key(seed: int | bytes | str | None, party: int) -> bytes | None:
    """The stream key of ``party`` under the testing ``seed`` (``None``: draw from os.urandom)."""
    return None if seed is None else key_from_seed(seed, label=f"trusted-dealer/{party}")


def _numel(c: Component) -> int:
    return math.prod(c.shape)


def _drawn(comps: Sequence[Component], party: int, world_size: int) -> list[Component]:
    """Components whose share ``party`` expands from its own stream, in order."""
    last = party == world_size - 1
    return [c for c in comps if c.kind.shared and not (last and c.kind.derived)]


def _split(buf: torch.Tensor, comps: Sequence[Component]) -> dict[str, torch.Tensor]:
    out = {}
    offset = 0
    for c in comps:
        n = _numel(c)
        out[c.name] = buf[offset : offset + n].view(c.shape)
        offset += n
    return out


# Encoded requests cached per side (a program repeats a few requests; bounded).
_CACHE = 4096
# Largest request served by default: its components' bytes (a peer cannot make the
# provider allocate more than this).
MAX_REQUEST_BYTES = 1 << 33


def _load_request(codec: Codec, data: bytes, peer: str, max_bytes: int) -> Request:
    """Decode a request (allow-listed classes only) and check its size before serving it."""
    req = codec.decode(data, peer=peer)
    if not issubclass(type(req), Request):
        raise ProtocolError(f"{peer} sent a {type(req).__name__}, which is not a dealer request")
    try:
        comps = cast(Request, req).components()
        total = 8 * sum(math.prod(c.shape) for c in comps)
    except Exception as e:  # fields of the right types that make no request
        raise ProtocolError(f"{peer} sent an invalid {type(req).__name__}: {e}") from None
    if total > max_bytes:
        raise ProtocolError(
            f"{peer} asked for {total} bytes of correlated randomness in one request "
            f"({type(req).__name__}); the limit is {max_bytes} bytes"
        )
    return cast(Request, req)


class _Pending:
    """A correction the provider is computing: received when first needed."""

    __slots__ = ("seq", "what", "comps", "nbytes", "sends", "early", "shares")

    def __init__(
        self,
        seq: int,
        what: str,
        comps: list[Component],
        nbytes: int,
        sends: Pending,
        early: tuple[Waitable, torch.Tensor] | None,
    ) -> None:
        self.seq = seq
        self.what = what
        self.comps = comps
        self.nbytes = nbytes
        self.sends = sends
        self.early = early  # a payload receive posted with the request, and its buffer
        self.shares: dict[str, torch.Tensor] | None = None


class Shares(Mapping[str, torch.Tensor]):
    """One request's shares by component name; derived ones may still be in transit.

    The last party gets its correction shares from the provider. To overlap the
    provider's work with the protocol's opening round, they are received on
    first access (earlier requests' corrections first: the channel is FIFO).
    """

    __slots__ = ("_ready", "_pending", "_client")

    def __init__(
        self,
        ready: dict[str, torch.Tensor],
        pending: _Pending | None,
        client: TrustedDealerClient,
    ) -> None:
        self._ready = ready
        self._pending = pending
        self._client = client

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._ready and self._pending is not None:
            self._client._resolve(self._pending)
            assert self._pending.shares is not None
            self._ready.update(self._pending.shares)
            self._pending = None
        return self._ready[name]

    def __iter__(self) -> Iterator[str]:
        names = list(self._ready)
        if self._pending is not None:
            names += [c.name for c in self._pending.comps]
        return iter(names)

    def __len__(self) -> int:
        return len(self._ready) + (0 if self._pending is None else len(self._pending.comps))


class _Instance(Mapping[str, torch.Tensor]):
    """Row ``i`` of a pooled :class:`~smpc.dealer.base.Batch`'s shares (read lazily)."""

    __slots__ = ("_batch", "_i")

    def __init__(self, batch: Mapping[str, torch.Tensor], i: int) -> None:
        self._batch = batch
        self._i = i

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._batch[name][self._i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._batch)

    def __len__(self) -> int:
        return len(self._batch)


class TrustedDealerClient:
    """A party's handle on the provider process (implements :class:`~smpc.dealer.base.Dealer`).

    Args:
        comm: this party's communicator (the provider is its rank ``world_size``).
        stats: counters to add dealer bytes to (default: ``comm.stats``).
        lazy: on the last party, receive correction shares when the protocol first
            reads them (default), so that the provider computes them while the
            protocol opens its masked values; ``False`` waits in :meth:`request`.
            A correction larger than a frame has its receive posted with the
            request, so its bytes arrive meanwhile.

    Attributes:
        received_bytes: payload bytes this party received from the provider (its
            seed, and on the last party the correction shares).

    Raises:
        PartyTimeoutError: the provider did not send the seed within ``comm.timeout``.
        DealerError: (from reading a correction) the provider could not serve a
            request; every later request raises it too.
    """

    def __init__(
        self, comm: TorchDistCommunicator, *, stats: Stats | None = None, lazy: bool = True
    ) -> None:
        assert comm.rank is not None
        self.lazy = lazy
        self._codec = request_codec(encode_any=True)
        self._encoded: dict[Request, bytes] = {}
        self._comm = comm
        self._channel = comm.channel
        self._rank = comm.rank
        self._n = comm.world_size
        self._dealer = comm.dealer_rank
        self._last = self._rank == self._n - 1
        self._stats = stats if stats is not None else comm.stats
        self._seq = 0
        self._closed = False
        self._pending: deque[_Pending] = deque()
        self._failed: DealerError | None = None
        # Small elementwise requests: pools of POOL instances, one provider request each
        # (every party draws the same pools at the same points of the program).
        self._pools: dict[Request, tuple[Mapping[str, torch.Tensor], list[int]]] = {}
        self._corr_bytes: dict[Request, int] = {}
        _, raw, _ = self._channel.recv(self._dealer, 0, MessageKind.SEED, "receiving the seed")
        if raw.numel() != KEY_BYTES:
            raise DealerError(f"the provider sent a {raw.numel()}-byte seed; expected {KEY_BYTES}")
        self.received_bytes = KEY_BYTES
        self._prg = AesPrg(raw.numpy().tobytes())

    def request(self, req: Request) -> Mapping[str, torch.Tensor]:
        """This party's shares of ``req``'s components, by name.

        On the last party the derived shares arrive when first read (the provider
        computes them meanwhile). A small elementwise request
        (:func:`~smpc.dealer.base.poolable`) is served from a pool of
        :data:`~smpc.dealer.base.POOL` instances drawn in one provider request, as
        :class:`~smpc.dealer.local.LocalDealer` does; its stats count each
        instance as a request of its own (as the simulation does).
        """
        corr = self._corr_bytes.get(req)
        if corr is None and poolable(req):
            corr = self._corr_bytes[req] = 8 * sum(
                _numel(c) for c in req.components() if c.kind.derived
            )
        if corr is not None:
            entry = self._pools.get(req)
            if entry is None or entry[1][0] >= POOL:
                entry = self._pools[req] = (self._request(Batch(req, POOL)), [0])
            batch, cursor = entry
            i = cursor[0]
            cursor[0] = i + 1
            self._stats.record_dealer(corr)
            return _Instance(batch, i)
        shares = self._request(req)
        self._stats.record_dealer(8 * sum(_numel(c) for c in req.components() if c.kind.derived))
        return shares

    def _request(self, req: Request) -> Mapping[str, torch.Tensor]:
        """One request to the provider (see :meth:`request`); not counted in the stats."""
        if self._closed:
            raise DealerError("the dealer client is closed")
        if self._failed is not None:
            raise DealerError(f"the provider failed earlier: {self._failed}")
        self._channel.check()
        self._seq += 1
        seq = self._seq
        comps = req.components()
        derived = [c for c in comps if c.kind.derived]
        corr_bytes = 8 * sum(_numel(c) for c in derived)
        pending = None
        if self._last:
            # Send first: the provider computes while this party expands its own streams.
            data = self._encoded.get(req)
            if data is None:
                if len(self._encoded) >= _CACHE:
                    self._encoded.clear()
                data = self._encoded[req] = self._codec.encode(req)
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            what = f"dealer request #{seq} ({type(req).__name__})"
            sends = self._channel.send(self._dealer, seq, MessageKind.REQUEST, payload)
            early = None
            if corr_bytes > INLINE_BYTES:
                # Post the receive now: the provider's send then streams in while this
                # party computes, instead of waiting for this party to read the head.
                buf = torch.empty(corr_bytes // 8, dtype=torch.int64)
                early = (self._channel.recv_part(self._dealer, buf.view(torch.uint8)), buf)
            pending = _Pending(seq, what, derived, corr_bytes, sends, early)
            self._pending.append(pending)
        drawn = _drawn(comps, self._rank, self._n)
        ready = _split(self._prg.random_int64(sum(_numel(c) for c in drawn)), drawn)
        if pending is not None and (not derived or not self.lazy):
            self._resolve(pending)
            assert pending.shares is not None
            ready.update(pending.shares)
            pending = None
        return Shares(ready, pending, self)

    def _resolve(self, target: _Pending) -> None:
        """Receive corrections up to ``target``'s (in order)."""
        ch = self._channel
        while target.shares is None:
            p = self._pending.popleft()
            if p.early is None:
                kind, raw, _ = ch.recv(
                    self._dealer, p.seq, MessageKind.CORRECTION, p.what,
                    accept=(MessageKind.ERROR,),
                )  # fmt: skip
            else:  # a large correction: the head, then the payload received in place
                header = ch.take_header(self._dealer, p.what)
                kind = MessageKind.CORRECTION
                if int(header[1]) == MessageKind.ERROR:
                    kind = MessageKind.ERROR
                nbytes, _ = ch.check_header(header, self._dealer, p.seq, kind, None, p.what)
                if kind is MessageKind.ERROR:
                    raw = ch.payload(header, self._dealer, nbytes, keep=True)[1]
                elif int(header[4]) or nbytes != p.nbytes:
                    raise ProtocolDesyncError(
                        f"{p.what}: expected {p.nbytes} correction bytes after the head, "
                        f"got {nbytes} {'inline' if int(header[4]) else ''}"
                    )
                else:
                    work, buf = p.early
                    ch.wait(work, self._dealer, p.what)
                    raw = buf.view(torch.uint8)
            if kind is MessageKind.ERROR:
                # Fatal for the session: payload receives posted for later corrections
                # no longer line up with the provider's sends.
                self._failed = DealerError(
                    f"the provider failed on {p.what}: {raw.numpy().tobytes().decode()}"
                )
                raise self._failed
            if raw.numel() != p.nbytes:
                raise ProtocolDesyncError(
                    f"{p.what}: expected {p.nbytes} correction bytes, got {raw.numel()}"
                )
            ch.wait_all(p.sends, self._dealer, p.what)
            p.shares = _split(raw.view(torch.int64), p.comps)
            self.received_bytes += p.nbytes

    def close(self) -> None:
        """Tell the provider the session ended (the last party does; never raises)."""
        if self._closed:
            return
        self._closed = True
        if self._last and self._channel.failed is None:
            try:
                if self._pending:
                    self._resolve(self._pending[-1])
                works = self._channel.send(self._dealer, self._seq + 1, MessageKind.CLOSE, None)
                self._channel.wait_all(works, self._dealer, "closing the dealer")
            except (PartyTimeoutError, ProtocolDesyncError, DealerError):
                pass


@dataclass(slots=True)
class DealerStats:
    """What the provider process did: requests served and payload bytes sent.

    ``peak_in_flight`` is the most correction sends (with their buffers) held at
    once: bounded, so the provider's memory stays flat however long the session.
    ``speculated``: corrections computed ahead of their request; ``speculation_hits``:
    those the next request matched (the others were undone).
    """

    requests: int = 0
    correction_bytes: int = 0
    seed_bytes: int = 0
    peak_in_flight: int = 0
    speculated: int = 0
    speculation_hits: int = 0
    kept_masks: int = 0  # masks still kept for later requests when the session closed


class _Predictor:
    """Guesses the next request from the two before it (a training step repeats its requests).

    Remembers, for each pair of consecutive requests (their encoded bytes), the
    request that followed the pair last time; bounded (cleared when full). Only
    requests that decoded are observed, with their decoded form.
    """

    _MAX = _CACHE

    def __init__(self) -> None:
        self._seen = (b"", b"")  # the last two requests served, newest last
        self._follows: dict[tuple[bytes, bytes], bytes] = {}
        self._loaded: dict[bytes, Request] = {}

    def observe(self, raw: bytes, req: Request) -> None:
        """Record the request just served (its bytes and decoded form)."""
        if len(self._follows) >= self._MAX:
            self._follows.clear()
            self._loaded.clear()
        self._follows[self._seen] = raw
        self._loaded[raw] = req
        self._seen = (self._seen[1], raw)

    def known(self, raw: bytes) -> Request | None:
        """The decoded form of a request seen before (``None`` if new)."""
        return self._loaded.get(raw)

    def guess(self) -> tuple[bytes, Request] | None:
        """The expected next request (its bytes and the request), if the pair was seen."""
        nxt = self._follows.get(self._seen)
        if nxt is None:
            return None
        req = self._loaded.get(nxt)
        return None if req is None else (nxt, req)


@dataclass(slots=True)
class _Speculation:
    """A correction computed ahead, with what it changed in the provider."""

    raw: bytes
    positions: list[int]
    private_position: int
    corr: torch.Tensor | None
    buf: torch.Tensor | None


class TrustedDealer:
    """The provider process's side: serves the last party's requests until it closes.

    Args:
        world_size: number of computing parties; this process is rank ``world_size``.
        seed: TESTING SWITCH, as :class:`~smpc.session.Session`'s ``seed``: derive the
            party keys from it (the parties must use the same seed). ``None``: os.urandom.
        timeout: seconds to wait for the parties to join and to take each correction.
        names: party names for error messages.
        pg: an already joined process group; otherwise one is joined with ``store`` /
            ``master_addr`` / ``master_port`` (defaults from the environment);
            ``host_store``, ``transport``, ``credentials`` (the provider's, role
            ``smpc:provider``), ``insecure``, ``address`` and ``listen_port`` as in
            :func:`~smpc.comm.rendezvous.connect`.
        speculate: after each correction, compute the one the next request is
            expected to need (the request that followed the same two requests last
            time: a training or inference loop repeats its requests), so that it is
            ready when the request comes; a wrong guess is undone (streams rewound).
            The parties see the same messages and values either way.
        request_types: the request classes the provider accepts beyond
            :data:`~smpc.dealer.base.REQUEST_TYPES`: those of the protocols the
            program uses (each protocol module's ``REQUEST_TYPES``, e.g.
            ``smpc.protocols.beaver.REQUEST_TYPES``; :func:`smpc.launch.run_dealer`
            passes every request class of ``smpc``). Nothing else is decoded.
        idle_timeout: seconds to wait for the next request or the session's close
            (default: ``timeout``); after it the provider gives up with
            :class:`~smpc.errors.PartyTimeoutError` naming the last party.
        max_request_bytes: the most bytes of correlated randomness one request may
            ask for (a larger one is refused before anything is allocated).
    """

    def __init__(
        self,
        world_size: int,
        *,
        seed: int | bytes | str | None = None,
        timeout: float = 60.0,
        names: Sequence[str] | None = None,
        store: Store | None = None,
        master_addr: str | None = None,
        master_port: int | None = None,
        prefix: str = "smpc",
        host_store: bool | None = None,
        pg: ProcessGroupGloo | PointToPoint | None = None,
        speculate: bool = True,
        transport: str = "auto",
        credentials: Credentials | str | os.PathLike[str] | None = None,
        insecure: bool = False,
        address: str | None = None,
        listen_port: int = 0,
        request_types: Sequence[type] = (),
        idle_timeout: float | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
            raise ValueError(f"`world_size` must be an int >= 2; got {world_size!r}")
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError(f"`timeout` must be a positive number of seconds; got {timeout!r}")
        if idle_timeout is not None and not (idle_timeout > 0 and math.isfinite(idle_timeout)):
            raise ValueError(
                f"`idle_timeout` must be a positive number of seconds or None; got {idle_timeout!r}"
            )
        self.idle_timeout = float(timeout if idle_timeout is None else idle_timeout)
        self.max_request_bytes = max_request_bytes
        self._codec = request_codec(request_types)
        self.world_size = world_size
        self.rank = world_size
        if names is None:
            names = [f"party{i}" for i in range(world_size)]
        if pg is None:
            pg = connect(
                world_size,
                world_size + 1,
                store=store,
                master_addr=master_addr,
                master_port=master_port,
                timeout=max(timeout, 60.0),
                prefix=prefix,
                host_store=host_store,
                transport=transport,
                identities=identities_of(names),
                credentials=credentials,
                insecure=insecure,
                address=address,
                listen_port=listen_port,
            )
        self._channel = Channel(pg, world_size, timeout, [*names, "dealer"])
        self._keys = [dealer_key(seed, i) for i in range(world_size)]
        private_key = None if seed is None else key_from_seed(seed, label="trusted-dealer/private")
        self._private_prg = AesPrg(private_key)
        self.stats = DealerStats()
        self._free: list[torch.Tensor] = []
        self._scratch = [torch.empty(0, dtype=torch.int64) for _ in range(world_size)]
        self._kept = KeptMasks()  # plain masks that later requests reuse
        self.speculate = speculate

    def serve(self) -> DealerStats:
        """Send the seeds, then answer requests until the last party closes.

        Raises:
            PartyTimeoutError: a party died (its connection closed), or neither a
                request nor the close came within ``idle_timeout``.
            ProtocolError: the last party sent a malformed, oversized or
                unexpected message (reported to it first); a
                :class:`~smpc.errors.ProtocolDesyncError` when the request stream
                is out of order.
        """
        ch = self._channel
        idle = datetime.timedelta(seconds=self.idle_timeout)
        prgs = []
        sends = []
        for i, key in enumerate(self._keys):
            seed = key if key is not None else os.urandom(KEY_BYTES)
            prgs.append(AesPrg(seed))
            seed_msg = torch.frombuffer(bytearray(seed), dtype=torch.uint8)
            sends.append((i, ch.send(i, 0, MessageKind.SEED, seed_msg)))
            self.stats.seed_bytes += KEY_BYTES
        for i, works in sends:
            ch.wait_all(works, i, "sending the seed")
        last = self.world_size - 1
        seq = 0
        # Sends complete only when the party posts its receive, which it does lazily:
        # keep the newest in flight (with their buffers), recycle the buffers after.
        inflight: deque[tuple[Pending, torch.Tensor | None]] = deque()
        predictor = _Predictor()
        spec: _Speculation | None = None  # the correction of the expected next request
        while True:
            seq += 1
            # While the last party computes, prepare the correction it is expected to
            # ask for next (one: a request that came meanwhile would wait behind a
            # deeper guess, and gloo cannot tell whether one has come without waiting).
            if self.speculate and spec is None:
                guess = predictor.guess()
                if guess is not None:
                    spec = self._speculate(*guess, prgs)
            kind, data, _ = self._next_request(last, seq, idle)
            # Retire all but the newest sends (one peer, FIFO). gloo's
            # ``is_completed()`` stays False until ``wait()`` is called, so wait: the
            # last party reads corrections in order, and it has read the older ones
            # before it needs a newer one, so this never waits on the party for long.
            while len(inflight) > _INFLIGHT:
                works, buf = inflight.popleft()
                ch.wait_all(works, last, "sending a correction", timeout=idle)
                if buf is not None and len(self._free) < _INFLIGHT + 2:
                    self._free.append(buf)
            if kind is MessageKind.CLOSE:
                for works, _ in inflight:
                    ch.wait_all(works, last, "sending a correction")
                if isinstance(ch.pg, UnixSocketGroup):  # gloo's group closes at exit
                    ch.pg.close()
                self.stats.kept_masks = len(self._kept)
                return self.stats
            raw = data.numpy().tobytes()
            guessed, spec = spec, None
            if guessed is not None and guessed.raw != raw:
                self._undo(guessed, prgs)
                guessed = None
            req = predictor.known(raw)
            if req is None:
                try:
                    req = _load_request(
                        self._codec, raw, f"party {ch.who(last)}", self.max_request_bytes
                    )
                except ProtocolError as e:  # told to the party, then fatal: a hostile stream
                    self._report(last, seq, e, inflight)
                    for works, _ in inflight:
                        with contextlib.suppress(PartyTimeoutError, ProtocolError):
                            ch.wait_all(works, last, "reporting an error", timeout=idle)
                    raise
            try:
                if guessed is not None:
                    assert guessed.corr is not None and guessed.buf is not None
                    corr, buf = guessed.corr, guessed.buf
                    self._kept.commit()
                    self.stats.speculation_hits += 1
                else:
                    corr, buf = self._corrections(req, prgs)
            except Exception as e:  # reported to the party, which raises DealerError
                self._report(last, seq, e, inflight)
                continue
            finally:
                predictor.observe(raw, req)
            works = ch.send(last, seq, MessageKind.CORRECTION, corr if corr.numel() else None)
            inflight.append((works, buf))
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(inflight))
            self.stats.requests += 1
            self.stats.correction_bytes += corr.numel() * 8

    def _next_request(
        self, last: int, seq: int, idle: datetime.timedelta
    ) -> tuple[MessageKind, torch.Tensor, int]:
        """Wait up to ``idle`` for the last party's next request (or its close)."""
        ch = self._channel
        try:
            return ch.recv(
                last, seq, MessageKind.REQUEST, f"waiting for request #{seq}",
                timeout=idle, accept=(MessageKind.CLOSE,),
            )  # fmt: skip
        except PartyTimeoutError as e:
            cause = str(e.__cause__ or e)
            if "closed" in cause.lower() or "reset" in cause.lower():
                why = "closed its connection without closing the session (it died or exited)"
            else:
                why = (
                    f"sent neither request #{seq} nor the session's close within "
                    f"{self.idle_timeout:g} s (the provider's idle_timeout): it stalled, "
                    "died, or the network is cut"
                )
            raise PartyTimeoutError(
                f"{ch.who(self.rank)} gives up: the last party {ch.who(last)} {why} [{cause}]"
            ) from e

    def _report(
        self,
        last: int,
        seq: int,
        error: Exception,
        inflight: deque[tuple[Pending, torch.Tensor | None]],
    ) -> None:
        """Send request ``seq``'s failure to the last party (which raises DealerError)."""
        msg = f"{type(error).__name__}: {error}".encode()
        err = torch.frombuffer(bytearray(msg), dtype=torch.uint8)
        inflight.append((self._channel.send(last, seq, MessageKind.ERROR, err), None))

    def _speculate(self, raw: bytes, req: Request, prgs: Sequence[AesPrg]) -> _Speculation | None:
        """Compute the correction of ``req`` ahead of its arrival.

        Everything it changes (stream positions, kept masks) is recorded so that
        :meth:`_undo` can put it back if another request comes instead.
        """
        spec = _Speculation(raw, [p.tell() for p in prgs], self._private_prg.tell(), None, None)
        self._kept.begin()  # kept masks kept or released: journaled until the request comes
        try:
            spec.corr, spec.buf = self._corrections(req, prgs)
        except Exception:  # the real request will raise (and report) it if it comes
            self._undo(spec, prgs)
            return None
        self.stats.speculated += 1
        return spec

    def _undo(self, spec: _Speculation, prgs: Sequence[AesPrg]) -> None:
        """Forget a correction computed ahead: rewind the streams, restore the kept masks."""
        for p, pos in zip(prgs, spec.positions, strict=True):
            p.seek(pos)
        self._private_prg.seek(spec.private_position)
        self._kept.rollback()
        if spec.buf is not None and len(self._free) < _INFLIGHT + 2:
            self._free.append(spec.buf)

    def _buffer(self, numel: int) -> torch.Tensor:
        for i, buf in enumerate(self._free):
            if buf.numel() >= numel:
                return self._free.pop(i)
        return torch.empty(numel, dtype=torch.int64)

    def _corrections(
        self, req: Request, prgs: Sequence[AesPrg]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last party's shares of the derived components, as one flat int64 buffer.

        Returns the correction and the (pooled) buffer that holds it.
        """
        n = self.world_size
        comps = req.components()
        plain: dict[str, torch.Tensor] = {}
        partial: dict[str, torch.Tensor] = {}  # sum of parties 0..n-2's derived shares
        for i in range(n):
            drawn = _drawn(comps, i, n)
            total_i = sum(_numel(c) for c in drawn)
            if self._scratch[i].numel() < total_i:
                self._scratch[i] = torch.empty(total_i, dtype=torch.int64)
            # Scratch reused across requests: no fresh pages to fault in for big requests.
            shares = _split(prgs[i].fill_(self._scratch[i][:total_i]), drawn)
            for c in drawn:
                acc = partial if c.kind.derived else plain
                v = shares[c.name]
                if c.name not in acc:
                    acc[c.name] = v  # a fresh buffer: accumulate in place
                elif c.kind.xor:
                    acc[c.name].bitwise_xor_(v)
                else:
                    acc[c.name].add_(v)
        private: dict[str, torch.Tensor] = {}
        for c in comps:
            if not c.kind.shared:  # provider-private randomness, never sent
                private[c.name] = self._private_prg.random_int64(_numel(c)).view(c.shape)
        self._kept.keep(req, plain)  # the masks later requests reuse (if any)
        plain.update(kept_values(req, self._kept))
        derived = [c for c in comps if c.kind.derived]
        total = sum(_numel(c) for c in derived)
        buf = self._buffer(total)
        out = buf[:total]
        dsts: dict[str, torch.Tensor] = {}
        offset = 0
        for c in derived:
            size = _numel(c)
            dsts[c.name] = out[offset : offset + size].view(c.shape)
            offset += size
        if fused_correction(
            req,
            {k: v.unsqueeze(0) for k, v in plain.items()},
            private,
            {k: v.unsqueeze(0) for k, v in partial.items()},
            dsts,
        ):
            self._kept.release(req)
            return out, buf
        values = req.derive(plain | private)
        for c in derived:
            dst = dsts[c.name]
            value = values[c.name]
            if tuple(value.shape) != tuple(c.shape):
                raise DealerError(
                    f"derived component {c.name!r} has shape {tuple(value.shape)}; "
                    f"expected {c.shape}"
                )
            if c.kind.xor:
                torch.bitwise_xor(value, partial[c.name], out=dst)
            else:
                torch.sub(value, partial[c.name], out=dst)
        self._kept.release(req)
        return out, buf

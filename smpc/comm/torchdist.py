"""Distributed runtime: one OS process per party, over torch.distributed (runtime layer).

Each party runs the same protocol code as in the simulation, holding only its
own share (``party_axis = False``). Parties talk point to point in a process
group whose ranks are ``0 .. world_size - 1`` for the computing parties and
``world_size`` for the crypto provider (see :mod:`smpc.dealer.trusted`): Unix
sockets when every rank runs on one host (:mod:`smpc.comm.unixsock`), TLS 1.3
with mutual authentication across hosts (:mod:`smpc.comm.tls`, the same
framing and send/receive semantics), or plain gloo over TCP on request (across
hosts only with ``insecure=True``); :func:`connect` picks one (``transport``,
secure by default). The rendezvous is a torch.distributed store; it holds
addresses and ports, never a secret a stranger could use across hosts.

Wire format. Every message is a *frame* on one gloo tag: a 128-byte head
``[seq, kind, nbytes, aux, inline, nparts, part sizes...]`` followed, when it
fits in ``FRAME_BYTES`` (1 MiB), by the payload itself. Each party keeps a
``FRAME_BYTES`` receive posted for every peer in advance, and gloo delivers a
shorter message into a larger posted buffer, so a frame travels at once, in
one message, with no send/receive handshake (gloo holds back a send until the
receiver has posted its receive). Larger payloads follow the head on another
tag, in parts. ``seq`` is the deterministic operation counter (every
communicator call increments it identically on every party), so a party that
calls a different operation, or the same one with other shapes, gets
:class:`~smpc.errors.ProtocolDesyncError` instead of corrupted data. The head
is what makes this safe: gloo aborts the whole process when a message is
larger than the posted receive buffer, so a receiver posts a separate payload
buffer only after checking the announced size.

Costs. An opening batches all shares of the call into one flat buffer per peer;
sends and receives to every peer are posted together (no deadlock, one round).
Buffers are reused between calls. Payload bytes are counted in :attr:`stats`
exactly as :class:`~smpc.comm.local.LocalCommunicator` counts them for the same
program; headers are not counted.

Failures. Every wait is bounded by ``timeout`` seconds: a peer that died (its
connection closes, detected at once) or stopped answering raises
:class:`~smpc.errors.PartyTimeoutError`; nothing hangs.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import logging
import os
import socket
import time
import warnings
import zlib
from collections import deque
from collections.abc import Sequence
from enum import IntEnum
from typing import Protocol, cast

import numpy as np
import torch
from torch._C._distributed_c10d import (  # the classes torch.distributed re-exports
    PrefixStore,
    ProcessGroupGloo,
    Store,
    TCPStore,
)

from ..codec import Codec, check_length
from ..credentials import (
    Credentials,
    CredentialsError,
    InsecureTransportWarning,
    role_uri,
)
from ..credentials import (
    resolve as resolve_credentials,
)
from ..errors import (
    PartyTimeoutError,
    ProtocolDesyncError,
    ProtocolError,
    SessionClosedError,
    SmpcError,
)
from .stats import Stats
from .tls import TlsSocketGroup, local_address
from .unixsock import UnixSocketGroup, host_id
from .unixsock import supported as unix_supported

__all__ = [
    "TorchDistCommunicator",
    "MessageKind",
    "Channel",
    "connect",
    "DEFAULT_PORT",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 29533
# A frame is a head of HEAD_NUMEL int64 [seq, kind, nbytes, aux, inline, nparts,
# part sizes...] and, when the whole fits in FRAME_BYTES, the payload (8-aligned).
# Receives of FRAME_BYTES are posted in advance; only the bytes sent travel.
HEAD_NUMEL = 16
HEAD_BYTES = HEAD_NUMEL * 8
FRAME_BYTES = 1 << 20
INLINE_BYTES = FRAME_BYTES - HEAD_BYTES
# Above INLINE_BYTES, an opening of up to MAX_PARTS shares sends each share without
# concatenating them (saves a copy of the payload); more shares are concatenated.
MAX_PARTS = HEAD_NUMEL - 6
# Frame receives kept posted per peer (re-posted in batches of at least half).
POSTED_FRAMES = 8
# gloo tags: headers and payloads travel on separate tags so that a header can never
# land in a payload buffer (gloo matches messages by (peer, tag), FIFO).
TAG_HEADER = 11
TAG_PAYLOAD = 12
# The largest payload a peer may announce in one message (2 GiB; Channel.max_message_bytes).
MAX_MESSAGE_BYTES = 1 << 31
# The longest reason a party sends its peers when it gives up (abort).
ABORT_REASON_BYTES = 4096
# Objects of broadcast_object: plain values and tensors, no classes (smpc.codec).
OBJECT_CODEC = Codec()
# Waits without a useful bound (the provider waiting for the next request).
LONG_WAIT = datetime.timedelta(days=7)


class MessageKind(IntEnum):
    """What a message carries (header field ``kind``)."""

    OPEN = 1
    REVEAL = 2
    SHARE = 3
    OBJECT = 4
    BARRIER = 5
    CLOSE = 6
    SEED = 7
    REQUEST = 8
    CORRECTION = 9
    ERROR = 10


class Waitable(Protocol):
    """A posted send or receive (a gloo ``Work``, or a :class:`~smpc.comm.unixsock.UnixWork`)."""

    def wait(self, timeout: datetime.timedelta = ...) -> bool:
        """Block until it completes; ``RuntimeError`` on failure or timeout."""
        ...


class PointToPoint(Protocol):
    """The part of a process group this runtime uses (tagged send and receive).

    A gloo ``ProcessGroupGloo`` (TCP) or a :class:`~smpc.comm.unixsock.UnixSocketGroup`.
    """

    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int) -> Waitable:  # noqa: N803
        """Post a send."""
        ...

    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int) -> Waitable:  # noqa: N803
        """Post a receive."""
        ...


# A send's works, and the tensors that must stay alive until they complete.
Pending = list[Waitable | torch.Tensor]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TRANSPORTS = ("auto", "unix", "tcp", "tls")


def identities_of(names: Sequence[str]) -> list[str]:
    """The role URI of every rank: the parties (``smpc:party:<name>``), then the provider."""
    return [role_uri("party", n) for n in names] + [role_uri("provider")]


def _insecure_warning(where: str) -> None:
    msg = (
        f"{where}: insecure=True: the run's links are plain TCP (gloo) without encryption or "
        "authentication. Anyone on the network path can read the dealer's per-party keys, "
        "the last party's correction shares, every masked opening and every revealed result "
        "(and so rebuild every secret), and anyone who reaches the rendezvous port can join "
        "or take a rank's place. Use credentials (smpc-credentials) to run over TLS."
    )
    warnings.warn(msg, InsecureTransportWarning, stacklevel=3)
    log.warning(msg)


def _no_credentials(rank: int, who: str, missing: Sequence[str]) -> CredentialsError:
    parties = (
        ",".join(m.split(":", 2)[2] for m in missing if m.startswith("smpc:party:")) or "alice,bob"
    )
    return CredentialsError(
        f"rank {rank} ({who}): the ranks run on several hosts and {list(missing)} have no "
        "credentials: a run across machines uses TLS with mutual authentication. Create a CA "
        f"and credentials with `smpc-credentials creds --parties {parties} --provider`, give "
        "each machine ca.pem and its role's .pem and .key, and pass credentials='creds' "
        "(smpc-launch --credentials creds, or SMPC_CREDENTIALS=creds); or pass insecure=True "
        "(--insecure) to send everything in plaintext"
    )


def choose_transport(
    store: Store,
    rank: int,
    size: int,
    requested: str,
    *,
    identities: Sequence[str],
    secure: bool,
    insecure: bool,
    loopback: bool,
) -> str:
    """The transport every rank will use: ``"unix"``, ``"tls"`` or ``"tcp"`` (one store round).

    Each rank publishes what it asked for, whether it holds credentials, whether
    it accepts plaintext (``insecure``) and its :func:`~smpc.comm.unixsock.host_id`.

    * ranks on one host: Unix sockets, unless a rank asked for ``tls`` or ``tcp``;
    * ranks on several hosts (or ``tls`` asked): TLS if every rank holds credentials;
      plain TCP (gloo) only if every rank passed ``insecure`` (with a warning);
      otherwise :class:`~smpc.credentials.CredentialsError` on every rank, saying
      how to create credentials;
    * ``tcp`` asked: gloo over TCP; across hosts, or with a rendezvous that is not
      on the loopback, only with ``insecure`` (a tampered store cannot make a rank
      that did not opt out send plaintext over the network).

    Raises:
        ValueError: ranks asked for different transports, or ``unix`` across hosts.
        CredentialsError: a run across hosts without credentials and without ``insecure``.
    """
    here = host_id() if unix_supported() else f"no-unix-sockets/{rank}"
    store.set(f"link/{rank}", f"{requested}|{int(secure)}|{int(insecure)}|{here}")
    asked, creds, plain, hosts = [], [], [], set()
    for r in range(size):
        mode, c, p, host = store.get(f"link/{r}").decode().split("|", 3)
        asked.append(mode)
        creds.append(c == "1")
        plain.append(p == "1")
        hosts.add(host)
    who = identities[rank]
    explicit = {a for a in asked if a != "auto"}
    if len(explicit) > 1:
        raise ValueError(f"the ranks asked for different transports: {asked}")
    mode = explicit.pop() if explicit else "auto"
    one_host = len(hosts) == 1
    if mode == "unix" or (mode == "auto" and one_host):
        if not one_host:
            raise ValueError(
                f"`transport` 'unix' needs every rank on one host; the ranks run on "
                f"{len(hosts)} hosts (asked: {asked})"
            )
        return "unix"
    if mode == "tcp":
        if not insecure and not (one_host and loopback):
            raise _no_credentials(rank, who, [who])
        if not (one_host and loopback):
            _insecure_warning(f"rank {rank} ({who})")
        return "tcp"
    # TLS asked, or ranks on several hosts
    if all(creds):
        return "tls"
    if mode == "auto" and all(plain):
        _insecure_warning(f"rank {rank} ({who})")
        return "tcp"
    missing = [identities[r] for r in range(size) if not creds[r]]
    raise _no_credentials(rank, who, missing)


def _gloo_device(addr: str, address: str | None) -> object:
    """The gloo device of this rank: from ``GLOO_SOCKET_IFNAME``, or the advertised address.

    torch's ``create_device()`` needs a host name or an interface (``ValueError``
    otherwise): ``GLOO_SOCKET_IFNAME`` (its first entry) names the interface;
    else ``address``; else ``127.0.0.1`` for a loopback rendezvous, or this
    host's address on the route to the rendezvous host (what the other ranks reach).
    """
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "").split(",")[0].strip()
    if ifname:
        return ProcessGroupGloo.create_device(interface=ifname)
    if address is None:
        address = "127.0.0.1" if _is_loopback(addr) else local_address(addr)
    return ProcessGroupGloo.create_device(hostname=address)


def connect(
    rank: int,
    size: int,
    *,
    store: Store | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout: float = 60.0,
    prefix: str = "smpc",
    host_store: bool | None = None,
    transport: str = "auto",
    identities: Sequence[str] | None = None,
    credentials: Credentials | str | os.PathLike[str] | None = None,
    insecure: bool = False,
    address: str | None = None,
    listen_port: int = 0,
) -> ProcessGroupGloo | UnixSocketGroup:
    """Join a group of ``size`` ranks (parties plus the provider) for point-to-point messages.

    Args:
        rank: this process's rank in ``[0, size)``.
        size: number of ranks.
        store: a rendezvous store; if ``None``, a TCP store at ``master_addr:master_port``
            (default ``MASTER_ADDR``/``MASTER_PORT`` from the environment), hosted by rank 0.
        master_addr: host of the TCP store.
        master_port: port of the TCP store.
        timeout: seconds to wait for the other ranks to join.
        prefix: key prefix in the store (lets several groups share one store).
        host_store: whether this process hosts the TCP store (default: rank 0 does).
        transport: ``"auto"`` (default): Unix sockets when every rank runs on this
            host (:class:`~smpc.comm.unixsock.UnixSocketGroup`), else TLS
            (:class:`~smpc.comm.tls.TlsSocketGroup`); ``"unix"``: Unix sockets
            (``ValueError`` if the ranks are on several hosts); ``"tls"``: TLS, also
            on one host; ``"tcp"``: gloo over plain TCP (across hosts only with
            ``insecure``). The ranks agree through the store (:func:`choose_transport`).
        identities: the role URI of every rank (default: parties ``party0..`` and the
            provider, :func:`identities_of`): what each TLS peer's certificate must name.
        credentials: this rank's TLS credentials: a folder made by ``smpc-credentials``
            or a :class:`~smpc.credentials.Credentials` (default: ``$SMPC_CREDENTIALS``).
        insecure: allow plain TCP across hosts without credentials (warns).
        address: the address this rank listens on and advertises (TLS, gloo); default:
            this host's address on the route to ``master_addr`` (``127.0.0.1`` on loopback).
        listen_port: the TCP port this rank listens on for TLS peers (default 0: any
            free port; fix it to open a firewall for it).

    Raises:
        PartyTimeoutError: the other ranks did not join within ``timeout``.
        CredentialsError: ranks on several hosts without credentials or ``insecure``.
    """
    if not 0 <= rank < size:
        raise ValueError(f"`rank` must be in [0, {size}); got {rank}")
    if transport not in TRANSPORTS:
        raise ValueError(f"`transport` must be one of {TRANSPORTS}; got {transport!r}")
    if not isinstance(insecure, bool):
        raise TypeError(f"`insecure` must be a bool; got {insecure!r}")
    if identities is None:
        identities = identities_of([f"party{i}" for i in range(size - 1)])
    if len(identities) != size:
        raise ValueError(f"`identities` must have {size} entries; got {len(identities)}")
    creds = resolve_credentials(credentials, identities[rank])
    # One deadline for the whole join: each step gets what is left of it.
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    given_store = store is not None
    addr = master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        if store is None:
            port = (
                master_port
                if master_port is not None
                else int(os.environ.get("MASTER_PORT", DEFAULT_PORT))
            )
            _check_resolves(addr, port, rank)
            is_master = rank == 0 if host_store is None else host_store
            if not is_master:  # torch's own connect retries for up to twice its timeout
                _wait_for_listener(addr, port, rank, deadline, timeout)
            store = TCPStore(
                addr, port, size, is_master, timeout=datetime.timedelta(seconds=left()),
                wait_for_workers=False,
            )  # fmt: skip
        store.set_timeout(datetime.timedelta(seconds=left()))
        pstore = PrefixStore(prefix, store)
        # a store passed in (smpc.run's file store) is on this host
        loopback = (given_store and master_addr is None) or _is_loopback(addr)
        chosen = choose_transport(
            pstore, rank, size, transport,
            identities=identities, secure=creds is not None, insecure=insecure,
            loopback=loopback,
        )  # fmt: skip
        store.set_timeout(datetime.timedelta(seconds=left()))
        if chosen == "unix":
            return UnixSocketGroup(pstore, rank, size, left())
        if chosen == "tls":
            assert creds is not None
            host = address or ("127.0.0.1" if loopback else local_address(addr))
            return TlsSocketGroup(
                pstore, rank, size, left(),
                credentials=creds, identities=identities, host=host, port=listen_port,
            )  # fmt: skip
        options = ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # not in the stubs
        options._timeout = datetime.timedelta(seconds=left())
        options._threads = 2
        options._devices = [_gloo_device("127.0.0.1" if loopback else addr, address)]
        return ProcessGroupGloo(pstore, rank, size, options)
    except RuntimeError as e:  # torch raises DistStoreError (a RuntimeError) on timeouts
        waited = timeout - (deadline - time.monotonic())
        raise PartyTimeoutError(
            f"rank {rank} ({identities[rank]}): the other {size - 1} ranks did not all join "
            f"through the rendezvous at {addr}:{_port_of(store, master_port)} within the join "
            f"timeout of {timeout:g} s (gave up after {waited:.1f} s): {e}"
        ) from e


def _port_of(store: Store | None, master_port: int | None) -> str:
    port = getattr(store, "port", None) or master_port or os.environ.get("MASTER_PORT")
    return str(port) if port else "(store)"


def _wait_for_listener(host: str, port: int, rank: int, deadline: float, timeout: float) -> None:
    """Wait until something listens at ``host:port`` (the rendezvous), within ``deadline``."""
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PartyTimeoutError(
                f"rank {rank}: nothing answered at the rendezvous {host}:{port} within the join "
                f"timeout of {timeout:g} s ({last}): a wrong MASTER_ADDR/MASTER_PORT, a "
                "firewall, or rank 0 did not start"
            )
        try:
            with socket.create_connection((host, port), timeout=min(left, 2.0)):
                return
        except OSError as e:  # refused (not listening yet), unreachable, timed out
            last = e
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _check_resolves(host: str, port: int, rank: int) -> None:
    """Fail at once, and say so, when the rendezvous host name does not resolve."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise PartyTimeoutError(
            f"rank {rank}: cannot resolve the rendezvous host {host!r} (MASTER_ADDR / "
            f"master_addr): {e}; check the name or use an IP address"
        ) from e


class Channel:
    """Framed, tagged point-to-point messages over a process group (shared by comm and dealer).

    Args:
        pg: the process group.
        rank: this process's rank.
        timeout: seconds a wait may take before :class:`PartyTimeoutError`.
        names: display names of ranks for error messages.
    """

    def __init__(
        self, pg: ProcessGroupGloo | PointToPoint, rank: int, timeout: float, names: Sequence[str]
    ) -> None:
        self.pg = cast(PointToPoint, pg)
        self.rank = rank
        self.timeout = timeout
        self.wait_timeout = datetime.timedelta(seconds=timeout)
        self.names = tuple(names)
        self.failed: SmpcError | None = None
        # The largest payload a peer may announce (checked before a buffer is allocated).
        self.max_message_bytes = MAX_MESSAGE_BYTES
        # Frame receives posted in advance, per peer (FIFO: gloo fills them in order).
        self._posted: dict[int, deque[tuple[Waitable, torch.Tensor]]] = {}

    def who(self, rank: int) -> str:
        """A display name for ``rank``."""
        name = self.names[rank] if rank < len(self.names) else f"rank {rank}"
        if rank == len(self.names) - 1 and name == "dealer":
            return f"the crypto provider 'dealer' (rank {rank})"
        return f"{name!r} (rank {rank})"

    def fail(self, peer: int, what: str, error: RuntimeError) -> PartyTimeoutError | ProtocolError:
        """Record a transport failure talking to ``peer``.

        A :class:`ProtocolError` when the peer sent a malformed or oversized
        message (the transport dropped it), else a :class:`PartyTimeoutError`.
        """
        text = str(error)
        low = text.lower()
        if "malformed" in low or "larger than the posted receive" in low:
            perr = ProtocolError(
                f"{self.who(self.rank)}: peer {self.who(peer)} broke the wire protocol during "
                f"{what}: {text}"
            )
            if self.failed is None:
                self.failed = perr
            return perr
        if "closed" in low or "reset" in low or "broken pipe" in low:
            why = "closed the connection (the process died or exited)"
        elif "timed out" in low or "timeout" in low:
            why = f"did not answer within {self.timeout} s"
        else:
            why = "failed"
        err = PartyTimeoutError(
            f"{self.who(self.rank)}: peer {self.who(peer)} {why} during {what}: {text}"
        )
        if self.failed is None:
            self.failed = err
        return err

    def wait(
        self, work: Waitable, peer: int, what: str, *, timeout: datetime.timedelta | None = None
    ) -> None:
        """Wait for one posted send or receive; failures become :class:`PartyTimeoutError`."""
        try:
            work.wait(timeout or self.wait_timeout)
        except RuntimeError as e:
            raise self.fail(peer, what, e) from e

    def check(self) -> None:
        """Raise if an earlier step failed (the message stream is then unusable)."""
        if self.failed is not None:
            raise type(self.failed)(f"the runtime failed earlier: {self.failed}")

    @staticmethod
    def _frame(
        seq: int, kind: MessageKind, nbytes: int, aux: int, inline: bool, sizes: Sequence[int] = ()
    ) -> torch.Tensor:
        """A frame with its head filled, with room for ``nbytes`` of payload if ``inline``."""
        words = HEAD_NUMEL + ((nbytes + 7) // 8 if inline else 0)
        frame = torch.empty(words, dtype=torch.int64)
        head = [seq, int(kind), nbytes, aux, int(inline), len(sizes), *sizes[:MAX_PARTS]]
        frame.numpy()[: len(head)] = head  # a few µs less than a torch.tensor per message
        return frame

    @staticmethod
    def frame_payload(frame: torch.Tensor, nbytes: int) -> torch.Tensor:
        """The inline payload of a frame, as ``nbytes`` uint8 (a view)."""
        return frame[HEAD_NUMEL:].view(torch.uint8)[:nbytes]

    def send(
        self,
        dst: int,
        seq: int,
        kind: MessageKind,
        payload: torch.Tensor | None,
        aux: int = 0,
        sizes: Sequence[int] = (),
    ) -> Pending:
        """Post one message to ``dst``; return the works to wait for (with the kept-alive buffers).

        ``sizes``: byte sizes of parts concatenated in ``payload``, recorded in the
        head (with their digest as ``aux``) for :meth:`check_parts`.

        A payload of at most ``INLINE_BYTES`` travels inside the frame (one message,
        a copy); a larger one follows on the payload tag, as is. The caller must keep
        ``payload`` unchanged until the works complete.
        """
        nbytes = 0 if payload is None else payload.numel() * payload.element_size()
        inline = nbytes <= INLINE_BYTES
        if sizes:
            aux = _digest(sizes)
        frame = self._frame(seq, kind, nbytes, aux, inline, sizes)
        if nbytes and inline:
            assert payload is not None
            self.frame_payload(frame, nbytes).copy_(payload.reshape(-1).view(torch.uint8))
        try:
            works: Pending = [self.pg.send([frame], dst, TAG_HEADER), frame]
            if not inline:
                assert payload is not None and payload.is_contiguous()
                works += [self.pg.send([payload], dst, TAG_PAYLOAD), payload]
        except RuntimeError as e:
            raise self.fail(dst, f"sending message #{seq} ({kind.name})", e) from e
        return works

    def send_frame(self, dst: int, frame: torch.Tensor) -> Pending:
        """Post a frame built by :meth:`inline_frame` (payload already in place)."""
        try:
            return [self.pg.send([frame], dst, TAG_HEADER), frame]
        except RuntimeError as e:
            raise self.fail(dst, f"sending message #{int(frame[0])}", e) from e

    def inline_frame(
        self, seq: int, kind: MessageKind, nbytes: int, sizes: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame for ``nbytes <= INLINE_BYTES`` of payload and its uint8 payload view.

        ``sizes``: the byte sizes of the parts packed in the payload, recorded in
        the head for :meth:`check_parts`. The caller writes the payload into the
        view (no extra copy), then sends the frame to every peer with :meth:`send_frame`.
        """
        assert nbytes <= INLINE_BYTES
        frame = self._frame(seq, kind, nbytes, _digest(sizes), True, sizes)
        return frame, self.frame_payload(frame, nbytes)

    def send_parts(
        self, dst: int, seq: int, kind: MessageKind, parts: Sequence[torch.Tensor]
    ) -> Pending:
        """Post a head listing the parts' byte sizes, then each part as is (zero-copy).

        For large multi-tensor messages: no concatenation copy.
        """
        sizes = [p.numel() * p.element_size() for p in parts]
        assert len(sizes) <= MAX_PARTS
        frame = self._frame(seq, kind, sum(sizes), _digest(sizes), False, sizes)
        try:
            works: Pending = [self.pg.send([frame], dst, TAG_HEADER), frame]
            for part, size in zip(parts, sizes, strict=True):
                if size:
                    works += [self.pg.send([part], dst, TAG_PAYLOAD), part]
        except RuntimeError as e:
            raise self.fail(dst, f"sending message #{seq} ({kind.name})", e) from e
        return works

    def check_parts(
        self, header: torch.Tensor, src: int, seq: int, sizes: Sequence[int], what: str
    ) -> None:
        """Check that a head announces parts of exactly ``sizes`` bytes (count, sizes, digest)."""
        k = len(sizes)
        h = header.numpy()  # numpy reads: a fraction of a µs each, torch's cost more
        n = int(h[5])
        got = h[6 : 6 + min(max(n, 0), MAX_PARTS)].tolist()
        if n != k or got != list(sizes[:MAX_PARTS]) or int(h[3]) != _digest(sizes):
            self.failed = err = ProtocolDesyncError(
                f"{self.who(self.rank)} expected parts of {list(sizes)} bytes in message "
                f"#{seq} ({what}) from {self.who(src)}, got {got}: the parties' shapes differ"
            )
            raise err

    def recv_part(self, src: int, buf: torch.Tensor) -> Waitable:
        """Post the receive of ``src``'s next payload part into ``buf`` (its exact size)."""
        try:
            return self.pg.recv([buf], src, TAG_PAYLOAD)
        except RuntimeError as e:
            raise self.fail(src, "posting a receive", e) from e

    def _post_header(self, src: int) -> tuple[Waitable, torch.Tensor]:
        frame = torch.empty(FRAME_BYTES // 8, dtype=torch.int64)
        try:
            return self.pg.recv([frame], src, TAG_HEADER), frame
        except RuntimeError as e:
            raise self.fail(src, "posting a receive", e) from e

    def take_header(
        self, src: int, what: str, *, timeout: datetime.timedelta | None = None
    ) -> torch.Tensor:
        """Wait for ``src``'s next frame.

        ``POSTED_FRAMES`` frame receives stay posted per peer, so that a peer's next
        messages land in waiting buffers instead of a send/receive handshake. They
        are re-posted in batches: each posted receive sends the peer a notification
        that wakes its gloo thread, and a batch is handled in one wake-up.
        """
        queue = self._posted.setdefault(src, deque())
        if not queue:
            self._post_frames(src, queue, POSTED_FRAMES)
        work, header = queue.popleft()
        self.wait(work, src, what, timeout=timeout)
        if int(header.numpy()[1]) != MessageKind.CLOSE and len(queue) < POSTED_FRAMES // 2:
            self._post_frames(src, queue, POSTED_FRAMES - len(queue))
        return header

    def _post_frames(
        self, src: int, queue: deque[tuple[Waitable, torch.Tensor]], count: int
    ) -> None:
        for _ in range(count):
            queue.append(self._post_header(src))

    def check_header(
        self,
        header: torch.Tensor,
        src: int,
        seq: int,
        kind: MessageKind,
        nbytes: int | None,
        what: str,
    ) -> tuple[int, int]:
        """Validate a received header; return its ``(nbytes, aux)``.

        A peer's ERROR frame (it gave up, see :meth:`TorchDistCommunicator.abort`)
        raises :class:`PartyTimeoutError` with the peer's own reason, so that the
        root cause (e.g. the provider died) reaches every party.
        """
        got_seq, got_kind, got_nbytes, aux = header.numpy()[:4].tolist()
        if got_kind == MessageKind.ERROR and kind is not MessageKind.ERROR:
            reason = "no reason given"
            if int(header.numpy()[4]) and 0 < got_nbytes <= ABORT_REASON_BYTES:
                raw = self.frame_payload(header, got_nbytes).numpy().tobytes()
                reason = raw.decode("utf-8", errors="replace")
            self.failed = perr = PartyTimeoutError(
                f"{self.who(self.rank)}: peer {self.who(src)} gave up while this party waited "
                f"for message #{seq} ({what}); its reason: {reason}"
            )
            raise perr
        if got_seq != seq or got_kind != int(kind):
            try:
                got = MessageKind(got_kind).name
            except ValueError:
                got = f"kind {got_kind}"
            closing = " (it closed its session)" if got_kind == MessageKind.CLOSE else ""
            self.failed = err = ProtocolDesyncError(
                f"{self.who(self.rank)} expected message #{seq} ({kind.name}, {what}) from "
                f"{self.who(src)}, got #{got_seq} ({got}){closing}: the parties run "
                "different programs or different op orders"
            )
            raise err
        if nbytes is not None and got_nbytes != nbytes:
            self.failed = err = ProtocolDesyncError(
                f"{self.who(self.rank)} expected {nbytes} payload bytes in message #{seq} "
                f"({what}) from {self.who(src)}, got {got_nbytes}: the parties' shapes differ"
            )
            raise err
        return got_nbytes, aux

    def payload(
        self,
        header: torch.Tensor,
        src: int,
        nbytes: int,
        buf: torch.Tensor | None = None,
        *,
        keep: bool = False,
    ) -> tuple[Waitable | None, torch.Tensor]:
        """The payload announced by ``header``, as ``nbytes`` uint8.

        Inline payloads are a view of the frame (no wait: ``work`` is ``None``),
        copied out if ``keep`` (the caller holds on to it: a view would keep the
        whole 1 MiB frame alive) when small; otherwise its receive is posted into ``buf``
        (default: a fresh buffer) and ``work`` must be waited for.
        """
        if int(header.numpy()[4]):
            if not 0 <= nbytes <= INLINE_BYTES:
                self.failed = err = ProtocolDesyncError(
                    f"{self.who(self.rank)}: {self.who(src)} sent an inline payload of "
                    f"{nbytes} bytes, more than a frame holds ({INLINE_BYTES})"
                )
                raise err
            view = self.frame_payload(header, nbytes)
            # A small kept payload is copied out: its view would pin the whole frame.
            return None, view.clone() if keep and nbytes < FRAME_BYTES // 4 else view
        if buf is None:
            try:  # a peer's length field is checked before anything is allocated
                check_length(nbytes, self.max_message_bytes, peer=self.who(src), what="a payload")
            except ProtocolError as e:
                self.failed = e
                raise
            buf = torch.empty(nbytes, dtype=torch.uint8)
        try:
            return self.pg.recv([buf], src, TAG_PAYLOAD), buf
        except RuntimeError as e:
            raise self.fail(src, "posting a receive", e) from e

    def recv(
        self,
        src: int,
        seq: int,
        kind: MessageKind,
        what: str,
        *,
        timeout: datetime.timedelta | None = None,
        accept: tuple[MessageKind, ...] = (),
    ) -> tuple[MessageKind, torch.Tensor, int]:
        """Receive one whole message: ``(kind, uint8 payload, aux)``.

        ``accept`` lists other kinds taken instead of ``kind`` (e.g. CLOSE or ERROR).
        """
        header = self.take_header(src, what, timeout=timeout)
        got_kind = int(header.numpy()[1])
        if got_kind in {int(k) for k in accept}:
            kind = MessageKind(got_kind)
        nbytes, aux = self.check_header(header, src, seq, kind, None, what)
        work, data = self.payload(header, src, nbytes, keep=True)
        if work is not None:
            self.wait(work, src, what)
        return kind, data, aux

    def wait_all(
        self,
        works: Pending,
        peer: int,
        what: str,
        *,
        timeout: datetime.timedelta | None = None,
    ) -> None:
        """Wait for sends posted by :meth:`send` (skipping the kept-alive tensors)."""
        for w in works:
            if not isinstance(w, torch.Tensor):
                self.wait(w, peer, what, timeout=timeout)


def _digest(sizes: Sequence[int]) -> int:
    """A checksum of a message's part sizes (the head lists only the first MAX_PARTS)."""
    return _digest_of(tuple(sizes))


@functools.lru_cache(maxsize=1024)  # a program opens the same few layouts again and again
def _digest_of(sizes: tuple[int, ...]) -> int:
    return zlib.crc32(b",".join(str(v).encode() for v in sizes))


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _layout(shares: Sequence[torch.Tensor]) -> tuple[list[int], list[int], int]:
    """Byte sizes, 8-aligned offsets and total size of shares packed in one payload."""
    sizes = [s.numel() * s.element_size() for s in shares]
    offsets = []
    total = 0
    for nb in sizes:
        offsets.append(total)
        total = _align8(total + nb)
    return sizes, offsets, total


# Integer ring shares go through numpy views on the inline path (wrap-around sums).
_NUMPY_DTYPES = frozenset({torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8})


def _numpy_ok(t: torch.Tensor) -> bool:
    return t.dtype in _NUMPY_DTYPES and t.device.type == "cpu"


def _as_bytes_view(buf: torch.Tensor, offset: int, t: torch.Tensor) -> torch.Tensor:
    """``buf[offset : offset + t.nbytes]`` viewed with ``t``'s dtype and shape."""
    nb = t.numel() * t.element_size()
    return buf[offset : offset + nb].view(t.dtype).view(t.shape)


class TorchDistCommunicator:
    """This party's endpoint of the distributed runtime (gloo over TCP).

    Args:
        rank: this party's index in ``[0, world_size)``.
        world_size: number of computing parties (the process group has one more
            rank, ``world_size``, for the crypto provider).
        store: rendezvous store; default: a TCP store at ``master_addr:master_port``
            (``MASTER_ADDR``/``MASTER_PORT`` from the environment), hosted by rank 0.
        master_addr: host of the TCP store.
        master_port: port of the TCP store.
        timeout: seconds to wait for a peer before :class:`PartyTimeoutError`.
        names: party names for error messages (default ``party0, party1, ...``).
        prefix: key prefix in the store.
        host_store: whether this process hosts the TCP store (default: rank 0 does).
        join_timeout: seconds to wait for every rank to join (default ``max(timeout, 60)``:
            processes may start seconds apart).
        pg: an already joined process group (``store`` etc. are then ignored).
        transport: ``"auto"``, ``"unix"``, ``"tls"`` or ``"tcp"`` (see :func:`connect`):
            by default Unix sockets when every rank runs on this host, TLS otherwise.
        credentials: this party's TLS credentials (a folder made by
            ``smpc-credentials``, or :class:`~smpc.credentials.Credentials`; default
            ``$SMPC_CREDENTIALS``); needed when the ranks run on several hosts.
        insecure: across hosts without credentials, use plain TCP (gloo); warns.
        address: the address this party listens on and advertises (see :func:`connect`).
        listen_port: the TCP port this party listens on for TLS peers (default: any).

    Example:
        >>> comm = TorchDistCommunicator(
        ...     0, 2, master_addr="10.0.0.1", master_port=29533, credentials="creds"
        ... )
        >>> sess = smpc.Session(("alice", "bob"), comm=comm, dealer=TrustedDealerClient(comm))
    """

    party_axis = False

    def __init__(
        self,
        rank: int,
        world_size: int,
        *,
        store: Store | None = None,
        master_addr: str | None = None,
        master_port: int | None = None,
        timeout: float = 60.0,
        names: Sequence[str] | None = None,
        prefix: str = "smpc",
        host_store: bool | None = None,
        join_timeout: float | None = None,
        pg: ProcessGroupGloo | PointToPoint | None = None,
        transport: str = "auto",
        credentials: Credentials | str | os.PathLike[str] | None = None,
        insecure: bool = False,
        address: str | None = None,
        listen_port: int = 0,
    ) -> None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
            raise ValueError(f"`world_size` must be an int >= 2; got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, {world_size}); got {rank!r}")
        if timeout <= 0:
            raise ValueError(f"`timeout` must be > 0 seconds; got {timeout}")
        self.rank: int | None = rank
        self._rank = rank
        self.world_size = world_size
        self.dealer_rank = world_size
        self.timeout = float(timeout)
        self.stats = Stats(world_size=world_size)
        self.received_meta: int | None = None
        if names is None:
            names = [f"party{i}" for i in range(world_size)]
        if len(names) != world_size:
            raise ValueError(f"`names` must have {world_size} entries; got {len(names)}")
        if pg is None:
            pg = connect(
                rank,
                world_size + 1,
                store=store,
                master_addr=master_addr,
                master_port=master_port,
                timeout=max(timeout, 60.0) if join_timeout is None else join_timeout,
                prefix=prefix,
                host_store=host_store,
                transport=transport,
                identities=identities_of(names),
                credentials=credentials,
                insecure=insecure,
                address=address,
                listen_port=listen_port,
            )
        self.channel = Channel(pg, rank, self.timeout, [*names, "dealer"])
        self._peers = [p for p in range(world_size) if p != rank]
        self._seq = 0
        self._closed = False
        self._send_buf = torch.empty(0, dtype=torch.uint8)
        self._recv_bufs: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------------- helpers
    def _next(self) -> int:
        if self._closed:
            raise SessionClosedError("the session is closed; create a new Session")
        self.channel.check()
        self._seq += 1
        return self._seq

    def _buffer(self, current: torch.Tensor, nbytes: int) -> torch.Tensor:
        if current.numel() < nbytes:
            current = torch.empty(max(nbytes, current.numel() * 5 // 4), dtype=torch.uint8)
        return current

    def _recv_buffer(self, peer: int, nbytes: int) -> torch.Tensor:
        buf = self._buffer(self._recv_bufs.get(peer, torch.empty(0, dtype=torch.uint8)), nbytes)
        self._recv_bufs[peer] = buf
        return buf[:nbytes]

    def _exchange(
        self,
        seq: int,
        kind: MessageKind,
        payload: torch.Tensor | None,
        dsts: Sequence[int],
        srcs: Sequence[int],
        nbytes: int,
        what: str,
        *,
        frame: torch.Tensor | None = None,
        sizes: Sequence[int] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Send ``payload`` to ``dsts`` and receive ``nbytes`` from each of ``srcs``, concurrently.

        ``frame``: a ready inline frame (from :meth:`Channel.inline_frame`) to send
        instead of ``payload``; ``sizes``: the part sizes to check in received heads.
        Returns uint8 views that stay valid until the next call.
        """
        ch = self.channel
        if frame is not None:  # an inline frame with the payload already in place
            sends = {p: ch.send_frame(p, frame) for p in dsts}
        else:
            sends = {p: ch.send(p, seq, kind, payload, sizes=sizes or ()) for p in dsts}
        got: dict[int, torch.Tensor] = {}
        works = []
        for p in srcs:
            header = ch.take_header(p, what)
            ch.check_header(header, p, seq, kind, nbytes, what)
            if sizes is not None:
                ch.check_parts(header, p, seq, sizes, what)
            buf = self._recv_buffer(p, nbytes) if nbytes > INLINE_BYTES else None
            work, got[p] = ch.payload(header, p, nbytes, buf)
            if work is not None:
                works.append((p, work))
        for p, work in works:
            ch.wait(work, p, what)
        for p, w in sends.items():
            ch.wait_all(w, p, what)
        return got

    # ----------------------------------------------------------------- Communicator
    def open_masked(
        self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], label: str
    ) -> list[torch.Tensor]:
        if all(_numpy_ok(x) and x.dtype == m.dtype and x.shape == m.shape for x, m in pairs):
            sizes, offsets, total = _layout([x for x, _ in pairs])
            if total <= INLINE_BYTES:  # x - m written straight into the frame
                return self._open_inline(pairs, sizes, offsets, total, label)
        return self.open([x - m for x, m in pairs], label)

    def open(self, shares: Sequence[torch.Tensor], label: str) -> list[torch.Tensor]:
        """Reconstruct several shared values to every party in one round.

        Cost: 1 round; each share is sent to each of the other ``world_size - 1``
        parties. All of the call's shares go in one message per peer when they fit
        in a frame (1 MiB); larger ones follow a head without being concatenated
        (no copy).
        """
        sizes, offsets, total = _layout(shares)
        if total <= INLINE_BYTES and all(_numpy_ok(x) for x in shares):
            return self._open_inline([(x, None) for x in shares], sizes, offsets, total, label)
        seq = self._next()
        what = f"open #{seq} ({label!r})"
        if total > INLINE_BYTES and len(shares) <= MAX_PARTS:
            got = self._exchange_parts(seq, shares, sizes, offsets, total, what)
        elif total <= INLINE_BYTES:  # one frame per peer, the shares copied into it once
            frame, payload = self.channel.inline_frame(seq, MessageKind.OPEN, total, sizes)
            for s, off in zip(shares, offsets, strict=True):
                _as_bytes_view(payload, off, s).copy_(s)
            got = self._exchange(
                seq, MessageKind.OPEN, None, self._peers, self._peers, total, what,
                frame=frame, sizes=sizes,
            )  # fmt: skip
        else:
            self._send_buf = self._buffer(self._send_buf, total)
            payload = self._send_buf[:total]
            for s, off in zip(shares, offsets, strict=True):
                _as_bytes_view(payload, off, s).copy_(s)
            got = self._exchange(
                seq, MessageKind.OPEN, payload, self._peers, self._peers, total, what,
                sizes=sizes,
            )  # fmt: skip
        out = []
        for s, off in zip(shares, offsets, strict=True):
            acc: torch.Tensor | None = None
            for p in self._peers:
                peer = _as_bytes_view(got[p], off, s)
                acc = s + peer if acc is None else acc.add_(peer)
            out.append(acc if acc is not None else s.clone())
        self.stats.record(label, {self._rank: sum(sizes) * (self.world_size - 1)})
        return out

    def _open_inline(
        self,
        items: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
        sizes: list[int],
        offsets: list[int],
        total: int,
        label: str,
    ) -> list[torch.Tensor]:
        """:meth:`open` of ``x`` (or ``x - m``) for payloads that fit in one frame.

        The same messages as the general path; the frame is filled and the sums
        formed through numpy views (a fraction of the per-call cost of torch ops on
        small tensors, which dominates a round's CPU time here).
        """
        seq = self._next()
        what = f"open #{seq} ({label!r})"
        frame = self.channel._frame(seq, MessageKind.OPEN, total, _digest(sizes), True, sizes)
        body = frame.numpy().view(np.uint8)[HEAD_BYTES:]
        mine = []
        for (x, m), off, nb in zip(items, offsets, sizes, strict=True):
            xn = x.numpy()
            dst = body[off : off + nb].view(xn.dtype).reshape(xn.shape)
            if m is None:
                dst[...] = xn
            else:
                np.subtract(xn, m.numpy(), out=dst)
            mine.append(dst)
        got = self._exchange(
            seq, MessageKind.OPEN, None, self._peers, self._peers, total, what,
            frame=frame, sizes=sizes,
        )  # fmt: skip
        peers = [got[p].numpy() for p in self._peers]
        out = []
        for dst, off, nb in zip(mine, offsets, sizes, strict=True):
            acc: np.ndarray | None = None
            for peer in peers:  # the first sum fills a fresh array, the others add in place
                view = peer[off : off + nb].view(dst.dtype).reshape(dst.shape)
                if acc is None:
                    acc = np.add(dst, view, out=np.empty_like(dst))
                else:
                    np.add(acc, view, out=acc)
            out.append(torch.from_numpy(dst.copy() if acc is None else acc))
        self.stats.record(label, {self._rank: sum(sizes) * (self.world_size - 1)})
        return out

    def _exchange_parts(
        self,
        seq: int,
        shares: Sequence[torch.Tensor],
        sizes: list[int],
        offsets: list[int],
        total: int,
        what: str,
    ) -> dict[int, torch.Tensor]:
        """Open's exchange for large payloads: each share sent as is, received in place."""
        ch = self.channel
        parts = [s.contiguous().view(-1) for s in shares]
        sends = {p: ch.send_parts(p, seq, MessageKind.OPEN, parts) for p in self._peers}
        got: dict[int, torch.Tensor] = {}
        works = []
        for p in self._peers:
            header = ch.take_header(p, what)
            ch.check_header(header, p, seq, MessageKind.OPEN, sum(sizes), what)
            ch.check_parts(header, p, seq, sizes, what)
            buf = got[p] = self._recv_buffer(p, total)
            for off, nb in zip(offsets, sizes, strict=True):
                if nb:
                    works.append((p, ch.recv_part(p, buf[off : off + nb])))
        for p, work in works:
            ch.wait(work, p, what)
        for p, w in sends.items():
            ch.wait_all(w, p, what)
        return got

    def reveal_to(self, share: torch.Tensor, dst: int, label: str) -> torch.Tensor | None:
        """Reconstruct to party ``dst`` only; the others get ``None``. 1 round."""
        if not 0 <= dst < self.world_size:
            raise ValueError(f"`dst` must be in [0, {self.world_size}); got {dst}")
        seq = self._next()
        share = share.contiguous()
        nb = share.numel() * share.element_size()
        what = f"reveal #{seq} to {self.channel.who(dst)} ({label!r})"
        if self._rank == dst:
            got = self._exchange(seq, MessageKind.REVEAL, None, (), self._peers, nb, what)
            acc = share.clone()
            for p in self._peers:
                if nb:
                    acc.add_(got[p].view(share.dtype).view(share.shape))
            out: torch.Tensor | None = acc
        else:
            self._exchange(seq, MessageKind.REVEAL, share if nb else None, (dst,), (), nb, what)
            out = None
        self.stats.record(label, {self._rank: 0 if self._rank == dst else nb})
        return out

    def share_from(
        self,
        shares: torch.Tensor | None,
        src: int,
        shape: tuple[int, ...] | None,
        label: str,
        *,
        meta: int | None = None,
    ) -> torch.Tensor:
        """Distribute input shares from party ``src`` (row ``j`` of ``shares`` to party ``j``).

        The shape, then ``meta`` if given, travel in front of the payload (not
        counted); a receiver that passes ``shape`` checks it and finds ``meta`` in
        :attr:`received_meta`. Cost: 1 round, ``world_size - 1`` shares sent by ``src``.
        """
        if not 0 <= src < self.world_size:
            raise ValueError(f"`src` must be in [0, {self.world_size}); got {src}")
        seq = self._next()
        what = f"share #{seq} from {self.channel.who(src)} ({label!r})"
        ch = self.channel
        if self._rank == src:
            if shares is None or shares.dim() < 1 or shares.shape[0] != self.world_size:
                raise ValueError(
                    f"`shares` must be stacked shares with a leading axis of size "
                    f"{self.world_size} on the source party; got "
                    f"{None if shares is None else tuple(shares.shape)}"
                )
            if shares.dtype != torch.int64:
                raise TypeError(f"`shares` must be int64 ring shares; got {shares.dtype}")
            data_shape = tuple(shares.shape[1:])
            numel = shares[0].numel()
            prefix = [len(data_shape), *data_shape, *(() if meta is None else (int(meta),))]
            sends = {}
            for p in self._peers:
                msg = torch.empty(len(prefix) + numel, dtype=torch.int64)
                msg[: len(prefix)] = torch.tensor(prefix, dtype=torch.int64)
                msg[len(prefix) :].view(data_shape).copy_(shares[p])
                sends[p] = ch.send(p, seq, MessageKind.SHARE, msg, aux=len(prefix))
            for p, works in sends.items():
                ch.wait_all(works, p, what)
            out = shares[self._rank].clone()
            self.stats.record(label, {self._rank: numel * 8 * (self.world_size - 1)})
            return out
        _, raw, aux = ch.recv(src, seq, MessageKind.SHARE, what)
        msg = raw.view(torch.int64)
        ndim = int(msg[0])
        got_shape = tuple(int(v) for v in msg[1 : 1 + ndim].tolist())
        self.received_meta = int(msg[1 + ndim]) if aux > 1 + ndim else None
        if shape is not None and tuple(shape) != got_shape:
            raise ProtocolDesyncError(
                f"{ch.who(self._rank)} expected a share of shape {tuple(shape)} from "
                f"{ch.who(src)}, got {got_shape}"
            )
        self.stats.record(label, {self._rank: 0})
        return msg[aux:].view(got_shape)

    def broadcast_object(self, obj: object, src: int, label: str) -> object:
        """Send a small object from ``src`` to every party (not counted as payload).

        ``obj`` is made of plain values (None, bool, int, float, str, bytes,
        tuples, lists, dicts) and tensors, encoded by :mod:`smpc.codec`: nothing
        received is unpickled, and a malformed message raises
        :class:`~smpc.errors.ProtocolError` naming the sender.
        """
        if not 0 <= src < self.world_size:
            raise ValueError(f"`src` must be in [0, {self.world_size}); got {src}")
        seq = self._next()
        what = f"broadcast #{seq} from {self.channel.who(src)} ({label!r})"
        ch = self.channel
        if self._rank == src:
            data = OBJECT_CODEC.encode(obj)
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else None
            sends = {p: ch.send(p, seq, MessageKind.OBJECT, payload) for p in self._peers}
            for p, works in sends.items():
                ch.wait_all(works, p, what)
            return obj
        _, raw, _ = ch.recv(src, seq, MessageKind.OBJECT, what)
        try:
            return OBJECT_CODEC.decode(raw.numpy().tobytes(), peer=f"party {ch.who(src)}")
        except ProtocolError as e:
            ch.failed = e
            raise

    def barrier(self) -> None:
        """Wait until every party reaches this point (one empty message to each peer)."""
        seq = self._next()
        self._exchange(
            seq, MessageKind.BARRIER, None, self._peers, self._peers, 0, f"barrier #{seq}"
        )

    def _tell_peers(self, reason: str) -> None:
        ch = self.channel
        text = f"{ch.who(self._rank)}: {reason}".encode()[:ABORT_REASON_BYTES]
        payload = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        sends = []
        for p in self._peers:
            with contextlib.suppress(PartyTimeoutError, ProtocolError, RuntimeError):
                sends.append((p, ch.send(p, self._seq + 1, MessageKind.ERROR, payload)))
        grace = datetime.timedelta(seconds=min(1.0, self.timeout))
        for p, works in sends:
            with contextlib.suppress(PartyTimeoutError, ProtocolError, RuntimeError):
                ch.wait_all(works, p, "telling a peer why this party gives up", timeout=grace)

    def close(self) -> None:
        """Say goodbye to every peer (so no one exits with data in flight), then release.

        Never raises for a peer that is already gone: :meth:`close` runs on error paths too.
        """
        if self._closed:
            return
        if self.channel.failed is None:
            seq = self._seq + 1
            with contextlib.suppress(PartyTimeoutError, ProtocolDesyncError):
                self._exchange(seq, MessageKind.CLOSE, None, self._peers, self._peers, 0, "close")
        self.abort()

    def abort(self, reason: str | None = None) -> None:
        """Release without synchronising with the peers (after an error).

        ``reason``: why this party gives up; sent first (best effort, at most a
        second per peer) to every other party, which then raises
        :class:`PartyTimeoutError` quoting it instead of seeing only a closed
        connection (so a party whose provider died tells the others so).
        """
        if reason is not None and not self._closed:
            self._tell_peers(reason)
        self._closed = True
        self._send_buf = torch.empty(0, dtype=torch.uint8)
        self._recv_bufs.clear()
        if isinstance(self.channel.pg, UnixSocketGroup):  # gloo's group closes at exit
            self.channel.pg.close()

"""Distributed runtime: one OS process per party, over torch.distributed (runtime layer).

Each party runs the same protocol code as in the simulation, holding only its
own share (``party_axis = False``). Parties talk point to point in a process
group whose ranks are ``0 .. world_size - 1`` for the computing parties and
``world_size`` for the crypto provider (see :mod:`smpc.dealer.trusted`),
joined by :func:`~smpc.comm.rendezvous.connect` (Unix sockets on one host, TLS
1.3 across hosts, gloo over TCP on request); messages are the frames of
:mod:`smpc.comm.framing`.

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
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch._C._distributed_c10d import ProcessGroupGloo, Store

from ..codec import Codec
from ..credentials import Credentials
from ..errors import PartyTimeoutError, ProtocolDesyncError, ProtocolError, SessionClosedError
from .framing import (
    ABORT_REASON_BYTES,
    HEAD_BYTES,
    INLINE_BYTES,
    MAX_PARTS,
    Channel,
    MessageKind,
    PointToPoint,
    _digest,
    zero_padding,
)
from .rendezvous import DEFAULT_PORT, TRANSPORTS, connect, identities_of
from .stats import Stats
from .unixsock import UnixSocketGroup

__all__ = [
    "TorchDistCommunicator",
    "MessageKind",
    "Channel",
    "connect",
    "DEFAULT_PORT",
    "TRANSPORTS",
]

# Objects of broadcast_object: plain values and tensors, no classes (smpc.codec).
OBJECT_CODEC = Codec()


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
        self.holds_party0 = rank == 0
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
    def party0_share(self, share: torch.Tensor) -> torch.Tensor | None:
        return share if self.holds_party0 else None

    def other_shares(self, share: torch.Tensor) -> torch.Tensor | None:
        return None if self.holds_party0 else share

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
            zero_padding(payload.numpy(), sizes)  # no stale bytes between the parts
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

"""Tagged point-to-point messages between hosts over TLS 1.3 with mutual authentication.

The distributed runtime's transport across machines (and, on request, on one
host: ``transport="tls"``). It is the Unix-socket transport
(:class:`~smpc.comm.unixsock.UnixSocketGroup`) with TCP sockets wrapped in TLS
(Python's :mod:`ssl`, OpenSSL): the same wire format (a 16-byte head
``[tag, nbytes]`` then the payload, inside TLS records), the same
progress (non-blocking sockets, every ``wait`` pumps every peer, ``poll`` when
nothing moves), the same ``send``/``recv`` calls as a gloo group -- plus one
writer thread that flushes queued sends while the caller computes (a TCP
socket takes only a few MiB at once; without it a large message would move
only when its sender next waits). A lock serialises every use of the sockets.
Received payloads are decrypted straight into the posted receive buffers
(``recv_into``); a small message is written as one TLS record (head and
payload joined), a large one as its head and then the payload in place.

Authentication. Every rank holds a key and a certificate from the session CA
(:mod:`smpc.credentials`, ``smpc-credentials``). Setup: each rank listens on a
TCP port, publishes ``host:port`` in the rendezvous store (no secret: the store
may be readable by anyone), connects to every lower rank and accepts every
higher one. A connection is kept only if the TLS 1.3 handshake verifies the
peer's certificate against the CA (both directions) *and* the certificate names
the role of the rank it stands for (``smpc:party:<name>``, ``smpc:provider``):
a connection from a stranger -- no certificate, another CA's, or a valid
certificate of another role -- is refused and logged (logger
``smpc.comm.tls``), and the rank keeps waiting for the real peer. A rank
whose published address answers with the wrong certificate is an error (the
store was tampered with). Listening ends once every peer has connected.

Ciphers: TLS 1.3 only (AES-GCM with AES-NI by default; OpenSSL picks); no
session tickets. Cost: the handshake once per link at setup (an ECDHE and two
ECDSA signatures), then a 22-byte record header per 16 KiB and AES-GCM over
the payload.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import cast

import torch
from torch._C._distributed_c10d import Store

from ..credentials import Credentials, peer_identity
from .unixsock import UnixSocketGroup, UnixWork, _Peer

__all__ = ["TlsSocketGroup", "local_address"]

log = logging.getLogger(__name__)

# A message up to this size is joined with its head into one TLS record (a copy;
# fewer records, encryptions and system calls).
_JOIN_BYTES = 16 << 10
# Seconds a connecting stranger may take for its handshake before it is dropped.
_HANDSHAKE_S = 5.0


def local_address(remote: str) -> str:
    """The address of this host on the route to ``remote`` (no packet is sent).

    For a rank to advertise: the other ranks reach this host the way this host
    reaches the rendezvous host. ``127.0.0.1`` for a loopback ``remote``.
    """
    try:
        infos = socket.getaddrinfo(remote, 9, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve the rendezvous host {remote!r}: {e}") from e
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(sockaddr)
        except OSError as e:
            raise ValueError(f"no route from this host to {remote!r}: {e}") from e
        return str(s.getsockname()[0])


class TlsSocketGroup(UnixSocketGroup):
    """Tagged point-to-point messages among ``size`` ranks over mutually authenticated TLS.

    Args:
        store: the rendezvous store (keys ``tls/<rank>``: ``host:port``).
        rank: this process's rank in ``[0, size)``.
        size: number of ranks.
        timeout: seconds to wait for the other ranks during setup.
        credentials: this rank's credentials (their ``uri`` must be ``identities[rank]``).
        identities: the role URI of every rank (what each peer's certificate must name).
        host: the address to listen on and advertise to the other ranks (see
            :func:`local_address`).
        port: the TCP port to listen on (default 0: any free port).
    """

    transport_name = "TLS transport"
    _AGAIN = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

    def __init__(
        self,
        store: Store,
        rank: int,
        size: int,
        timeout: float,
        *,
        credentials: Credentials,
        identities: Sequence[str],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if len(identities) != size:
            raise ValueError(f"`identities` must have {size} entries; got {len(identities)}")
        if len(set(identities)) != size:
            raise ValueError(f"`identities` must be distinct; got {list(identities)}")
        if not 0 <= rank < size or credentials.uri != identities[rank]:
            raise ValueError(
                f"`credentials` are for {credentials.uri!r}; rank {rank} is "
                f"{identities[rank] if 0 <= rank < size else '?'!r}"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"`port` must be an int in [0, 65536); got {port!r}")
        self._credentials = credentials
        self._identities = tuple(identities)
        self._host = host
        self._port = port
        self.refused = 0
        super().__init__(store, rank, size, timeout)
        self._start_writer()

    # ----------------------------------------------------------------- setup
    def _connect(self, store: Store, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        server_ctx = self._credentials.context(server=True)
        client_ctx = self._credentials.context(server=False)
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(2 * self.size)
            port = listener.getsockname()[1]
            store.set(f"tls/{self.rank}", f"{self._host}|{port}")
            published = {}
            for r in range(self.rank):
                host, p = store.get(f"tls/{r}").decode().rsplit("|", 1)
                published[r] = (host, int(p))
            for r, addr in published.items():
                self._add_peer(r, self._dial(r, addr, client_ctx, deadline))
            expected = set(range(self.rank + 1, self.size))
            while expected:
                listener.settimeout(max(0.1, deadline - time.monotonic()))
                raw, addr = listener.accept()
                got = self._admit(raw, addr, server_ctx, expected, deadline)
                if got is not None:
                    expected.discard(got)
        except TimeoutError as e:
            missing = sorted(set(range(self.size)) - set(self._peers) - {self.rank})
            self.close()
            extra = f"; refused {self.refused} connection(s)" if self.refused else ""
            raise RuntimeError(
                f"TLS transport: rank {self.rank} ({self._identities[self.rank]}) timed out "
                f"after {timeout} s waiting for ranks {missing} "
                f"({[self._identities[m] for m in missing]}){extra}: {e}"
            ) from e
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()

    def _dial(
        self, r: int, addr: tuple[str, int], ctx: ssl.SSLContext, deadline: float
    ) -> ssl.SSLSocket:
        """Connect to rank ``r`` at ``addr`` and check that it is who it must be."""
        want = self._identities[r]
        try:
            raw = socket.create_connection(addr, timeout=max(0.1, deadline - time.monotonic()))
        except OSError as e:
            if isinstance(e, TimeoutError):
                raise
            raise RuntimeError(
                f"TLS transport: rank {self.rank} could not reach rank {r} ({want}) at "
                f"{addr[0]}:{addr[1]}: {e}"
            ) from e
        try:
            s = ctx.wrap_socket(raw)  # handshake (blocking, bounded by the socket timeout)
        except ssl.SSLError as e:
            raw.close()
            raise RuntimeError(
                f"TLS transport: rank {self.rank}: the TLS handshake with rank {r} ({want}) "
                f"at {addr[0]}:{addr[1]} failed ({e}); do both hold credentials of one CA?"
            ) from e
        except OSError:
            raw.close()
            raise
        got = peer_identity(s)
        if got != want:
            s.close()
            raise RuntimeError(
                f"TLS transport: rank {self.rank}: the peer at {addr[0]}:{addr[1]} (published "
                f"as rank {r}, {want}) presented a certificate of {got!r}; refusing it"
            )
        return s

    def _admit(
        self,
        raw: socket.socket,
        addr: tuple[str, int],
        ctx: ssl.SSLContext,
        expected: set[int],
        deadline: float,
    ) -> int | None:
        """Handshake with an incoming connection; keep it if it is an expected rank."""
        raw.settimeout(min(_HANDSHAKE_S, max(0.1, deadline - time.monotonic())))
        where = f"{addr[0]}:{addr[1]}"
        try:
            s = ctx.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as e:
            raw.close()
            self._refuse(where, f"TLS handshake failed: {e}")
            return None
        got = peer_identity(s)
        r = self._identities.index(got) if got in self._identities else -1
        if r not in expected:
            s.close()
            why = "was already connected" if r >= 0 and r != self.rank else "is not expected here"
            self._refuse(where, f"its certificate names {got!r}, which {why}")
            return None
        self._add_peer(r, s)
        return r

    def _refuse(self, where: str, why: str) -> None:
        self.refused += 1
        log.warning(
            "TLS transport: rank %d (%s) refused a connection from %s: %s",
            self.rank,
            self._identities[self.rank],
            where,
            why,
        )

    def _add_peer(self, rank: int, s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._add_peer(rank, s)

    # ----------------------------------------------------------------- writer thread
    # Progress is the Unix transport's (the caller's waits pump every peer), plus one
    # thread that flushes queued sends while the caller computes: a TCP socket takes
    # only a few MiB at once, and a large message (the provider's corrections) would
    # otherwise move only when its sender next waits. Every touch of the sockets and
    # the peers' state holds ``_lock`` (an SSL object is not safe for concurrent use).
    def _start_writer(self) -> None:
        self._lock = threading.RLock()
        self._queued = threading.Event()
        self._stopping = False
        self._writer = threading.Thread(
            target=self._write_queued, name=f"smpc-tls-writer-{self.rank}", daemon=True
        )
        self._writer.start()

    def _write_queued(self) -> None:
        while not self._stopping:
            if not self._queued.wait(0.5):
                continue
            with self._lock:
                waiting = [p for p in self._peers.values() if p.sendq and p.closed is None]
                if not waiting:
                    self._queued.clear()
                    continue
                socks = [p.sock for p in waiting]
            try:
                _, writable, _ = select.select([], socks, [], 0.05)
            except (OSError, ValueError):  # a socket closed meanwhile
                continue
            if writable:
                with self._lock:
                    for p in waiting:
                        if p.sendq and p.closed is None and p.sock in writable:
                            self._flush(p)

    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int) -> UnixWork:  # noqa: N803
        """Post a send (as the Unix transport); what the socket does not take is queued."""
        with self._lock:
            work = super().send(tensors, dstRank, tag)
            if not work.done and work.error is None:
                self._queued.set()
            return work

    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int) -> UnixWork:  # noqa: N803
        """Post a receive (as the Unix transport)."""
        with self._lock:
            return super().recv(tensors, srcRank, tag)

    def _pump(self, target: UnixWork | None) -> bool:
        with self._lock:
            return super()._pump(target)

    def close(self) -> None:
        """Stop the writer thread, then close every connection (pending works fail)."""
        writer = getattr(self, "_writer", None)
        if writer is not None:
            self._stopping = True
            self._queued.set()
            if writer is not threading.current_thread():
                writer.join(2.0)
        lock = getattr(self, "_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            super().close()

    # ----------------------------------------------------------------- I/O
    def _write(self, peer: _Peer, chunks: list[memoryview]) -> int:
        """Write what the socket takes; a chunk cut by want-write is retried whole later.

        OpenSSL keeps a write interrupted by a full socket and completes it when the
        same bytes are written again (Python sets ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``),
        so a retry always starts with the same chunk.
        """
        sock = cast(ssl.SSLSocket, peer.sock)
        if len(chunks) == 2 and len(chunks[1]) <= _JOIN_BYTES and len(chunks[0]) == 16:
            # head + small payload: one record (a retry joins the same bytes again)
            try:
                n = sock.send(b"".join(chunks))
            except self._AGAIN:
                return 0
            except OSError as e:
                self._lost(peer, f"Connection closed by rank {peer.rank} (sending: {e})")
                return 0
            return n
        total = 0
        for c in chunks:
            try:
                n = sock.send(c)
            except self._AGAIN:
                break
            except OSError as e:
                self._lost(peer, f"Connection closed by rank {peer.rank} (sending: {e})")
                break
            total += n
            if n < len(c):
                break
        return total

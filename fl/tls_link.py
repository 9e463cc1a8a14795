"""The networked mode's TLS link: framed bytes between the fl server and its clients.

Used by :mod:`fl.network` across machines (and on request on one host). A star
of TLS 1.3 connections with mutual authentication (:mod:`smpc.credentials`):
the server listens on ``master_addr:master_port`` with the credentials of role
``fl:server``; each client connects to it with those of ``fl:client:<id>``. A
peer is kept only if its certificate chains to the session CA and names the
role it must have (the server checks that a client's certificate names a
client; :mod:`fl.network` checks that it names the client the ``hello``
claims). A stranger -- no certificate, another CA's, another role's -- is
refused and logged (logger ``fl.tls_link``) and the server carries on. No
rendezvous store is involved: nothing travels outside TLS.

Frames: an 8-byte head ``[type, length]`` (little-endian uint32) then the body:
``MESSAGE`` (a codec-encoded message, at most ``max_message_bytes``, checked
before anything is allocated), ``BEAT`` (a client's heartbeat, empty) and
``RANK`` (the client's rank, 4 bytes, first after the handshake). Anything else
is a :class:`~smpc.errors.ProtocolError` naming the peer.

Progress is single-threaded per process (non-blocking sockets; reads are
drained while a write waits, so two peers writing to each other never block),
except for the client's heartbeat thread, which shares the socket under a lock.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque

from smpc import ProtocolError
from smpc.credentials import Credentials, peer_identity, role_uri

__all__ = ["TlsLink"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<II")
MESSAGE, BEAT, RANK = 1, 2, 3
_CHUNK = 1 << 18
_HANDSHAKE_S = 5.0
_AGAIN = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Peer:
    __slots__ = ("sock", "lock", "buf", "messages", "beats", "closed", "uri", "name")

    def __init__(self, sock: ssl.SSLSocket, uri: str | None, name: str) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.buf = bytearray()
        self.messages: deque[bytes] = deque()
        self.beats = 0
        self.closed: str | None = None
        self.uri = uri
        self.name = name


class TlsLink:
    """Framed messages between the fl server (rank 0) and clients over mutually authenticated TLS.

    Args:
        rank: 0 for the server, else the client's rank.
        world_size: server + clients.
        host: the server's address (the server listens there, clients connect to it).
        port: the server's TCP port.
        credentials: this process's credentials (role ``fl:server`` on rank 0, else
            ``fl:client:<id>``).
        connect_timeout: seconds a client keeps trying to reach the server.
        max_message_bytes: the largest message accepted.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        connect_timeout: float,
        max_message_bytes: int,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.max_bytes = max_message_bytes
        self.peers: dict[int, _Peer] = {}
        self.listener: socket.socket | None = None
        self.refused = 0
        self._ctx = credentials.context(server=rank == 0)
        if rank == 0:
            if credentials.uri != role_uri("fl-server"):
                raise ValueError(
                    f"the server needs credentials of 'fl:server'; got {credentials.uri!r}"
                )
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.listener = socket.socket(family, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(2 * world_size)
            self.listener.setblocking(False)
        else:
            self._dial(host, port, connect_timeout)

    # ----------------------------------------------------------------- setup
    def _dial(self, host: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = socket.create_connection(
                    (host, port), timeout=max(0.1, min(10.0, deadline - time.monotonic()))
                )
                break
            except (ConnectionRefusedError, TimeoutError, OSError) as e:
                if time.monotonic() >= deadline:
                    raise ConnectionError(
                        f"rank {self.rank} could not reach the fl server at {host}:{port} within "
                        f"{timeout} s: {e}"
                    ) from e
                time.sleep(0.1)
        try:
            s = self._ctx.wrap_socket(raw)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise ConnectionError(
                f"rank {self.rank}: the TLS handshake with the fl server at {host}:{port} failed "
                f"({e}); do both hold credentials of one CA?"
            ) from e
        got = peer_identity(s)
        if got != role_uri("fl-server"):
            s.close()
            raise ConnectionError(
                f"rank {self.rank}: the peer at {host}:{port} presented a certificate of {got!r}, "
                "not of the fl server; refusing it"
            )
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        peer = self.peers[0] = _Peer(s, got, "the server (rank 0)")
        self._write(peer, RANK, struct.pack("<I", self.rank), timeout)

    def _accept_pending(self) -> None:
        """Admit the clients waiting on the listening socket (server only; never blocks long)."""
        assert self.listener is not None
        while True:
            try:
                raw, addr = self.listener.accept()
            except _AGAIN:
                return
            where = f"{addr[0]}:{addr[1]}"
            raw.setblocking(True)
            raw.settimeout(_HANDSHAKE_S)
            try:
                s = self._ctx.wrap_socket(raw, server_side=True)
                uri = peer_identity(s)
                if uri is None or not uri.startswith("fl:client:"):
                    s.close()
                    self._refuse(where, f"its certificate names {uri!r}, not an fl client")
                    continue
                head = _recv_exact(s, _HEAD.size)
                kind, length = _HEAD.unpack(head)
                if kind != RANK or length != 4:
                    raise ProtocolError(f"first frame of type {kind} ({length} bytes), not RANK")
                (rank,) = struct.unpack("<I", _recv_exact(s, 4))
            except (OSError, ValueError, ProtocolError) as e:
                with contextlib.suppress(OSError):
                    raw.close()
                self._refuse(where, f"TLS handshake or first frame failed: {e}")
                continue
            if not 1 <= rank < self.world_size or rank in self.peers:
                s.close()
                self._refuse(where, f"{uri} claimed rank {rank}, which is not free")
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.peers[rank] = _Peer(s, uri, f"the client at rank {rank} ({uri})")

    def _refuse(self, where: str, why: str) -> None:
        self.refused += 1
        log.warning("fl server: refused a connection from %s: %s", where, why)

    # ----------------------------------------------------------------- reading
    def _pump(self, peer: _Peer) -> None:
        """Read what has arrived from ``peer`` and split it into frames (never blocks)."""
        if peer.closed is not None:
            return
        with peer.lock:
            while True:
                try:
                    data = peer.sock.recv(_CHUNK)
                except _AGAIN:
                    break
                except OSError as e:
                    peer.closed = f"{peer.name} closed the connection ({e})"
                    break
                if not data:
                    peer.closed = f"{peer.name} closed the connection"
                    break
                peer.buf += data
                self._frames(peer)

    def _frames(self, peer: _Peer) -> None:
        buf = peer.buf
        while len(buf) >= _HEAD.size:
            kind, length = _HEAD.unpack_from(buf)
            if kind == MESSAGE:
                if length > self.max_bytes:
                    peer.closed = err = (
                        f"{peer.name} announced a message of {length} bytes, more than the "
                        f"limit of {self.max_bytes}"
                    )
                    raise ProtocolError(err)
            elif kind != BEAT or length:
                peer.closed = err = f"{peer.name} sent a frame of unknown type {kind} ({length} B)"
                raise ProtocolError(err)
            end = _HEAD.size + length
            if len(buf) < end:
                return
            if kind == MESSAGE:
                peer.messages.append(bytes(buf[_HEAD.size : end]))
            else:
                peer.beats += 1
            del buf[:end]

    def _peer(self, rank: int) -> _Peer | None:
        if self.listener is not None:
            self._accept_pending()
        return self.peers.get(rank)

    def ready(self, src: int) -> bool:
        """Whether a message from ``src`` is waiting (never blocks); ``ConnectionError`` if gone."""
        peer = self._peer(src)
        if peer is None:
            return False
        self._pump(peer)
        if peer.messages:
            return True
        if peer.closed is not None:
            raise ConnectionError(peer.closed)
        return False

    def beats(self, src: int) -> int:
        """How many heartbeats ``src`` has sent."""
        peer = self._peer(src)
        if peer is None:
            return 0
        self._pump(peer)
        return peer.beats

    def recv(self, src: int, timeout: float) -> bytes:
        """The next message from ``src`` (``TimeoutError``, ``ConnectionError`` if gone)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ready(src):
                return self.peers[src].messages.popleft()
            left = deadline - time.monotonic()
            if left <= 0:
                who = "the server" if src == 0 else f"the client at rank {src}"
                raise TimeoutError(f"no message from {who} within {timeout:.1f} s")
            waitables: list[socket.socket] = []
            waiting = self.peers.get(src)
            if waiting is not None:
                waitables.append(waiting.sock)
            elif self.listener is not None:
                waitables.append(self.listener)
            select.select(waitables, [], [], min(left, 0.5))

    def identity(self, rank: int) -> str | None:
        """The role URI named by ``rank``'s certificate (``None`` if not connected)."""
        peer = self.peers.get(rank)
        return None if peer is None else peer.uri

    # ----------------------------------------------------------------- writing
    def send(self, dst: int, data: bytes, timeout: float) -> None:
        """Send one message to ``dst`` (``ConnectionError`` if it is not connected or gone)."""
        peer = self._peer(dst)
        if peer is None:
            raise ConnectionError(f"rank {dst} is not connected")
        if peer.closed is not None:
            raise ConnectionError(peer.closed)
        self._write(peer, MESSAGE, data, timeout)

    def beat(self) -> None:
        """Send a heartbeat to the server (a client's background thread)."""
        self._write(self.peers[0], BEAT, b"", 5.0)

    def _write(self, peer: _Peer, kind: int, body: bytes, timeout: float) -> None:
        frame = memoryview(_HEAD.pack(kind, len(body)) + body)
        deadline = time.monotonic() + timeout
        off = 0
        while off < len(frame):
            with peer.lock:
                try:
                    off += peer.sock.send(frame[off : off + _CHUNK])
                    continue
                except _AGAIN:
                    pass
                except OSError as e:
                    peer.closed = f"{peer.name} closed the connection ({e})"
                    raise ConnectionError(peer.closed) from e
            # the socket is full: read meanwhile, so that two writers never block each other
            with contextlib.suppress(ProtocolError):
                self._pump(peer)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{peer.name} did not take a message within {timeout:.1f} s")
            select.select([peer.sock], [peer.sock], [], min(left, 0.5))

    def forget(self, rank: int) -> None:
        """Close the connection of a dropped peer."""
        peer = self.peers.get(rank)
        if peer is not None:
            peer.closed = peer.closed or f"{peer.name} was dropped"
            with contextlib.suppress(OSError):
                peer.sock.close()

    def close(self) -> None:
        """Close every connection and the listening socket."""
        for rank in list(self.peers):
            self.forget(rank)
        if self.listener is not None:
            self.listener.close()


def _recv_exact(s: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed during setup")
        buf += part
    return bytes(buf)

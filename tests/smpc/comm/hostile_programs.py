"""Party programs for tests/smpc/comm/test_hostile.py: party 1 attacks party 0 or the provider.

Each runs in the party processes of :func:`smpc.launch.run` (module-level, so they
pickle to the children; this module imports only torch and smpc). Party 0 is
honest and does what the program says; party 1 (the last party, the one that
talks to the provider) sends what an attacker would, below the public API.
"""

from __future__ import annotations

import pickle
import socket
import struct
from pathlib import Path

import torch

import smpc
from smpc.comm.framing import TAG_HEADER, Channel, MessageKind
from smpc.comm.torchdist import OBJECT_CODEC
from smpc.comm.unixsock import UnixSocketGroup

HOSTILE = 1


class Evil:
    """A pickle payload: unpickling it creates ``marker`` (runs code chosen by the sender)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _send(sess: smpc.Session, kind: MessageKind, data: bytes, *, seq: int | None = None) -> str:
    """Party 1: send ``data`` to party 0 as the payload of the next message."""
    comm = sess.comm
    seq = comm._next() if seq is None else seq  # type: ignore[attr-defined]  # distributed comm
    ch: Channel = comm.channel  # type: ignore[attr-defined]
    ch.wait_all(ch.send(0, seq, kind, _bytes(data) if data else None), 0, "attack")
    return "sent"


def pickled_object(sess: smpc.Session, marker: str) -> object:
    """A crafted pickle where party 0 expects broadcast_object's encoded value."""
    if sess.rank == HOSTILE:
        return _send(sess, MessageKind.OBJECT, pickle.dumps(Evil(marker)))
    return sess.comm.broadcast_object(None, HOSTILE, "hello")


def huge_frame(sess: smpc.Session, marker: str) -> object:
    """A frame head whose length field claims 2^40 bytes (the payload "follows")."""
    if sess.rank == HOSTILE:
        comm = sess.comm
        ch: Channel = comm.channel  # type: ignore[attr-defined]
        frame = ch._frame(comm._next(), MessageKind.OBJECT, 1 << 40, 0, False)  # type: ignore[attr-defined]
        ch.wait_all(ch.send_frame(0, frame), 0, "attack")
        return "sent"
    return sess.comm.broadcast_object(None, HOSTILE, "hello")


def huge_socket_head(sess: smpc.Session, marker: str) -> object:
    """Below the frames: a socket message head claiming 2^40 bytes (socket transports)."""
    if sess.rank == HOSTILE:
        pg = sess.comm.channel.pg  # type: ignore[attr-defined]
        assert isinstance(pg, UnixSocketGroup)
        pg._peers[0].sock.setblocking(True)
        pg._peers[0].sock.sendall(struct.pack("<qq", TAG_HEADER, 1 << 40) + b"\0" * 64)
        return "sent"
    return sess.comm.broadcast_object(None, HOSTILE, "hello")


def truncated_value(sess: smpc.Session, marker: str) -> object:
    """A well-framed message whose encoded value is cut short."""
    if sess.rank == HOSTILE:
        data = OBJECT_CODEC.encode({"weights": torch.arange(100)})
        return _send(sess, MessageKind.OBJECT, data[:-13])
    return sess.comm.broadcast_object(None, HOSTILE, "hello")


def truncated_socket_message(sess: smpc.Session, marker: str) -> object:
    """A socket message head of 1000 bytes followed by 10, then the connection closes."""
    if sess.rank == HOSTILE:
        pg = sess.comm.channel.pg  # type: ignore[attr-defined]
        assert isinstance(pg, UnixSocketGroup)
        sock = pg._peers[0].sock
        sock.setblocking(True)
        sock.sendall(struct.pack("<qq", TAG_HEADER, 1000) + b"\1" * 10)
        sock.shutdown(socket.SHUT_RDWR)  # cut mid-message (the provider link stays up)
        pg._lost(pg._peers[0], "cut by this test")
        return "sent"
    return sess.comm.broadcast_object(None, HOSTILE, "hello")


def wrong_kind(sess: smpc.Session, marker: str) -> object:
    """A REVEAL message where party 0 expects the OPEN of the same step."""
    x = torch.arange(4, dtype=torch.int64)
    if sess.rank == HOSTILE:
        return _send(sess, MessageKind.REVEAL, x.numpy().tobytes())
    return sess.comm.open([x], "step")


def replayed(sess: smpc.Session, marker: str) -> object:
    """Party 1 answers the second opening with its first message again."""
    x = torch.arange(4, dtype=torch.int64)
    first = sess.comm.open([x], "first")
    if sess.rank == HOSTILE:
        return _send(sess, MessageKind.OPEN, x.numpy().tobytes(), seq=1)  # message #1 again
    return first, sess.comm.open([x], "second")


def pickled_request(sess: smpc.Session, marker: str) -> object:
    """The last party sends the provider a crafted pickle as a dealer request."""
    if sess.rank == HOSTILE:
        client = sess.dealer
        ch: Channel = client._channel  # type: ignore[attr-defined]
        dealer = client._dealer  # type: ignore[attr-defined]
        ch.wait_all(
            ch.send(dealer, 1, MessageKind.REQUEST, _bytes(pickle.dumps(Evil(marker)))),
            dealer,
            "attack",
        )
        kind, raw, _ = ch.recv(
            dealer, 1, MessageKind.CORRECTION, "reply", accept=(MessageKind.ERROR,)
        )
        client._closed = True  # type: ignore[attr-defined]  # the provider is gone
        return kind.name, raw.numpy().tobytes().decode()
    return "honest"


ATTACKS = {
    "pickled-object": pickled_object,
    "huge-frame": huge_frame,
    "truncated-value": truncated_value,
    "wrong-kind": wrong_kind,
    "replayed": replayed,
}
SOCKET_ATTACKS = {
    "huge-socket-head": huge_socket_head,
    "truncated-socket-message": truncated_socket_message,
}


def marker_path(folder: str) -> str:
    """Where a pickle payload would leave its mark."""
    return str(Path(folder) / "marker")


# ----------------------------------------------------------------- faults (standalone roles)
def busy_loop(sess: smpc.Session, stop_last_after: int | None, progress: str | None) -> int:
    """Products in a loop; the last party stops itself (SIGSTOP) after some steps."""
    import os
    import signal

    x = sess.share(torch.ones(4) if sess.rank == 0 else None, src=0)
    steps = 400 if progress is None else 1_000_000  # until the provider is killed
    for i in range(1, steps):
        x = x * 1.0
        if i == 20 and progress is not None and sess.rank == 0:
            Path(progress).touch()
        if stop_last_after == i and sess.rank == sess.comm.world_size - 1:
            os.kill(os.getpid(), signal.SIGSTOP)
    return i


def role(
    rank: int,
    port: int,
    timeout: float,
    stop_last_after: int | None,
    progress: str | None,
    out: object,
) -> None:
    """One role of a two-party run, as ``smpc-launch`` starts it on its own machine."""
    import functools

    from smpc.launch import run_dealer, run_party

    names = ["alice", "bob"]
    try:
        if rank == len(names):
            res: object = run_dealer(
                names, timeout=timeout, master_addr="127.0.0.1", master_port=port, host_store=False
            )
        else:
            program = functools.partial(
                busy_loop, stop_last_after=stop_last_after, progress=progress
            )
            res = run_party(
                program, rank, names, timeout=timeout, master_addr="127.0.0.1", master_port=port
            )
        out.put((rank, repr(res)))  # type: ignore[attr-defined]
    except Exception as exc:  # the test inspects it
        out.put((rank, exc))  # type: ignore[attr-defined]

"""Wire framing (``smpc.comm.framing``): frames, parts and the checks a receiver makes.

The two ranks share an in-memory point-to-point group with gloo's semantics
(messages matched by ``(peer, tag)`` in order; a message longer than the posted
receive is an error), so every check runs in one thread without a transport.
"""

from __future__ import annotations

import datetime
from collections import defaultdict, deque

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smpc.comm.framing import (
    FRAME_BYTES,
    HEAD_BYTES,
    INLINE_BYTES,
    MAX_PARTS,
    Channel,
    MessageKind,
    Waitable,
)
from smpc.errors import PartyTimeoutError, ProtocolDesyncError, ProtocolError

Wire = dict[tuple[int, int, int], deque[bytes]]  # (src, dst, tag) -> messages in order


class _Done:
    def wait(self, timeout: datetime.timedelta = datetime.timedelta(seconds=1)) -> bool:
        return True


class _Recv:
    """A posted receive, filled from the wire when waited for (FIFO per peer and tag)."""

    def __init__(self, wire: Wire, key: tuple[int, int, int], buf: torch.Tensor) -> None:
        self.wire, self.key, self.buf = wire, key, buf

    def wait(self, timeout: datetime.timedelta = datetime.timedelta(seconds=1)) -> bool:
        queue = self.wire[self.key]
        if not queue:
            raise RuntimeError("Timed out waiting for the peer")
        data = queue.popleft()
        raw = self.buf.view(-1).view(torch.uint8)
        if len(data) > raw.numel():
            raise RuntimeError("message larger than the posted receive buffer")
        raw[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return True


class _Group:
    """Rank ``rank``'s end of the in-memory group."""

    def __init__(self, wire: Wire, rank: int) -> None:
        self.wire, self.rank = wire, rank

    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int) -> Waitable:  # noqa: N803
        data = tensors[0].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        self.wire[(self.rank, dstRank, tag)].append(data)
        return _Done()

    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int) -> Waitable:  # noqa: N803
        return _Recv(self.wire, (srcRank, self.rank, tag), tensors[0])


def _pair() -> tuple[Channel, Channel]:
    wire: Wire = defaultdict(deque)
    names = ["alice", "bob"]
    return Channel(_Group(wire, 0), 0, 5.0, names), Channel(_Group(wire, 1), 1, 5.0, names)


def _bytes(n: int, seed: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_frame_layout() -> None:
    assert HEAD_BYTES == 128 and INLINE_BYTES == FRAME_BYTES - HEAD_BYTES and MAX_PARTS == 10


@settings(max_examples=25, deadline=None)
@given(
    nbytes=st.sampled_from([0, 1, 7, 8, 1000, INLINE_BYTES, INLINE_BYTES + 1, 3 * FRAME_BYTES]),
    seq=st.integers(1, 2**40),
    kind=st.sampled_from(list(MessageKind)),
    aux=st.integers(-(2**62), 2**62),
    seed=st.integers(0, 2**16),
)
def test_a_message_arrives_whole_inline_or_after_its_head(
    nbytes: int, seq: int, kind: MessageKind, aux: int, seed: int
) -> None:
    a, b = _pair()
    payload = _bytes(nbytes, seed)
    works = a.send(1, seq, kind, payload, aux=aux)
    got_kind, data, got_aux = b.recv(0, seq, kind, "a test")
    a.wait_all(works, 1, "a test")
    assert got_kind is kind and got_aux == aux
    assert torch.equal(data, payload)


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=MAX_PARTS),
    seed=st.integers(0, 2**16),
)
def test_parts_travel_as_is_and_their_sizes_are_checked(sizes: list[int], seed: int) -> None:
    a, b = _pair()
    parts = [_bytes(n, seed + i) for i, n in enumerate(sizes)]
    a.send_parts(1, 3, MessageKind.OPEN, parts)
    header = b.take_header(0, "parts")
    b.check_header(header, 0, 3, MessageKind.OPEN, sum(sizes), "parts")
    b.check_parts(header, 0, 3, sizes, "parts")
    for part, n in zip(parts, sizes, strict=True):
        if n:
            buf = torch.empty(n, dtype=torch.uint8)
            b.wait(b.recv_part(0, buf), 0, "parts")
            assert torch.equal(buf, part)
    other = [*sizes[:-1], sizes[-1] + 8]
    with pytest.raises(ProtocolDesyncError, match="the parties' shapes differ"):
        b.check_parts(header, 0, 3, other, "parts")


def test_an_inline_frame_written_in_place() -> None:
    a, b = _pair()
    frame, view = a.inline_frame(5, MessageKind.SHARE, 24, sizes=[16, 8])
    view.copy_(_bytes(24, 1))
    a.send_frame(1, frame)
    header = b.take_header(0, "frame")
    nbytes, _ = b.check_header(header, 0, 5, MessageKind.SHARE, 24, "frame")
    b.check_parts(header, 0, 5, [16, 8], "frame")
    work, data = b.payload(header, 0, nbytes)
    assert work is None and torch.equal(data, _bytes(24, 1))


def test_another_operation_or_shape_is_a_desync_naming_both_sides() -> None:
    a, b = _pair()
    a.send(1, 7, MessageKind.OPEN, _bytes(16, 0))
    with pytest.raises(ProtocolDesyncError, match=r"expected message #8 \(REVEAL.*got #7 \(OPEN\)"):
        b.recv(0, 8, MessageKind.REVEAL, "a test")
    with pytest.raises(ProtocolDesyncError, match="the runtime failed earlier"):
        b.check()
    a, b = _pair()
    a.send(1, 1, MessageKind.OPEN, _bytes(16, 0))
    header = b.take_header(0, "open")
    with pytest.raises(ProtocolDesyncError, match="expected 24 payload bytes"):
        b.check_header(header, 0, 1, MessageKind.OPEN, 24, "open")


def test_a_peers_error_frame_carries_its_reason() -> None:
    a, b = _pair()
    reason = b"the provider died"
    a.send(1, 2, MessageKind.ERROR, torch.frombuffer(bytearray(reason), dtype=torch.uint8))
    with pytest.raises(PartyTimeoutError, match="its reason: the provider died"):
        b.recv(0, 2, MessageKind.OPEN, "an opening")


def test_an_oversized_announcement_is_refused_before_allocating() -> None:
    a, b = _pair()
    b.max_message_bytes = 2 * FRAME_BYTES
    a.send(1, 1, MessageKind.OBJECT, _bytes(3 * FRAME_BYTES, 0))
    header = b.take_header(0, "object")
    nbytes, _ = b.check_header(header, 0, 1, MessageKind.OBJECT, None, "object")
    with pytest.raises(ProtocolError, match="a payload"):
        b.payload(header, 0, nbytes)


def test_transport_failures_name_the_peer() -> None:
    a, b = _pair()
    with pytest.raises(PartyTimeoutError, match=r"peer 'alice' \(rank 0\) did not answer"):
        b.take_header(0, "an opening")
    assert b.who(1) == "'bob' (rank 1)"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    nbytes=st.integers(0, 200),
    n_sizes=st.integers(0, MAX_PARTS),
    seed=st.integers(0, 2**16),
)
def test_no_stale_memory_leaves_in_a_frame(
    nbytes: int, n_sizes: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Head words past the fields and the last payload word's padding are zero on the wire,
    whatever the allocator held before (stale heap bytes would reach the peer)."""
    real_empty = torch.empty

    def dirty_empty(*args: object, **kwargs: object) -> torch.Tensor:
        t = real_empty(*args, **kwargs)  # type: ignore[call-overload]
        t.view(-1).view(torch.uint8).fill_(0xA5)  # what a reused page might hold
        return t

    wire: Wire = defaultdict(deque)
    a = Channel(_Group(wire, 0), 0, 5.0, ["alice", "bob"])
    payload = _bytes(nbytes, seed)
    sizes = [nbytes // max(n_sizes, 1)] * n_sizes
    sizes = sizes[:-1] + [nbytes - sum(sizes[:-1])] if sizes else []
    with monkeypatch.context() as m:
        m.setattr(torch, "empty", dirty_empty)
        a.send(1, 7, MessageKind.OPEN, payload, sizes=sizes)
        frame, view = a.inline_frame(8, MessageKind.OPEN, nbytes)
        view.copy_(payload)
        a.send_frame(1, frame)
    (frames,) = wire.values()  # both messages are inline: one tag, in order
    assert len(frames) == 2
    for data, fields in zip(frames, (6 + n_sizes, 6), strict=True):
        head, body = data[:HEAD_BYTES], data[HEAD_BYTES:]
        assert head[8 * fields :] == bytes(HEAD_BYTES - 8 * fields)
        assert body[:nbytes] == payload.numpy().tobytes()
        assert body[nbytes:] == bytes(len(body) - nbytes)  # the last word's padding


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=MAX_PARTS + 3))
def test_padding_between_packed_parts_is_zero(
    sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts packed at 8-aligned offsets (several openings in one frame): the gaps are zero."""
    from smpc.comm.torchdist import _layout

    real_empty = torch.empty

    def dirty_empty(*args: object, **kwargs: object) -> torch.Tensor:
        t = real_empty(*args, **kwargs)  # type: ignore[call-overload]
        t.view(-1).view(torch.uint8).fill_(0xA5)
        return t

    parts = [_bytes(n, i) for i, n in enumerate(sizes)]
    got_sizes, offsets, total = _layout(parts)
    wire: Wire = defaultdict(deque)
    a = Channel(_Group(wire, 0), 0, 5.0, ["alice", "bob"])
    with monkeypatch.context() as m:
        m.setattr(torch, "empty", dirty_empty)
        frame, view = a.inline_frame(3, MessageKind.OPEN, total, got_sizes)
        for p, off in zip(parts, offsets, strict=True):
            view[off : off + p.numel()] = p
        a.send_frame(1, frame)
    ((data,),) = wire.values()
    body = data[HEAD_BYTES:]
    want = bytearray(len(body))
    for p, off in zip(parts, offsets, strict=True):
        want[off : off + p.numel()] = p.numpy().tobytes()
    assert body == bytes(want)

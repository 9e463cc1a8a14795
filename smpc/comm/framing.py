"""Wire framing of the distributed runtime: framed, tagged messages over a process group.

Shared by the communicator (:mod:`smpc.comm.torchdist`) and the crypto
provider (:mod:`smpc.dealer.trusted`); the process group is gloo over TCP, or
:class:`~smpc.comm.unixsock.UnixSocketGroup` / :class:`~smpc.comm.tls.TlsSocketGroup`
with the same send/receive semantics (:mod:`smpc.comm.rendezvous` joins one).

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
"""

from __future__ import annotations

import datetime
import functools
import zlib
from collections import deque
from collections.abc import Sequence
from enum import IntEnum
from typing import Protocol, cast

import numpy as np
import torch
from torch._C._distributed_c10d import ProcessGroupGloo

from ..codec import check_length
from ..errors import PartyTimeoutError, ProtocolDesyncError, ProtocolError, SmpcError

__all__ = [
    "Channel",
    "MessageKind",
    "PointToPoint",
    "Waitable",
    "Pending",
    "HEAD_NUMEL",
    "HEAD_BYTES",
    "FRAME_BYTES",
    "INLINE_BYTES",
    "MAX_PARTS",
    "TAG_HEADER",
    "TAG_PAYLOAD",
    "MAX_MESSAGE_BYTES",
    "ABORT_REASON_BYTES",
]

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


def zero_padding(buf: np.ndarray, sizes: Sequence[int]) -> None:
    """Zero the padding bytes of parts of ``sizes`` bytes packed at 8-aligned offsets in ``buf``.

    A payload's parts start at multiples of 8 bytes; the bytes between a part's end
    and the next multiple of 8 carry nothing, and are zeroed so that no stale memory
    leaves the process.
    """
    off = 0
    for nb in sizes:
        end = off + nb
        pad = -end % 8
        if pad:
            buf[end : min(end + pad, len(buf))] = 0
        off = end + pad


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
        a = frame.numpy()  # a few µs less than a torch.tensor per message
        # Every byte that is not payload is zeroed: the unused head words, the padding
        # between 8-aligned parts and after the last would otherwise carry stale heap
        # memory to the peer. The payload is copied in afterwards.
        a[len(head) : HEAD_NUMEL] = 0
        a[: len(head)] = head
        if inline and nbytes:
            if nbytes % 8:
                a[-1] = 0  # the padding after the payload
            if sizes:
                zero_padding(a[HEAD_NUMEL:].view(np.uint8), sizes)
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

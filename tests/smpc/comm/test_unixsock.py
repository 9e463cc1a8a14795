"""The Unix-socket transport: gloo's send/recv semantics, progress, failures, setup.

Each rank's group lives in its own thread of this process (a group is used by
one thread at a time, as in a party process); ranks meet through an in-process
``HashStore``.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._C._distributed_c10d import HashStore

from smpc.comm.unixsock import _HELLO, UnixSocketGroup, supported

pytestmark = pytest.mark.skipif(not supported(), reason="no Unix sockets on this platform")

TAGS = (11, 12)


def _on_every_rank(n: int, work: Callable[[int], Any], timeout: float = 30.0) -> list[Any]:
    """Run ``work(rank)`` in one thread per rank; return the results (re-raise the first error)."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(r: int) -> None:
        try:
            results[r] = work(r)
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    if errors:
        raise errors[0]
    return results


def _groups(n: int, timeout: float = 10.0) -> list[UnixSocketGroup]:
    store = HashStore()
    return _on_every_rank(n, lambda r: UnixSocketGroup(store, r, n, timeout))


# ----------------------------------------------------------------- semantics
@st.composite
def traffic(draw: st.DrawFn) -> tuple[int, list[tuple[int, int, int, int]]]:
    """``n`` ranks and messages ``(src, dst, tag, nbytes)``: empty to 12 MiB (beyond the
    8 MiB socket buffers, so that sends queue and must progress while both sides send)."""
    n = draw(st.integers(2, 4))
    sizes = st.one_of(st.integers(0, 64), st.integers(65, 300_000), st.integers(9 << 20, 12 << 20))
    msgs = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(1, n - 1), st.sampled_from(TAGS), sizes),
            min_size=1,
            max_size=12,
        )
    )
    return n, [(s, (s + d) % n, tag, nb) for s, d, tag, nb in msgs]


@settings(max_examples=12, deadline=None)
@given(case=traffic(), order_seed=st.integers(0, 2**16))
def test_messages_arrive_whole_and_in_order_per_peer_and_tag(
    case: tuple[int, list[tuple[int, int, int, int]]], order_seed: int
) -> None:
    # Prepare: every rank posts all its sends first, then its receives in a shuffled
    # order across peers and tags (FIFO within one peer and tag), some into larger buffers
    n, msgs = case
    groups = _groups(n)
    payloads = [
        torch.randint(0, 256, (nb,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        for i, (_, _, _, nb) in enumerate(msgs)
    ]

    def rank_program(r: int) -> list[tuple[int, torch.Tensor, int]]:
        g = groups[r]
        sends = [
            g.send([payloads[i]], dst, tag) for i, (src, dst, tag, _) in enumerate(msgs) if src == r
        ]
        mine = [i for i, (_, dst, _, _) in enumerate(msgs) if dst == r]
        streams: dict[tuple[int, int], list[int]] = {}
        for i in mine:
            streams.setdefault((msgs[i][0], msgs[i][2]), []).append(i)
        order = [key for key, ids in streams.items() for _ in ids]
        random.Random(order_seed + r).shuffle(order)
        posted = []
        for src, tag in order:
            i = streams[(src, tag)].pop(0)
            extra = (i % 3) * 7  # some receives larger than their message
            buf = torch.full((msgs[i][3] + extra,), 0xAB, dtype=torch.uint8)
            posted.append((i, buf, g.recv([buf], src, tag)))
        for _, _, w in reversed(posted):  # waiting out of order is fine too
            w.wait(datetime.timedelta(seconds=20))
        for w in sends:
            w.wait(datetime.timedelta(seconds=20))
        return [(i, buf, w.nbytes) for i, buf, w in posted]

    # Execute
    try:
        got = _on_every_rank(n, rank_program)
    finally:
        for g in groups:
            g.close()
    # Assert: each message whole, in its own receive; bytes past it untouched
    seen = 0
    for per_rank in got:
        for i, buf, nbytes in per_rank:
            nb = msgs[i][3]
            assert nbytes == nb
            assert torch.equal(buf[:nb], payloads[i])
            assert bool((buf[nb:] == 0xAB).all())
            seen += 1
    assert seen == len(msgs)


def test_sends_complete_at_once_when_the_socket_takes_them() -> None:
    a, b = _groups(2)
    try:
        small = a.send([torch.arange(100, dtype=torch.int64)], 1, 11)
        assert small.is_completed()  # written at once: the buffer is free again
        buf = torch.empty(100, dtype=torch.int64)
        w = b.recv([buf], 0, 11)
        w.wait(datetime.timedelta(seconds=5))
        assert torch.equal(buf, torch.arange(100))
    finally:
        a.close()
        b.close()


def test_message_larger_than_the_posted_receive_raises() -> None:
    a, b = _groups(2)
    try:
        a.send([torch.zeros(64, dtype=torch.uint8)], 1, 11)
        w = b.recv([torch.empty(16, dtype=torch.uint8)], 0, 11)
        with pytest.raises(RuntimeError, match="64 bytes.*larger than the posted receive"):
            w.wait(datetime.timedelta(seconds=5))
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------- failures
def test_a_closed_peer_fails_only_the_works_that_need_it() -> None:
    a, b, c = _groups(3)
    try:
        c.close()  # rank 2 goes away (as when its process exits or dies)
        start = time.monotonic()
        w = a.recv([torch.empty(8, dtype=torch.uint8)], 2, 11)
        with pytest.raises(RuntimeError, match="[Cc]losed"):
            w.wait(datetime.timedelta(seconds=10))
        assert time.monotonic() - start < 2.0  # noticed at once, not at the timeout
        # ranks 0 and 1 still talk
        b.send([torch.full((8,), 5, dtype=torch.uint8)], 0, 12)
        buf = torch.empty(8, dtype=torch.uint8)
        a.recv([buf], 1, 12).wait(datetime.timedelta(seconds=5))
        assert bool((buf == 5).all())
        # a send to the closed peer fails too
        with pytest.raises(RuntimeError, match="[Cc]losed"):
            a.send([torch.zeros(1 << 22, dtype=torch.uint8)], 2, 11).wait(
                datetime.timedelta(seconds=5)
            )
    finally:
        a.close()
        b.close()


def test_closing_fails_the_works_still_pending() -> None:
    a, b = _groups(2)
    w = a.recv([torch.empty(8, dtype=torch.uint8)], 1, 11)
    a.close()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="closed by this rank"):
        w.wait(datetime.timedelta(seconds=10))
    assert time.monotonic() - start < 1.0
    b.close()


def test_a_wait_gives_up_after_its_timeout() -> None:
    a, b = _groups(2)
    try:
        w = a.recv([torch.empty(8, dtype=torch.uint8)], 1, 11)
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="Timed out after 0.3 s waiting for rank 1"):
            w.wait(datetime.timedelta(seconds=0.3))
        assert 0.25 <= time.monotonic() - start < 1.5
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------- setup
def test_a_connection_without_the_key_is_refused() -> None:
    # Prepare: rank 0 of 2 waits for rank 1; an impostor connects first, with a wrong key
    store = HashStore()
    result: list[BaseException | UnixSocketGroup] = []

    def rank0() -> None:
        try:
            result.append(UnixSocketGroup(store, 0, 2, timeout=10.0))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=rank0)
    t.start()
    addr_hex, _ = store.get("unix/0").decode().split(":")
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    impostor.settimeout(5.0)
    # Execute: the impostor is cut off; the real rank 1 then joins
    try:
        impostor.connect(bytes.fromhex(addr_hex).decode("latin-1"))
        impostor.sendall(_HELLO.pack(1, b"\0" * 32))
        assert impostor.recv(1) == b""  # closed by rank 0
        rank1 = UnixSocketGroup(store, 1, 2, timeout=10.0)
        t.join(10)
    finally:
        impostor.close()
    # Assert: the group formed with the real rank only
    assert len(result) == 1 and isinstance(result[0], UnixSocketGroup)
    rank0_group = result[0]
    try:
        rank1.send([torch.arange(4, dtype=torch.int64)], 0, 11)
        buf = torch.empty(4, dtype=torch.int64)
        rank0_group.recv([buf], 1, 11).wait(datetime.timedelta(seconds=5))
        assert torch.equal(buf, torch.arange(4))
    finally:
        rank0_group.close()
        rank1.close()


_OTHER_USER = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)  # nobody: another user than the parties
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(bytes.fromhex(sys.argv[1]).decode("latin-1"))
s.sendall(bytes.fromhex(sys.argv[2]))
print("closed" if s.recv(1) == b"" else "kept")
"""


@pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0 or not hasattr(socket, "SO_PEERCRED"),
    reason="needs root (to run a process as another user) and SO_PEERCRED",
)
def test_another_user_with_the_key_is_refused() -> None:
    # Prepare: another user reads rank 0's address and key (as from a TCP store)
    store = HashStore()
    result: list[BaseException | UnixSocketGroup] = []

    def rank0() -> None:
        try:
            result.append(UnixSocketGroup(store, 0, 2, timeout=20.0))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=rank0)
    t.start()
    addr_hex, key_hex = store.get("unix/0").decode().split(":")
    hello = _HELLO.pack(1, bytes.fromhex(key_hex)).hex()
    # Execute: it presents the right key, from a process of user nobody
    out = subprocess.run(
        [sys.executable, "-c", _OTHER_USER, addr_hex, hello],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    rank1 = UnixSocketGroup(store, 1, 2, timeout=20.0)
    t.join(20)
    # Assert: refused; the real rank 1 joined
    assert out.stdout.strip() == "closed", out.stderr
    group = result[0]
    assert isinstance(group, UnixSocketGroup)
    try:
        rank1.send([torch.arange(4, dtype=torch.int64)], 0, 11)
        buf = torch.empty(4, dtype=torch.int64)
        group.recv([buf], 1, 11).wait(datetime.timedelta(seconds=5))
        assert torch.equal(buf, torch.arange(4))
    finally:
        group.close()
        rank1.close()


def test_setup_times_out_naming_the_missing_ranks() -> None:
    store = HashStore()
    missing = r"rank 0 timed out after 0.3 s waiting for ranks \[1, 2\]"
    with pytest.raises(RuntimeError, match=missing):
        UnixSocketGroup(store, 0, 3, timeout=0.3)


def test_bad_arguments_are_named() -> None:
    store = HashStore()
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, 2\); got 2"):
        UnixSocketGroup(store, 2, 2, 1.0)
    with pytest.raises(ValueError, match="`size` must be an int >= 2; got 1"):
        UnixSocketGroup(store, 0, 1, 1.0)
    with pytest.raises(ValueError, match="`timeout` must be > 0 seconds; got 0"):
        UnixSocketGroup(store, 0, 2, 0)
    a, b = _groups(2)
    try:
        with pytest.raises(ValueError, match="rank 5 is not a peer of rank 0"):
            a.send([torch.zeros(1)], 5, 11)
    finally:
        a.close()
        b.close()

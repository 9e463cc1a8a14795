"""Every role gives up within the timeout, naming the peer and the real cause.

The join: an unresolvable host, a port nobody listens on, ranks that never come.
A run whose roles are separate processes (as ``smpc-launch`` starts them on
separate machines): the last party stalls (``SIGSTOP``), or the provider dies.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from smpc import PartyTimeoutError
from smpc.comm.rendezvous import connect
from tests.smpc.comm import hostile_programs as hp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unresolvable_host_is_reported_as_such() -> None:
    with pytest.raises(
        PartyTimeoutError, match="cannot resolve the rendezvous host 'no-such-host.invalid'"
    ):
        connect(1, 3, master_addr="no-such-host.invalid", master_port=_free_port(), timeout=30)


@pytest.mark.timeout(60)
def test_nothing_listening_gives_up_at_the_join_timeout() -> None:
    # rank 1 with a port nobody listens on (a wrong MASTER_PORT)
    start = time.monotonic()
    with pytest.raises(
        PartyTimeoutError, match="nothing answered at the rendezvous .* join timeout of 2 s"
    ):
        connect(1, 3, master_addr="127.0.0.1", master_port=_free_port(), timeout=2.0)
    assert time.monotonic() - start < 2.0 + 3.0  # not torch's twice-the-timeout retries


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["auto", "tcp"])
def test_missing_ranks_give_up_at_the_join_timeout(transport: str) -> None:
    start = time.monotonic()
    with pytest.raises(
        PartyTimeoutError, match="did not all join .* within the join timeout of 2 s"
    ):
        connect(
            0,
            3,
            master_addr="127.0.0.1",
            master_port=_free_port(),
            timeout=2.0,
            transport=transport,
        )
    assert time.monotonic() - start < 2.0 + 3.0


def _roles(
    stop_last_after: int | None, progress: str | None, timeout: float
) -> tuple[Any, list[Any]]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=hp.role, args=(r, port, timeout, stop_last_after, progress, out))
        for r in range(3)
    ]
    for p in procs:
        p.start()
    return out, procs


def _end(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.join(timeout=10)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_every_role_gives_up_when_the_last_party_stalls() -> None:
    # Prepare / Execute: bob stops himself (SIGSTOP) after 30 products
    out, procs = _roles(stop_last_after=30, progress=None, timeout=3.0)
    got: dict[int, Any] = {}
    try:
        while len(got) < 2:  # alice and the provider; bob is stopped
            rank, value = out.get(timeout=90)
            got[rank] = value
        bob_stopped = procs[1].is_alive()
    except queue.Empty:
        pytest.fail(f"only {sorted(got)} gave up: a role waits for the stalled party")
    finally:
        _end(procs)
    # Assert: alice and the provider both gave up on bob (still stopped), naming him
    assert bob_stopped
    assert isinstance(got[0], PartyTimeoutError) and "'bob' (rank 1)" in str(got[0])
    assert isinstance(got[2], PartyTimeoutError)
    assert "crypto provider" in str(got[2]) and "'bob' (rank 1)" in str(got[2])


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_every_party_names_the_provider_when_it_dies(tmp_path: Path) -> None:
    # Prepare: kill the provider once the parties are computing
    progress = tmp_path / "progress"
    out, procs = _roles(stop_last_after=None, progress=str(progress), timeout=10.0)
    got: dict[int, Any] = {}
    try:
        deadline = time.monotonic() + 90
        while not progress.exists():
            assert time.monotonic() < deadline, "the parties never started computing"
            time.sleep(0.05)
        os.kill(procs[2].pid, signal.SIGKILL)
        while len(got) < 2:
            rank, value = out.get(timeout=60)
            got[rank] = value
    finally:
        _end(procs)
    # Assert: both parties' errors name the provider (alice's through bob's reason)
    for rank in (0, 1):
        assert isinstance(got[rank], PartyTimeoutError), got[rank]
        assert "the crypto provider 'dealer' (rank 2)" in str(got[rank])

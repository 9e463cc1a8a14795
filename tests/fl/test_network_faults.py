"""Networked mode under attack or failure: hostile clients are dropped, a lost server is named.

Clients that send a crafted pickle or a truncated message as their hello are
left out; clients that replay an old message or send an unexpected kind in a
round are dropped; the honest clients finish every round, and no code chosen by
a sender runs in the server (the marker file a pickle payload would create never
appears). When the server process dies, every client raises
:class:`fl.NetworkError` naming the server, not a raw transport error.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
from pathlib import Path
from typing import Any

import pytest

import fl
from smpc.credentials import main as credentials_main
from tests.fl import network_faults_app as app

TRANSPORTS = ["gloo", "tls"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(
    tmp_path: Path,
    transport: str,
    world: int,
    server_args: tuple[Any, ...],
    clients: dict[int, Any],
) -> tuple[list[Any], list[Any]]:
    """Start the server and clients; return (the queue's items, the processes)."""
    creds = None
    if transport == "tls":
        assert (
            credentials_main(
                [str(tmp_path / "creds"), "--fl-server", "--fl-clients", str(world - 1)]
            )
            == 0
        )
        creds = str(tmp_path / "creds")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=app.server_main,
            args=(port, world, *server_args[:1], out, transport, creds, *server_args[1:]),
        )
    ]
    for rank in range(1, world):
        procs.append(
            ctx.Process(
                target=app.client_main,
                args=(port, world, rank, out, transport, creds, *clients.get(rank, ())),
            )
        )
    for p in procs:
        p.start()
    return [out, procs]


def _collect(out: Any, procs: list[Any], wanted: set[Any]) -> dict[Any, Any]:
    """Read reports until every role in ``wanted`` has reported; then end every process."""
    got: dict[Any, Any] = {}
    try:
        while not wanted <= set(got):
            key, value = out.get(timeout=100)
            got[key] = value
    except queue.Empty:
        pytest.fail(f"only {sorted(got, key=str)} reported: a role hung")
    finally:
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
    return got


@pytest.mark.distributed
@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hostile_clients_are_dropped(tmp_path: Path, transport: str) -> None:
    # Prepare: 2 honest clients (ranks 1, 2) and 4 hostile ones (ranks 3-6): two attack
    # with their hello, two within the first round
    marker = str(tmp_path / "marker")
    attacks = ("pickled-hello", "truncated-hello", "replayed", "wrong-kind")
    hostile = {3 + i: (attack, marker) for i, attack in enumerate(attacks)}
    out, procs = _launch(tmp_path, transport, 7, (2,), hostile)
    # Execute
    got = _collect(out, procs, {"server", 1, 2})  # the server and the honest clients
    # Assert: every round ran with the honest clients only; no code ran in the server
    records = got["server"]
    assert [r["round"] for r in records] == [1, 2]
    assert not any(r["failed"] for r in records)
    assert all(set(r["survivors"]) == {0, 1} for r in records)
    assert got[1] == 2 and got[2] == 2
    assert not Path(marker).exists()


@pytest.mark.distributed
@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clients_name_a_dead_server(tmp_path: Path, transport: str) -> None:
    # Prepare: the server kills itself when it configures round 2
    out, procs = _launch(tmp_path, transport, 3, (3, 2), {})
    # Execute
    got = _collect(out, procs, {1, 2})
    # Assert
    for rank in (1, 2):
        err = got[rank]
        assert isinstance(err, fl.NetworkError), err
        assert "the server (rank 0" in str(err) and f"(rank {rank})" in str(err)

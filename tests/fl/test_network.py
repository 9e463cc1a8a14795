"""Networked mode: 1 server + 3 clients on loopback; one client is killed mid-run."""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
from pathlib import Path

import pytest

from smpc.credentials import main as credentials_main
from tests.fl import network_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["gloo", "tls"])
def test_server_and_three_clients_survive_a_killed_client(tmp_path: Path, transport: str) -> None:
    # Prepare: over gloo on the loopback, or TLS with credentials for every role
    ctx = mp.get_context("spawn")
    port, world, rounds = _free_port(), 4, 3
    creds = None
    if transport == "tls":
        assert credentials_main([str(tmp_path), "--fl-server", "--fl-clients", "3"]) == 0
        creds = str(tmp_path)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=network_app.server_main, args=(port, world, rounds, out, transport, creds)
        )
    ]
    for rank in range(1, world):
        die_in = 2 if rank == 2 else None  # client 1 dies when round 2's training starts
        procs.append(
            ctx.Process(
                target=network_app.client_main,
                args=(port, world, rank, die_in, transport, creds),
            )
        )
    # Execute
    for p in procs:
        p.start()
    try:
        records = out.get(timeout=80)
    except queue.Empty:
        pytest.fail("the server did not finish: a dropout became a hang")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    # Assert
    assert [r["round"] for r in records] == [1, 2, 3]
    assert not any(r["failed"] for r in records)
    assert tuple(records[0]["survivors"]) == (0, 1, 2)
    assert tuple(records[1]["survivors"]) == (0, 2)
    assert tuple(records[2]["selected"]) == (0, 2)
    assert records[2]["test_accuracy"] > records[0]["test_accuracy"] - 0.05

"""Hostile peers on loopback: a party that sends what an attacker would.

Party 1 of a two-party :func:`smpc.run` sends a crafted pickle, a frame whose
length field claims 2^40 bytes, a truncated message, a message of the wrong
kind, or a replayed one (see ``hostile_programs``). Each time the honest
receiver raises a clear :class:`smpc.ProtocolError` naming party 1 (or, for a
connection cut mid-message, :class:`smpc.PartyTimeoutError`), no code chosen by
the sender runs (the marker file a pickle payload would create never appears),
and every process ends within the timeout. Parametrised by transport.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
from pathlib import Path
from typing import Any

import pytest

import smpc
from smpc import PartyTimeoutError, ProtocolError
from tests.smpc.comm import hostile_programs as hp

TRANSPORTS = ["unix", "tcp", "tls"]
SOCKET_TRANSPORTS = ["unix", "tls"]  # raw socket messages below the frames
TIMEOUT = 10.0


def _attack(program: Any, transport: str, tmp_path: Path) -> tuple[list[Any], Path]:
    marker = Path(hp.marker_path(str(tmp_path)))
    results = smpc.run(
        functools.partial(program, marker=str(marker)),
        parties=2,
        timeout=TIMEOUT,
        transport=transport,
        return_exceptions=True,
    )
    assert multiprocessing.active_children() == []  # every process ended
    return results, marker


_EXPECTED = {
    "pickled-object": "malformed message from party 'party1' \\(rank 1\\)",
    "huge-frame": "'party1' \\(rank 1\\) announced 1099511627776 bytes for a payload",
    "truncated-value": "malformed message from party 'party1' \\(rank 1\\).*truncated",
    "wrong-kind": "expected message #1 \\(OPEN.*from 'party1' \\(rank 1\\), got #1 \\(REVEAL\\)",
    "replayed": "expected message #2 \\(OPEN.*from 'party1' \\(rank 1\\), got #1 \\(OPEN\\)",
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("attack", sorted(hp.ATTACKS))
def test_hostile_frames_raise_protocol_error(attack: str, transport: str, tmp_path: Path) -> None:
    # Execute
    (honest, hostile), marker = _attack(hp.ATTACKS[attack], transport, tmp_path)
    # Assert: a clear error naming the sender and what was wrong; no code ran
    assert isinstance(honest, ProtocolError), honest
    assert re.search(_EXPECTED[attack], str(honest)), str(honest)
    assert hostile == "sent"
    assert not marker.exists()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", SOCKET_TRANSPORTS)
@pytest.mark.parametrize("attack", sorted(hp.SOCKET_ATTACKS))
def test_hostile_socket_messages_drop_the_peer(attack: str, transport: str, tmp_path: Path) -> None:
    (honest, hostile), _ = _attack(hp.SOCKET_ATTACKS[attack], transport, tmp_path)
    if attack == "huge-socket-head":  # refused before anything is allocated
        assert isinstance(honest, ProtocolError), honest
        assert "'party1' (rank 1) broke the wire protocol" in str(honest)
        assert "1099511627776 bytes" in str(honest)
    else:  # the connection closed mid-message: a clean timeout error naming the peer
        assert isinstance(honest, PartyTimeoutError), honest
        assert "'party1' (rank 1) closed the connection" in str(honest)
    assert hostile == "sent"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pickled_dealer_request_runs_no_code(transport: str, tmp_path: Path) -> None:
    (honest, (kind, reason)), marker = _attack(hp.pickled_request, transport, tmp_path)
    assert honest == "honest"
    assert kind == "ERROR" and "ProtocolError" in reason and "'party1' (rank 1)" in reason
    assert not marker.exists()

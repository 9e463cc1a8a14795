"""fl's TLS link: framed messages between the server and clients; strangers refused."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.errors import ConfigError
from fl.network import NetworkConfig, _tls_link
from fl.tls_link import TlsLink
from smpc import ProtocolError
from smpc.credentials import Credentials, create_ca, issue, role_uri


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flcreds")
    create_ca(folder)
    for uri in [role_uri("fl-server")] + [role_uri("fl-client", str(i)) for i in range(3)]:
        issue(folder, uri)
    return folder


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flother")
    create_ca(folder)
    issue(folder, role_uri("fl-client", "0"))
    return folder


def _server(creds: Path, world: int) -> TlsLink:
    return TlsLink(
        0, world, "127.0.0.1", 0, Credentials.load(creds, role_uri("fl-server")),
        connect_timeout=10, max_message_bytes=1 << 20,
    )  # fmt: skip


def _port(link: TlsLink) -> int:
    assert link.listener is not None
    return int(link.listener.getsockname()[1])


def _client(creds: Path, world: int, rank: int, port: int, cid: int | None = None) -> TlsLink:
    uri = role_uri("fl-client", str(rank - 1 if cid is None else cid))
    return TlsLink(
        rank, world, "127.0.0.1", port, Credentials.load(creds, uri),
        connect_timeout=10, max_message_bytes=1 << 20,
    )  # fmt: skip


def _connected(creds: Path, server: TlsLink, world: int) -> list[TlsLink]:
    """Clients of ranks 1.. dialing from threads while the server admits them (as processes)."""
    out: dict[int, Any] = {}

    def dial(r: int) -> None:
        try:
            out[r] = _client(creds, world, r, _port(server))
        except BaseException as e:
            out[r] = e

    threads = [threading.Thread(target=dial, args=(r,)) for r in range(1, world)]
    for t in threads:
        t.start()
    for _ in range(500):
        server.ready(1)  # admits waiting clients
        if len(server.peers) == world - 1:
            break
        threading.Event().wait(0.01)
    for t in threads:
        t.join(10)
    links = [out[r] for r in range(1, world)]
    for link in links:
        if isinstance(link, BaseException):
            raise link
    return links


@settings(max_examples=8, deadline=None)
@given(sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=5))
def test_messages_arrive_whole_in_order_both_ways(creds: Path, sizes: list[int]) -> None:
    # Prepare
    server = _server(creds, 3)
    clients = _connected(creds, server, 3)
    msgs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    try:
        # Execute: every message to both clients, which echo them back reversed
        for m in msgs:
            for r in (1, 2):
                server.send(r, m, 10)
        got = {r: [clients[r - 1].recv(0, 10) for _ in msgs] for r in (1, 2)}
        for c in clients:
            for m in got[clients.index(c) + 1]:
                c.send(0, m[::-1], 10)
        back = {r: [server.recv(r, 10) for _ in msgs] for r in (1, 2)}
    finally:
        for link in [server, *clients]:
            link.close()
    # Assert
    for r in (1, 2):
        assert got[r] == msgs
        assert back[r] == [m[::-1] for m in msgs]
    assert server.identity(1) == "fl:client:0" and clients[0].identity(0) == "fl:server"


def test_heartbeats_and_a_closed_client(creds: Path) -> None:
    server = _server(creds, 2)
    (client,) = _connected(creds, server, 2)
    try:
        client.beat()
        client.beat()
        server.send(1, b"ping", 5)
        assert client.recv(0, 5) == b"ping"  # by then the server has admitted the client
        deadline = 50
        while server.beats(1) < 2 and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        assert server.beats(1) == 2
        client.close()
        with pytest.raises(ConnectionError, match="closed the connection"):
            server.recv(1, 5)
    finally:
        server.close()


def test_an_oversized_announcement_is_refused_before_allocating(creds: Path) -> None:
    server = _server(creds, 2)
    (client,) = _connected(creds, server, 2)
    try:
        from fl.tls_link import _HEAD, MESSAGE

        with client.peers[0].lock:
            client.peers[0].sock.setblocking(True)
            client.peers[0].sock.sendall(_HEAD.pack(MESSAGE, (1 << 32) - 1))
            client.peers[0].sock.setblocking(False)
        with pytest.raises(ProtocolError, match="4294967295 bytes, more than the limit"):
            server.recv(1, 5)
    finally:
        client.close()
        server.close()


def _stranger(port: int, ctx: ssl.SSLContext | None) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            if ctx is None:
                raw.sendall(b"\x00" * 64)
                raw.recv(1)
                return
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"\x03\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00")  # RANK 1
                s.recv(1)
        except (OSError, ssl.SSLError):
            pass


@pytest.mark.parametrize("stranger", ["another CA", "no certificate", "not TLS", "server role"])
def test_strangers_are_refused_and_the_server_carries_on(
    creds: Path, other_ca: Path, stranger: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    caplog.set_level(logging.WARNING, logger="fl.tls_link")
    server = _server(creds, 2)
    if stranger == "another CA":
        ctx: ssl.SSLContext | None = Credentials.load(other_ca, "fl:client:0").context(server=False)
    elif stranger == "server role":  # a valid certificate, but not a client's
        ctx = Credentials.load(creds, "fl:server").context(server=False)
    elif stranger == "no certificate":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = None
    # Execute: the stranger first, then the real client
    t = threading.Thread(target=_stranger, args=(_port(server), ctx))
    t.start()
    result: list[Any] = []
    try:
        while server.refused == 0 and t.is_alive():
            server.ready(1)
            threading.Event().wait(0.02)
        t.join(10)
        (client,) = _connected(creds, server, 2)
        client.send(0, b"hello", 5)
        result.append(server.recv(1, 10))
        client.close()
    finally:
        server.close()
    # Assert
    assert server.refused == 1
    assert result == [b"hello"]
    assert any("refused a connection" in r.getMessage() for r in caplog.records)


def test_secure_by_default_across_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMPC_CREDENTIALS", raising=False)
    with pytest.raises(ConfigError, match="smpc-credentials creds --fl-server"):
        _tls_link(NetworkConfig(world_size=3, master_addr="10.1.2.3"), 1, 0)
    with pytest.raises(ConfigError, match="'tls' needs credentials"):
        _tls_link(NetworkConfig(world_size=3, transport="tls"), 1, 0)
    with pytest.raises(ConfigError, match="`transport` must be"):
        NetworkConfig(world_size=3, transport="quic")
    assert _tls_link(NetworkConfig(world_size=3), 1, 0) is None  # loopback: gloo as before

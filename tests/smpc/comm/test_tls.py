"""The TLS transport: the Unix-socket transport's semantics over TLS 1.3, and who gets in.

Each rank's group lives in its own thread of this process; ranks meet through an
in-process ``HashStore``. Credentials come from one session CA (``alice``,
``bob``, ``carol``, the provider) and, for impostors, a second CA.
"""

from __future__ import annotations

import datetime
import logging
import random
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._C._distributed_c10d import HashStore

from smpc.comm.tls import TlsSocketGroup, local_address
from smpc.credentials import Credentials, create_ca, issue, role_uri
from tests.smpc.comm.test_unixsock import _on_every_rank, traffic

ROLES = [role_uri("party", "alice"), role_uri("party", "bob"), role_uri("provider")]
PAIR = ROLES[:2]  # the two ranks of the setup tests


def _store() -> HashStore:
    store = HashStore()
    store.set_timeout(datetime.timedelta(seconds=20))
    return store


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session CA with alice, bob, carol and the provider."""
    folder = tmp_path_factory.mktemp("creds")
    create_ca(folder)
    for uri in [*ROLES, role_uri("party", "carol")]:
        issue(folder, uri)
    return folder


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, which also issued a certificate naming bob."""
    folder = tmp_path_factory.mktemp("other")
    create_ca(folder, name="someone else's CA")
    issue(folder, role_uri("party", "bob"))
    return folder


def _groups(folder: Path, n: int, timeout: float = 10.0) -> list[TlsSocketGroup]:
    store = _store()
    roles = [role_uri("party", f"p{i}") for i in range(n - 1)] + [role_uri("provider")]
    for uri in roles:
        issue(folder, uri)
    return _on_every_rank(
        n,
        lambda r: TlsSocketGroup(
            store, r, n, timeout, credentials=Credentials.load(folder, roles[r]), identities=roles
        ),
    )


def _exchange_ok(a: TlsSocketGroup, b: TlsSocketGroup, src: int, dst: int) -> bool:
    """``a`` (rank ``src``) sends 1000 int64 to ``b`` (rank ``dst``): does it arrive whole?"""
    data = torch.arange(1000, dtype=torch.int64)
    w = a.send([data], dst, 11)
    buf = torch.empty(1000, dtype=torch.int64)
    b.recv([buf], src, 11).wait(datetime.timedelta(seconds=5))
    w.wait(datetime.timedelta(seconds=5))
    return torch.equal(buf, data)


# ----------------------------------------------------------------- semantics
@settings(max_examples=6, deadline=None)
@given(case=traffic(), order_seed=st.integers(0, 2**16))
def test_messages_arrive_whole_and_in_order_per_peer_and_tag(
    creds: Path, case: tuple[int, list[tuple[int, int, int, int]]], order_seed: int
) -> None:
    # Prepare: as over Unix sockets (sizes from empty to 12 MiB, receives posted in a
    # shuffled order, some larger than their message)
    n, msgs = case
    groups = _groups(creds, n)
    payloads = [
        torch.randint(0, 256, (nb,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        for i, (_, _, _, nb) in enumerate(msgs)
    ]

    def rank_program(r: int) -> list[tuple[int, torch.Tensor, int]]:
        g = groups[r]
        sends = [
            g.send([payloads[i]], dst, tag) for i, (src, dst, tag, _) in enumerate(msgs) if src == r
        ]
        streams: dict[tuple[int, int], list[int]] = {}
        for i, (src, dst, tag, _) in enumerate(msgs):
            if dst == r:
                streams.setdefault((src, tag), []).append(i)
        order = [key for key, ids in streams.items() for _ in ids]
        random.Random(order_seed + r).shuffle(order)
        posted = []
        for src, tag in order:
            i = streams[(src, tag)].pop(0)
            buf = torch.full((msgs[i][3] + (i % 3) * 7,), 0xAB, dtype=torch.uint8)
            posted.append((i, buf, g.recv([buf], src, tag)))
        for _, _, w in reversed(posted):
            w.wait(datetime.timedelta(seconds=30))
        for w in sends:
            w.wait(datetime.timedelta(seconds=30))
        return [(i, buf, w.nbytes) for i, buf, w in posted]

    # Execute
    try:
        got = _on_every_rank(n, rank_program, timeout=60)
    finally:
        for g in groups:
            g.close()
    # Assert
    seen = 0
    for per_rank in got:
        for i, buf, nbytes in per_rank:
            nb = msgs[i][3]
            assert nbytes == nb
            assert torch.equal(buf[:nb], payloads[i])
            assert bool((buf[nb:] == 0xAB).all())
            seen += 1
    assert seen == len(msgs)


def test_links_are_tls13_with_the_peers_roles(creds: Path) -> None:
    a, b, c = _groups(creds, 3)
    try:
        for g in (a, b, c):
            for r, peer in g._peers.items():
                sock = peer.sock
                assert isinstance(sock, ssl.SSLSocket)
                assert sock.version() == "TLSv1.3"
                cipher = sock.cipher()
                assert cipher is not None and ("GCM" in cipher[0] or "CHACHA" in cipher[0])
                cert = sock.getpeercert()
                assert cert is not None
                assert ("URI", g._identities[r]) in cert["subjectAltName"]
        assert _exchange_ok(c, a, 2, 0)
    finally:
        for g in (a, b, c):
            g.close()


def test_a_closed_peer_is_noticed_at_once(creds: Path) -> None:
    a, b = _groups(creds, 2)
    try:
        b.close()
        w = a.recv([torch.empty(8, dtype=torch.uint8)], 1, 11)
        with pytest.raises(RuntimeError, match="[Cc]losed"):
            w.wait(datetime.timedelta(seconds=10))
    finally:
        a.close()


# ----------------------------------------------------------------- impostors
def _start_rank0(folder: Path, store: HashStore, result: list[Any]) -> threading.Thread:
    def body() -> None:
        try:
            creds = Credentials.load(folder, ROLES[0])
            result.append(TlsSocketGroup(store, 0, 2, 20.0, credentials=creds, identities=PAIR))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=body)
    t.start()
    return t


def _client_ctx(folder: Path | None, uri: str | None) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting ``uri``'s certificate from ``folder`` (or none)."""
    if folder is not None and uri is not None:
        return Credentials.load(folder, uri).context(server=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a stranger that does not even check the server
    return ctx


def _impostor(addr: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
    """Connect to ``addr`` as a stranger; return once rank 0 has closed the connection."""
    with socket.create_connection(addr, timeout=10) as raw:
        if ctx is None:  # not even TLS: garbage instead of a handshake
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
            try:
                while raw.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            return
        try:
            with ctx.wrap_socket(raw) as s:
                # TLS 1.3: the server checks the client's certificate after the client
                # finished its handshake; its verdict shows as an alert or a close
                while s.recv(4096):
                    pass
        except (ssl.SSLError, OSError):
            pass


@pytest.mark.parametrize(
    "stranger",
    ["another CA", "another party's valid certificate", "no certificate", "not TLS"],
)
def test_impostors_are_refused_and_the_session_carries_on(
    creds: Path, other_ca: Path, stranger: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: rank 0 (alice) listens, waiting for bob; a stranger connects first
    ctx = {
        "another CA": _client_ctx(other_ca, role_uri("party", "bob")),
        "another party's valid certificate": _client_ctx(creds, role_uri("party", "carol")),
        "no certificate": _client_ctx(None, None),
        "not TLS": None,
    }[stranger]
    store = _store()
    result: list[Any] = []
    caplog.set_level(logging.WARNING, logger="smpc.comm.tls")
    t = _start_rank0(creds, store, result)
    host, port = store.get("tls/0").decode().rsplit("|", 1)
    # Execute: the stranger is cut off; the real bob then joins
    _impostor((host, int(port)), ctx)
    bob = TlsSocketGroup(
        store, 1, 2, 20.0, credentials=Credentials.load(creds, PAIR[1]), identities=PAIR
    )
    t.join(20)
    # Assert: the group formed with the real bob; the stranger was refused and logged
    assert len(result) == 1 and isinstance(result[0], TlsSocketGroup), result
    alice = result[0]
    try:
        assert alice.refused == 1
        assert any("refused a connection" in r.getMessage() for r in caplog.records)
        assert _exchange_ok(bob, alice, 1, 0) and _exchange_ok(alice, bob, 0, 1)
    finally:
        alice.close()
        bob.close()


def test_a_party_cannot_take_another_partys_place(creds: Path) -> None:
    # Prepare: carol holds a valid certificate of the session CA and tries to be bob:
    # her certificate names carol, not bob, so alice refuses her
    store = _store()
    result: list[Any] = []
    t = _start_rank0(creds, store, result)
    host, port = store.get("tls/0").decode().rsplit("|", 1)
    roles_as_carol = [PAIR[0], role_uri("party", "carol")]
    # Execute
    with pytest.raises(ValueError, match="`credentials` are for 'smpc:party:carol'"):
        TlsSocketGroup(  # claiming bob's rank with carol's credentials is refused at once
            store, 1, 2, 5.0, credentials=Credentials.load(creds, roles_as_carol[1]),
            identities=PAIR,
        )  # fmt: skip
    _impostor((host, int(port)), _client_ctx(creds, roles_as_carol[1]))
    bob = TlsSocketGroup(
        store, 1, 2, 20.0, credentials=Credentials.load(creds, PAIR[1]), identities=PAIR
    )
    t.join(20)
    # Assert
    alice = result[0]
    try:
        assert isinstance(alice, TlsSocketGroup) and alice.refused == 1
        assert _exchange_ok(bob, alice, 1, 0)
    finally:
        alice.close()
        bob.close()


def test_a_published_address_that_answers_with_the_wrong_certificate_is_an_error(
    creds: Path,
) -> None:
    # Prepare: the store says rank 0 (alice) listens where carol answers (a tampered store)
    store = _store()
    carol = Credentials.load(creds, role_uri("party", "carol")).context(server=True)
    listener = socket.create_server(("127.0.0.1", 0))
    store.set("tls/0", f"127.0.0.1|{listener.getsockname()[1]}")

    def serve() -> None:
        raw, _ = listener.accept()
        try:
            with carol.wrap_socket(raw, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve)
    t.start()
    # Execute / Assert
    try:
        with pytest.raises(RuntimeError, match="presented a certificate of 'smpc:party:carol'"):
            TlsSocketGroup(
                store, 1, 2, 10.0, credentials=Credentials.load(creds, PAIR[1]), identities=PAIR
            )
    finally:
        t.join(10)
        listener.close()


def test_setup_times_out_naming_the_missing_ranks(creds: Path) -> None:
    with pytest.raises(RuntimeError, match=r"timed out after 0.3 s waiting for ranks \[1, 2\]"):
        TlsSocketGroup(
            _store(), 0, 3, 0.3, credentials=Credentials.load(creds, ROLES[0]), identities=ROLES
        )


def test_bad_arguments_are_named(creds: Path) -> None:
    alice = Credentials.load(creds, ROLES[0])
    with pytest.raises(ValueError, match="`identities` must have 3 entries; got 2"):
        TlsSocketGroup(HashStore(), 0, 3, 1.0, credentials=alice, identities=ROLES[:2])
    with pytest.raises(ValueError, match="`port` must be an int in"):
        TlsSocketGroup(HashStore(), 0, 3, 1.0, credentials=alice, identities=ROLES, port=-1)


def test_local_address_is_the_route_to_the_rendezvous() -> None:
    assert local_address("127.0.0.1") == "127.0.0.1"
    with pytest.raises(ValueError, match="cannot resolve the rendezvous host"):
        local_address("no-such-host.invalid")

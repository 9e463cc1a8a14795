"""Connection setup of the distributed runtime: which transport, secure by default, gloo devices."""

from __future__ import annotations

import warnings

import pytest
from torch._C._distributed_c10d import HashStore

from smpc.comm.rendezvous import _gloo_device, choose_transport, connect, identities_of
from smpc.comm.unixsock import host_id
from smpc.credentials import CredentialsError, InsecureTransportWarning

HERE = host_id()
ELSEWHERE = "other-machine/boot"


def _decide(
    asked: list[str],
    hosts: list[str],
    creds: list[bool],
    plain: list[bool],
    *,
    loopback: bool = False,
) -> str:
    """Rank 0's choice when the other ranks published ``asked``/``creds``/``plain``/``hosts``."""
    store = HashStore()
    for r in range(1, len(asked)):
        store.set(f"link/{r}", f"{asked[r]}|{int(creds[r])}|{int(plain[r])}|{hosts[r]}")
    return choose_transport(
        store, 0, len(asked), asked[0],
        identities=identities_of([f"p{i}" for i in range(len(asked) - 1)]),
        secure=creds[0], insecure=plain[0], loopback=loopback,
    )  # fmt: skip


def test_one_host_uses_unix_sockets_unless_asked_otherwise() -> None:
    three = [HERE] * 3
    assert _decide(["auto"] * 3, three, [False] * 3, [False] * 3) == "unix"
    assert _decide(["auto", "unix", "auto"], three, [False] * 3, [False] * 3) == "unix"
    assert _decide(["auto", "tls", "auto"], three, [True] * 3, [False] * 3) == "tls"
    # plain TCP on one host with the rendezvous on the loopback: nothing leaves the host
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _decide(["tcp"] * 3, three, [False] * 3, [False] * 3, loopback=True) == "tcp"


def test_several_hosts_use_tls_when_every_rank_has_credentials() -> None:
    hosts = [HERE, ELSEWHERE, ELSEWHERE]
    assert _decide(["auto"] * 3, hosts, [True] * 3, [False] * 3) == "tls"
    # credentials win over insecure: a rank never sends plaintext when it can do better
    assert _decide(["auto"] * 3, hosts, [True] * 3, [True] * 3) == "tls"


@pytest.mark.parametrize(
    ("creds", "plain"),
    [
        ([False] * 3, [False] * 3),
        ([True, True, False], [False] * 3),
        ([False, True, True], [False, True, True]),
    ],
    ids=["nobody", "provider-missing", "rank0-secure-only"],
)
def test_several_hosts_without_credentials_refuse_to_start(
    creds: list[bool], plain: list[bool]
) -> None:
    hosts = [HERE, ELSEWHERE, ELSEWHERE]
    with pytest.raises(CredentialsError, match=r"smpc-credentials .* --provider.*insecure=True"):
        _decide(["auto"] * 3, hosts, creds, plain)


def test_insecure_across_hosts_warns_naming_what_is_exposed() -> None:
    hosts = [HERE, ELSEWHERE, ELSEWHERE]
    with pytest.warns(InsecureTransportWarning, match="dealer's per-party keys.*revealed result"):
        assert _decide(["auto"] * 3, hosts, [False] * 3, [True] * 3) == "tcp"
    with pytest.warns(InsecureTransportWarning):
        assert _decide(["tcp"] * 3, hosts, [False] * 3, [True] * 3) == "tcp"


def test_a_tampered_store_cannot_make_a_secure_rank_send_plaintext() -> None:
    # the others claim tcp + insecure; rank 0 did not opt out: it refuses
    hosts = [HERE, ELSEWHERE, ELSEWHERE]
    with pytest.raises(CredentialsError):
        _decide(["auto", "tcp", "tcp"], hosts, [True, False, False], [False, True, True])
    # the others claim to be on this host: tcp on a non-loopback rendezvous still refused
    with pytest.raises(CredentialsError):
        _decide(["tcp"] * 3, [HERE] * 3, [True] * 3, [False] * 3, loopback=False)


def test_conflicting_requests_are_errors() -> None:
    with pytest.raises(ValueError, match="different transports"):
        _decide(["tls", "tcp", "auto"], [HERE] * 3, [True] * 3, [True] * 3)
    with pytest.raises(ValueError, match="'unix' needs every rank on one host"):
        _decide(["unix", "auto"], [HERE, ELSEWHERE], [True] * 2, [False] * 2)
    with pytest.raises(CredentialsError, match="smpc-credentials"):
        _decide(["tls", "auto"], [HERE] * 2, [True, False], [False] * 2)


def test_connect_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="`transport` must be one of"):
        connect(0, 2, store=HashStore(), transport="quic")
    with pytest.raises(TypeError, match="`insecure` must be a bool"):
        connect(0, 2, store=HashStore(), insecure="yes")  # type: ignore[arg-type]
    with pytest.raises(CredentialsError, match="not found"):
        connect(0, 2, store=HashStore(), credentials="/nonexistent/creds")


def test_gloo_device_from_the_interface_or_the_advertised_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch 2.13's create_device() needs a hostname or an interface: always given one
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    assert _gloo_device("127.0.0.1", None) is not None
    assert _gloo_device("localhost", "127.0.0.1") is not None
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    assert _gloo_device("10.9.8.7", None) is not None


def test_every_rank_role_is_named() -> None:
    assert identities_of(["alice", "bob"]) == [
        "smpc:party:alice", "smpc:party:bob", "smpc:provider",
    ]  # fmt: skip

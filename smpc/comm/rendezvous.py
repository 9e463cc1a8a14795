"""Rendezvous of the distributed runtime: join the ranks, pick the transport (runtime layer).

The ranks are ``0 .. world_size - 1`` for the computing parties and
``world_size`` for the crypto provider. :func:`connect` meets them through a
torch.distributed store, which holds addresses and ports, never a secret a
stranger could use across hosts, and returns a point-to-point group: Unix
sockets when every rank runs on one host (:mod:`smpc.comm.unixsock`), TLS 1.3
with mutual authentication across hosts (:mod:`smpc.comm.tls`), or plain gloo
over TCP on request (across hosts only with ``insecure=True``), chosen by
:func:`choose_transport` (secure by default).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import time
import warnings
from collections.abc import Sequence

from torch._C._distributed_c10d import (  # the classes torch.distributed re-exports
    PrefixStore,
    ProcessGroupGloo,
    Store,
    TCPStore,
)

from ..credentials import (
    Credentials,
    CredentialsError,
    InsecureTransportWarning,
    role_uri,
)
from ..credentials import (
    resolve as resolve_credentials,
)
from ..errors import PartyTimeoutError
from .tls import TlsSocketGroup, local_address
from .unixsock import UnixSocketGroup, host_id
from .unixsock import supported as unix_supported

__all__ = ["connect", "choose_transport", "identities_of", "TRANSPORTS", "DEFAULT_PORT"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 29533


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TRANSPORTS = ("auto", "unix", "tcp", "tls")


def identities_of(names: Sequence[str]) -> list[str]:
    """The role URI of every rank: the parties (``smpc:party:<name>``), then the provider."""
    return [role_uri("party", n) for n in names] + [role_uri("provider")]


def _insecure_warning(where: str) -> None:
    msg = (
        f"{where}: insecure=True: the run's links are plain TCP (gloo) without encryption or "
        "authentication. Anyone on the network path can read the dealer's per-party keys, "
        "the last party's correction shares, every masked opening and every revealed result "
        "(and so rebuild every secret), and anyone who reaches the rendezvous port can join "
        "or take a rank's place. Use credentials (smpc-credentials) to run over TLS."
    )
    warnings.warn(msg, InsecureTransportWarning, stacklevel=3)
    log.warning(msg)


def _no_credentials(rank: int, who: str, missing: Sequence[str]) -> CredentialsError:
    parties = (
        ",".join(m.split(":", 2)[2] for m in missing if m.startswith("smpc:party:")) or "alice,bob"
    )
    return CredentialsError(
        f"rank {rank} ({who}): the ranks run on several hosts and {list(missing)} have no "
        "credentials: a run across machines uses TLS with mutual authentication. Create a CA "
        f"and credentials with `smpc-credentials creds --parties {parties} --provider`, give "
        "each machine ca.pem and its role's .pem and .key, and pass credentials='creds' "
        "(smpc-launch --credentials creds, or SMPC_CREDENTIALS=creds); or pass insecure=True "
        "(--insecure) to send everything in plaintext"
    )


def choose_transport(
    store: Store,
    rank: int,
    size: int,
    requested: str,
    *,
    identities: Sequence[str],
    secure: bool,
    insecure: bool,
    loopback: bool,
) -> str:
    """The transport every rank will use: ``"unix"``, ``"tls"`` or ``"tcp"`` (one store round).

    Each rank publishes what it asked for, whether it holds credentials, whether
    it accepts plaintext (``insecure``) and its :func:`~smpc.comm.unixsock.host_id`.

    * ranks on one host: Unix sockets, unless a rank asked for ``tls`` or ``tcp``;
    * ranks on several hosts (or ``tls`` asked): TLS if every rank holds credentials;
      plain TCP (gloo) only if every rank passed ``insecure`` (with a warning);
      otherwise :class:`~smpc.credentials.CredentialsError` on every rank, saying
      how to create credentials;
    * ``tcp`` asked: gloo over TCP; across hosts, or with a rendezvous that is not
      on the loopback, only with ``insecure`` (a tampered store cannot make a rank
      that did not opt out send plaintext over the network).

    Raises:
        ValueError: ranks asked for different transports, or ``unix`` across hosts.
        CredentialsError: a run across hosts without credentials and without ``insecure``.
    """
    here = host_id() if unix_supported() else f"no-unix-sockets/{rank}"
    store.set(f"link/{rank}", f"{requested}|{int(secure)}|{int(insecure)}|{here}")
    asked, creds, plain, hosts = [], [], [], set()
    for r in range(size):
        mode, c, p, host = store.get(f"link/{r}").decode().split("|", 3)
        asked.append(mode)
        creds.append(c == "1")
        plain.append(p == "1")
        hosts.add(host)
    who = identities[rank]
    explicit = {a for a in asked if a != "auto"}
    if len(explicit) > 1:
        raise ValueError(f"the ranks asked for different transports: {asked}")
    mode = explicit.pop() if explicit else "auto"
    one_host = len(hosts) == 1
    if mode == "unix" or (mode == "auto" and one_host):
        if not one_host:
            raise ValueError(
                f"`transport` 'unix' needs every rank on one host; the ranks run on "
                f"{len(hosts)} hosts (asked: {asked})"
            )
        return "unix"
    if mode == "tcp":
        if not insecure and not (one_host and loopback):
            raise _no_credentials(rank, who, [who])
        if not (one_host and loopback):
            _insecure_warning(f"rank {rank} ({who})")
        return "tcp"
    # TLS asked, or ranks on several hosts
    if all(creds):
        return "tls"
    if mode == "auto" and all(plain):
        _insecure_warning(f"rank {rank} ({who})")
        return "tcp"
    missing = [identities[r] for r in range(size) if not creds[r]]
    raise _no_credentials(rank, who, missing)


def _gloo_device(addr: str, address: str | None) -> object:
    """The gloo device of this rank: from ``GLOO_SOCKET_IFNAME``, or the advertised address.

    torch's ``create_device()`` needs a host name or an interface (``ValueError``
    otherwise): ``GLOO_SOCKET_IFNAME`` (its first entry) names the interface;
    else ``address``; else ``127.0.0.1`` for a loopback rendezvous, or this
    host's address on the route to the rendezvous host (what the other ranks reach).
    """
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "").split(",")[0].strip()
    if ifname:
        return ProcessGroupGloo.create_device(interface=ifname)
    if address is None:
        address = "127.0.0.1" if _is_loopback(addr) else local_address(addr)
    return ProcessGroupGloo.create_device(hostname=address)


def connect(
    rank: int,
    size: int,
    *,
    store: Store | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    timeout: float = 60.0,
    prefix: str = "smpc",
    host_store: bool | None = None,
    transport: str = "auto",
    identities: Sequence[str] | None = None,
    credentials: Credentials | str | os.PathLike[str] | None = None,
    insecure: bool = False,
    address: str | None = None,
    listen_port: int = 0,
) -> ProcessGroupGloo | UnixSocketGroup:
    """Join a group of ``size`` ranks (parties plus the provider) for point-to-point messages.

    Args:
        rank: this process's rank in ``[0, size)``.
        size: number of ranks.
        store: a rendezvous store; if ``None``, a TCP store at ``master_addr:master_port``
            (default ``MASTER_ADDR``/``MASTER_PORT`` from the environment), hosted by rank 0.
        master_addr: host of the TCP store.
        master_port: port of the TCP store.
        timeout: seconds to wait for the other ranks to join.
        prefix: key prefix in the store (lets several groups share one store).
        host_store: whether this process hosts the TCP store (default: rank 0 does).
        transport: ``"auto"`` (default): Unix sockets when every rank runs on this
            host (:class:`~smpc.comm.unixsock.UnixSocketGroup`), else TLS
            (:class:`~smpc.comm.tls.TlsSocketGroup`); ``"unix"``: Unix sockets
            (``ValueError`` if the ranks are on several hosts); ``"tls"``: TLS, also
            on one host; ``"tcp"``: gloo over plain TCP (across hosts only with
            ``insecure``). The ranks agree through the store (:func:`choose_transport`).
        identities: the role URI of every rank (default: parties ``party0..`` and the
            provider, :func:`identities_of`): what each TLS peer's certificate must name.
        credentials: this rank's TLS credentials: a folder made by ``smpc-credentials``
            or a :class:`~smpc.credentials.Credentials` (default: ``$SMPC_CREDENTIALS``).
        insecure: allow plain TCP across hosts without credentials (warns).
        address: the address this rank listens on and advertises (TLS, gloo); default:
            this host's address on the route to ``master_addr`` (``127.0.0.1`` on loopback).
        listen_port: the TCP port this rank listens on for TLS peers (default 0: any
            free port; fix it to open a firewall for it).

    Raises:
        PartyTimeoutError: the other ranks did not join within ``timeout``.
        CredentialsError: ranks on several hosts without credentials or ``insecure``.
    """
    if not 0 <= rank < size:
        raise ValueError(f"`rank` must be in [0, {size}); got {rank}")
    if transport not in TRANSPORTS:
        raise ValueError(f"`transport` must be one of {TRANSPORTS}; got {transport!r}")
    if not isinstance(insecure, bool):
        raise TypeError(f"`insecure` must be a bool; got {insecure!r}")
    if identities is None:
        identities = identities_of([f"party{i}" for i in range(size - 1)])
    if len(identities) != size:
        raise ValueError(f"`identities` must have {size} entries; got {len(identities)}")
    creds = resolve_credentials(credentials, identities[rank])
    # One deadline for the whole join: each step gets what is left of it.
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    given_store = store is not None
    addr = master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
    try:
        if store is None:
            port = (
                master_port
                if master_port is not None
                else int(os.environ.get("MASTER_PORT", DEFAULT_PORT))
            )
            _check_resolves(addr, port, rank)
            is_master = rank == 0 if host_store is None else host_store
            if not is_master:  # torch's own connect retries for up to twice its timeout
                _wait_for_listener(addr, port, rank, deadline, timeout)
            store = TCPStore(
                addr, port, size, is_master, timeout=datetime.timedelta(seconds=left()),
                wait_for_workers=False,
            )  # fmt: skip
        store.set_timeout(datetime.timedelta(seconds=left()))
        pstore = PrefixStore(prefix, store)
        # a store passed in (smpc.run's file store) is on this host
        loopback = (given_store and master_addr is None) or _is_loopback(addr)
        chosen = choose_transport(
            pstore, rank, size, transport,
            identities=identities, secure=creds is not None, insecure=insecure,
            loopback=loopback,
        )  # fmt: skip
        store.set_timeout(datetime.timedelta(seconds=left()))
        if chosen == "unix":
            return UnixSocketGroup(pstore, rank, size, left())
        if chosen == "tls":
            assert creds is not None
            host = address or ("127.0.0.1" if loopback else local_address(addr))
            return TlsSocketGroup(
                pstore, rank, size, left(),
                credentials=creds, identities=identities, host=host, port=listen_port,
            )  # fmt: skip
        options = ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # not in the stubs
        options._timeout = datetime.timedelta(seconds=left())
        options._threads = 2
        options._devices = [_gloo_device("127.0.0.1" if loopback else addr, address)]
        return ProcessGroupGloo(pstore, rank, size, options)
    except RuntimeError as e:  # torch raises DistStoreError (a RuntimeError) on timeouts
        waited = timeout - (deadline - time.monotonic())
        raise PartyTimeoutError(
            f"rank {rank} ({identities[rank]}): the other {size - 1} ranks did not all join "
            f"through the rendezvous at {addr}:{_port_of(store, master_port)} within the join "
            f"timeout of {timeout:g} s (gave up after {waited:.1f} s): {e}"
        ) from e


def _port_of(store: Store | None, master_port: int | None) -> str:
    port = getattr(store, "port", None) or master_port or os.environ.get("MASTER_PORT")
    return str(port) if port else "(store)"


def _wait_for_listener(host: str, port: int, rank: int, deadline: float, timeout: float) -> None:
    """Wait until something listens at ``host:port`` (the rendezvous), within ``deadline``."""
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PartyTimeoutError(
                f"rank {rank}: nothing answered at the rendezvous {host}:{port} within the join "
                f"timeout of {timeout:g} s ({last}): a wrong MASTER_ADDR/MASTER_PORT, a "
                "firewall, or rank 0 did not start"
            )
        try:
            with socket.create_connection((host, port), timeout=min(left, 2.0)):
                return
        except OSError as e:  # refused (not listening yet), unreachable, timed out
            last = e
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _check_resolves(host: str, port: int, rank: int) -> None:
    """Fail at once, and say so, when the rendezvous host name does not resolve."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise PartyTimeoutError(
            f"rank {rank}: cannot resolve the rendezvous host {host!r} (MASTER_ADDR / "
            f"master_addr): {e}; check the name or use an IP address"
        ) from e

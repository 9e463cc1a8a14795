"""Run a program with one OS process per party plus the crypto provider (launcher layer).

:func:`run` spawns every party and the provider on this machine (Unix sockets
by default, gloo over loopback TCP on request) and returns each party's
result; :func:`main` (console script ``smpc-launch``, or ``python -m
smpc.launch``) starts one role of a run spread over several machines,
configured by the usual torch.distributed environment variables.
See ``docs/runtimes.md``.

Each party process builds ``Session(parties, frac_bits, seed=..., comm=TorchDistCommunicator(...),
dealer=TrustedDealerClient(...))`` and calls ``program(sess)``: the same code as
in the in-process simulation.
Pickle: :func:`run` pickles the program to the processes it spawns and their
results (or exceptions) back, through ``multiprocessing`` pipes between this
process and its own children: one user, one machine, one trust domain (a
program is code the caller already runs). Nothing that crosses a party
boundary is pickled: party-to-party and party-to-provider messages go through
the communicator's frames and the schema-checked codec (:mod:`smpc.codec`),
and :func:`main`'s roles on separate machines exchange nothing else.
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import runpy
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import PartyExitError, PartyTimeoutError, ProtocolDesyncError

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store

__all__ = ["run", "main", "run_party", "run_dealer", "PartyExitError"]

# Grace period after the first failure for the other parties to report theirs.
_FAILURE_GRACE = 3.0
_JOIN_TIMEOUT = 5.0
# Imported once by the fork server. torch.broadcast_shapes imports sympy on first use
# (about 0.5-1 s per process), so that is preloaded too. Not smpc.launch itself: under
# `python -m smpc.launch` the children run it as their main module, which runpy
# warns about when it is already imported.
_PRELOAD = [
    "torch",
    "torch.fx.experimental.symbolic_shapes",
    "smpc",
    "smpc.session",
    "smpc.comm.torchdist",
    "smpc.dealer.trusted",
]


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


@dataclass(frozen=True, slots=True)
class _Config:
    names: tuple[str, ...]
    frac_bits: int
    seed: int | bytes | str | None
    timeout: float
    truncation: str
    threads: int
    master_addr: str
    master_port: int
    transport: str
    store_path: str | None  # a FileStore shared by the processes, else the TCP store
    credentials: str | None  # a folder of credentials (TLS), else $SMPC_CREDENTIALS
    insecure: bool


def _names(parties: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(parties, (bool, str, bytes)):
        raise TypeError(f"`parties` must be an int or a sequence of names; got {parties!r}")
    if isinstance(parties, int):
        names = tuple(f"party{i}" for i in range(parties))
    else:
        names = tuple(str(p) for p in parties)
    if len(names) < 2:
        raise ValueError(f"`parties` must name at least 2 parties; got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"`parties` names must be distinct; got {names}")
    if "dealer" in names:
        raise ValueError("`parties` may not use the name 'dealer' (the provider's role)")
    return names


def run_party(
    program: Callable[[Any], Any],
    rank: int,
    parties: Sequence[str],
    *,
    frac_bits: int = 16,
    seed: int | bytes | str | None = None,
    timeout: float = 60.0,
    truncation: str = "probabilistic",
    master_addr: str | None = None,
    master_port: int | None = None,
    host_store: bool | None = None,
    transport: str = "auto",
    store: Store | None = None,
    credentials: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    address: str | None = None,
    listen_port: int = 0,
) -> Any:
    """Join a distributed run as party ``rank`` and return ``program(sess)``.

    The session is closed afterwards; on an exception it is torn down without
    waiting for the peers (they then fail fast with :class:`PartyTimeoutError`).
    ``transport``, ``credentials``, ``insecure``, ``address``, ``listen_port``: as
    in :func:`smpc.comm.rendezvous.connect` (default: Unix sockets when every rank
    runs on this host, TLS with the party's credentials otherwise); ``store``: a
    rendezvous store to use instead of the TCP store at ``master_addr:master_port``.
    """
    from .comm.torchdist import TorchDistCommunicator
    from .dealer.trusted import TrustedDealerClient
    from .session import Session

    comm = TorchDistCommunicator(
        rank,
        len(parties),
        store=store,
        master_addr=master_addr,
        master_port=master_port,
        timeout=timeout,
        names=parties,
        host_store=host_store,
        transport=transport,
        credentials=credentials,
        insecure=insecure,
        address=address,
        listen_port=listen_port,
    )
    try:
        dealer = TrustedDealerClient(comm)
        sess = Session(
            tuple(parties),
            frac_bits,
            seed=seed,
            timeout=timeout,
            truncation=truncation,
            comm=comm,
            # request() returns a Mapping (corrections received lazily); Dealer says dict.
            dealer=dealer,
        )
        result = program(sess)
    except BaseException as exc:
        comm.abort(reason=f"{type(exc).__name__}: {exc}")  # the peers learn the cause
        raise
    sess.close()
    return result


def run_dealer(
    parties: Sequence[str],
    *,
    seed: int | bytes | str | None = None,
    timeout: float = 60.0,
    master_addr: str | None = None,
    master_port: int | None = None,
    host_store: bool | None = None,
    transport: str = "auto",
    store: Store | None = None,
    credentials: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    address: str | None = None,
    listen_port: int = 0,
) -> object:
    """Join a distributed run as the crypto provider; serve until the parties close.

    The link options are those of :func:`run_party` (the provider's credentials
    are those of role ``smpc:provider``).
    """
    from .dealer.trusted import TrustedDealer
    from .protocols import beaver, lookup, truncation
    from .protocols.compare import LtzMaterial
    from .protocols.convert import BitPair
    from .protocols.fused import REQUEST_TYPES as FUSED_TYPES
    from .protocols.truncpoly import TruncProducts

    dealer = TrustedDealer(
        len(parties),
        seed=seed,
        timeout=timeout,
        # the protocols' request classes: nothing else is decoded
        request_types=(
            *beaver.REQUEST_TYPES,
            *truncation.REQUEST_TYPES,
            LtzMaterial,
            BitPair,
            *lookup.REQUEST_TYPES,
            TruncProducts,
            *FUSED_TYPES,
        ),
        names=parties,
        store=store,
        master_addr=master_addr,
        master_port=master_port,
        host_store=host_store,
        transport=transport,
        credentials=credentials,
        insecure=insecure,
        address=address,
        listen_port=listen_port,
    )
    return dealer.serve()


def _portable_exception(exc: BaseException) -> BaseException:
    try:
        out = pickle.loads(pickle.dumps(exc))
        assert isinstance(out, BaseException)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def role_scheduling(*, provider: bool) -> bool:
    """The scheduling policy of a process of :func:`run` (all on one machine).

    Parties: ``SCHED_BATCH`` (:func:`smpc.perf.batch_scheduling`); the provider:
    ``SCHED_IDLE`` (:func:`smpc.perf.idle_scheduling`), so that it computes in
    the moments when a party waits for the other, and every party that wakes up
    takes its core back. Returns whether a policy was applied.
    """
    from .perf import batch_scheduling, idle_scheduling

    if provider and idle_scheduling():
        return True
    return batch_scheduling()


def _worker(
    conn: multiprocessing.connection.Connection,
    rank: int,
    program: Callable[[Any], Any] | None,
    cfg: _Config,
) -> None:
    """Process entry point: run one role, send back ("ok", value) or ("err", exc, tb)."""
    from .perf import keep_freed_memory

    role_scheduling(provider=program is None)  # before any thread starts: they inherit it
    import torch

    torch.set_num_threads(cfg.threads)
    keep_freed_memory()  # our own process: keep big share buffers in the heap
    try:
        store = None
        if cfg.store_path is not None:
            from torch._C._distributed_c10d import FileStore

            store = FileStore(cfg.store_path, -1)
        if program is None:
            value = run_dealer(
                cfg.names,
                seed=cfg.seed,
                timeout=cfg.timeout,
                master_addr=cfg.master_addr,
                master_port=cfg.master_port,
                host_store=False,
                transport=cfg.transport,
                store=store,
                credentials=cfg.credentials,
                insecure=cfg.insecure,
            )
        else:
            value = run_party(
                program,
                rank,
                cfg.names,
                frac_bits=cfg.frac_bits,
                seed=cfg.seed,
                timeout=cfg.timeout,
                truncation=cfg.truncation,
                master_addr=cfg.master_addr,
                master_port=cfg.master_port,
                host_store=False,
                transport=cfg.transport,
                store=store,
                credentials=cfg.credentials,
                insecure=cfg.insecure,
            )
        try:
            msg = pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            raise TypeError(
                f"the program's return value ({type(value).__name__}) cannot be pickled back "
                f"to the caller: {e}; return plain tensors (e.g. `.reveal()`), not shared ones"
            ) from e
    except BaseException as e:
        tb = traceback.format_exc()
        msg = pickle.dumps(("err", _portable_exception(e), tb), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        conn.send_bytes(msg)
        conn.close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown (torch/gloo destructors): seconds saved per run.
        os._exit(0)


def _context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        # The fork server imports torch once; each party then starts in milliseconds.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _pick_failure(
    names: Sequence[str], errors: dict[int, tuple[BaseException, str]]
) -> tuple[int, BaseException, str]:
    """The root cause among the parties' errors.

    An error of the program itself comes first; then a desync (a diagnosis: when
    a party stops on one, its peers often see only a closed connection); then a
    process that died; a timeout last (usually a consequence of the others).
    """

    def rank_of(item: tuple[int, tuple[BaseException, str]]) -> tuple[int, int]:
        exc = item[1][0]
        for order, kind in enumerate((ProtocolDesyncError, PartyExitError, PartyTimeoutError)):
            if isinstance(exc, kind):
                return order + 1, item[0]
        return 0, item[0]

    rank, (exc, tb) = min(errors.items(), key=rank_of)
    return rank, exc, tb


def run(
    program: Callable[[Any], Any],
    parties: int | Sequence[str] = ("alice", "bob"),
    *,
    frac_bits: int = 16,
    seed: int | bytes | str | None = None,
    timeout: float = 60.0,
    port: int | None = None,
    truncation: str = "probabilistic",
    threads: int | None = None,
    return_exceptions: bool = False,
    transport: str = "auto",
    credentials: str | os.PathLike[str] | None = None,
    insecure: bool = False,
) -> list[Any]:
    """Run ``program(sess)`` in one process per party, with the provider in its own process.

    Args:
        program: a module-level (picklable) function of a :class:`~smpc.session.Session`;
            it runs in every party process (SPMD) and its return value is pickled back.
        parties: number of parties or their names (>= 2).
        frac_bits: fixed-point fractional bits.
        seed: TESTING SWITCH (see :class:`~smpc.session.Session`): reproducible shares
            and dealer material. Never with real data.
        timeout: seconds a party waits for a peer before :class:`PartyTimeoutError`.
        port: host the rendezvous store on this TCP port of 127.0.0.1 (default: a
            file store in a temporary directory, removed afterwards).
        truncation: the session's truncation mode.
        threads: torch intra-op threads per party (default: cores / parties, at least 1).
        return_exceptions: return a failed party's exception in its slot instead of raising.
        transport: ``"auto"`` (default) or ``"unix"``: the processes talk over Unix
            sockets; ``"tls"``: over TLS 1.3 on loopback TCP, as across machines;
            ``"tcp"``: over gloo on loopback TCP (plaintext; see
            :func:`smpc.comm.rendezvous.connect`).
        credentials: a folder of credentials (``smpc-credentials``) holding every
            role's files, for ``"tls"``; default: a throwaway CA and credentials
            made for this run in its private temporary directory.
        insecure: passed to every role (plain TCP across hosts; unused on one host).

    Returns:
        ``[program's result on party 0, on party 1, ...]``.

    Raises:
        Exception: the exception a party raised (the root cause if several did), with
            a note naming the party and the remote traceback as ``__cause__``.
        PartyExitError: a process exited without reporting (killed, crashed).

    Example:
        >>> def program(sess):
        ...     x = sess.share(torch.tensor([1.0, 2.0]), src="alice")
        ...     return (x * x).reveal()
        >>> smpc.run(program, parties=("alice", "bob"))
        [tensor([1., 4.]), tensor([1., 4.])]
    """
    from torch._C._distributed_c10d import TCPStore

    if not callable(program):
        raise TypeError(f"`program` must be callable; got {type(program).__name__}")
    names = _names(parties)
    n = len(names)
    try:
        pickle.dumps(program)
    except Exception as e:
        raise TypeError(
            f"`program` must be picklable (a module-level function) to run in party "
            f"processes; got {program!r}: {e}"
        ) from e
    if timeout <= 0:
        raise ValueError(f"`timeout` must be > 0 seconds; got {timeout}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // n)
    from .comm.rendezvous import TRANSPORTS

    if transport not in TRANSPORTS:
        raise ValueError(f"`transport` must be one of {TRANSPORTS}; got {transport!r}")
    # Rendezvous: by default a file store in a fresh directory (every process is on
    # this host; torch's TCP store clients here sometimes stall 5 s on their first
    # ping when processes start in quick succession); on request, a TCP store that
    # the caller hosts on ``port``.
    store: TCPStore | None = None
    tmpdir = None
    if port is None or (transport == "tls" and credentials is None):
        tmpdir = tempfile.mkdtemp(prefix="smpc-run-")  # mode 0700: this user's only
    if transport == "tls" and credentials is None:
        credentials = _throwaway_credentials(os.path.join(str(tmpdir), "credentials"), names)
    if port is not None:
        store = TCPStore(
            "127.0.0.1",
            port,
            None,
            True,
            timeout=datetime.timedelta(seconds=timeout),
            wait_for_workers=False,
        )
    cfg = _Config(
        names,
        frac_bits,
        seed,
        float(timeout),
        str(truncation),
        threads,
        "127.0.0.1",
        0 if store is None else store.port,
        transport,
        None if port is not None or tmpdir is None else os.path.join(tmpdir, "store"),
        None if credentials is None else os.fspath(credentials),
        bool(insecure),
    )
    ctx = _context()
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[multiprocessing.connection.Connection] = []
    try:
        for rank in range(n + 1):
            parent_end, child_end = ctx.Pipe(duplex=False)
            target_program = program if rank < n else None
            p = ctx.Process(
                target=_worker,
                args=(child_end, rank, target_program, cfg),
                name=f"smpc-{names[rank] if rank < n else 'dealer'}",
                daemon=True,
            )
            p.start()
            child_end.close()
            procs.append(p)
            conns.append(parent_end)
        try:
            return _collect(names, procs, conns, timeout, return_exceptions)
        except BaseException as exc:
            dealer = procs[n]
            if not dealer.is_alive() and dealer.exitcode not in (0, None):
                exc.add_note(
                    f"the crypto provider process (rank {n}) exited with code {dealer.exitcode}"
                )
            raise
    finally:
        _reap(procs)
        for c in conns:
            c.close()
        del store
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _throwaway_credentials(folder: str, names: Sequence[str]) -> str:
    """A CA and every role's credentials for one run on this host (``transport="tls"``)."""
    from .credentials import create_ca, issue, role_uri

    create_ca(folder, name="smpc.run throwaway CA")
    for uri in [role_uri("party", n) for n in names] + [role_uri("provider")]:
        issue(folder, uri)
    return folder


def _collect(
    names: tuple[str, ...],
    procs: list[multiprocessing.process.BaseProcess],
    conns: list[multiprocessing.connection.Connection],
    timeout: float,
    return_exceptions: bool,
) -> list[Any]:
    """Gather every party's report; bound the wait once one has failed."""
    n = len(names)
    results: dict[int, Any] = {}
    errors: dict[int, tuple[BaseException, str]] = {}
    pending = set(range(n))
    deadline: float | None = None
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        waitables: list[Any] = [conns[r] for r in pending] + [procs[r].sentinel for r in pending]
        multiprocessing.connection.wait(waitables, timeout=left)
        for r in sorted(pending):
            report = _read_report(conns[r])
            if report is None and procs[r].is_alive():
                continue
            if report is None:
                report = _read_report(conns[r])  # it may have written just before exiting
            pending.discard(r)
            if report is None:
                errors[r] = (
                    PartyExitError(
                        f"the process of party {names[r]!r} (rank {r}) exited with code "
                        f"{procs[r].exitcode} without reporting a result"
                    ),
                    "",
                )
            elif report[0] == "ok":
                results[r] = report[1]
            else:
                errors[r] = (report[1], report[2])
        if errors and deadline is None:
            # The failed process is gone, so the others fail fast (connection closed);
            # one peer timeout bounds it anyway.
            deadline = time.monotonic() + timeout + _FAILURE_GRACE
    for r in pending:
        errors[r] = (
            PartyTimeoutError(
                f"party {names[r]!r} (rank {r}) did not finish within "
                f"{timeout + _FAILURE_GRACE} s after another party failed; terminated"
            ),
            "",
        )
    if return_exceptions:
        return [results[r] if r in results else _annotate(*errors[r], names, r) for r in range(n)]
    if errors:
        r, exc, tb = _pick_failure(names, dict(sorted(errors.items())))
        raise _annotate(exc, tb, names, r)
    return [results[r] for r in range(n)]


def _read_report(conn: multiprocessing.connection.Connection) -> tuple[Any, ...] | None:
    try:
        if not conn.poll():
            return None
        report = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return None
    assert isinstance(report, tuple)
    return report


def _annotate(exc: BaseException, tb: str, names: Sequence[str], rank: int) -> BaseException:
    exc.add_note(f"raised in party {names[rank]!r} (rank {rank}) of smpc.run")
    if tb:
        exc.__cause__ = _RemoteTraceback(f"\n\nremote traceback of party {names[rank]!r}:\n{tb}")
    return exc


def _reap(procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Join every process briefly; terminate, then kill, any that is still running."""
    deadline = time.monotonic() + _JOIN_TIMEOUT
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(1.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)


# --------------------------------------------------------------------------- CLI
def _parties_arg(text: str) -> tuple[str, ...]:
    """``--parties``: a count (>= 2) or comma-separated distinct names."""
    text = text.strip()
    try:
        if text.isdigit():
            return _names(int(text))
        names = [t.strip() for t in text.split(",")]
        if not all(names):
            raise ValueError(f"names must not be empty; got {text!r}")
        return _names(names)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(
            f"must be a count >= 2 or at least 2 distinct comma-separated names: {err}"
        ) from None


def _port_arg(text: str) -> int:
    """A TCP port number in [1, 65535] (``--master-port``, ``MASTER_PORT``)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port in [1, 65535]; got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [1, 65535]; got {port}")
    return port


def _timeout_arg(text: str) -> float:
    """``--timeout``: a finite positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0; got {text!r}")
    return value


def _frac_bits_arg(text: str) -> int:
    """``--frac-bits``: an int in [0, 30]."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 30:
        raise argparse.ArgumentTypeError(f"must be an int in [0, 30]; got {text!r}")
    return value


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="smpc-launch",
        description=(
            "Run one role (a party or the crypto provider) of a distributed smpc program. "
            "Ranks 0..n-1 are the parties (in --parties order), rank n the provider. "
            "Rendezvous: MASTER_ADDR and MASTER_PORT (rank 0 hosts the store); the role "
            "comes from --role or RANK; WORLD_SIZE, if set, must be n + 1."
        ),
    )
    ap.add_argument("script", nargs="?", help="Python file defining main(sess) (parties only)")
    ap.add_argument(
        "--parties",
        type=_parties_arg,
        required=True,
        help="comma-separated distinct names, or a count >= 2",
    )
    ap.add_argument("--role", help="a party name or 'dealer' (default: from RANK)")
    ap.add_argument(
        "--frac-bits", type=_frac_bits_arg, default=16, help="in [0, 30] (default: %(default)s)"
    )
    ap.add_argument("--timeout", type=_timeout_arg, default=60.0, help="seconds (default 60)")
    ap.add_argument("--seed", help="TESTING ONLY: reproducible randomness (same on every role)")
    ap.add_argument(
        "--truncation",
        choices=("probabilistic", "local"),
        default="probabilistic",
        help="(default: %(default)s)",
    )
    ap.add_argument("--master-addr", help="default: $MASTER_ADDR or 127.0.0.1")
    ap.add_argument("--master-port", type=_port_arg, help="default: $MASTER_PORT or 29533")
    ap.add_argument(
        "--transport",
        choices=("auto", "unix", "tls", "tcp"),
        default="auto",
        help=(
            "auto (default): Unix sockets when every role runs on this host, else TLS; "
            "tls: TLS 1.3 with mutual authentication (also on one host); tcp: plain gloo TCP"
        ),
    )
    ap.add_argument(
        "--credentials",
        help=(
            "folder with ca.pem and this role's certificate and key (made by "
            "smpc-credentials); default: $SMPC_CREDENTIALS"
        ),
    )
    ap.add_argument(
        "--insecure",
        action="store_true",
        help="across machines without credentials: plain TCP, readable and forgeable on the path",
    )
    ap.add_argument(
        "--address",
        help="address this role listens on and advertises (default: the one routing to "
        "MASTER_ADDR)",
    )
    ap.add_argument(
        "--listen-port",
        type=int,
        default=0,
        help="TCP port this role listens on for TLS peers (default: any free port)",
    )
    ap.add_argument(
        "--local",
        action="store_true",
        help="run every role on this machine (smpc.run) instead of one role",
    )
    return ap


def _load_main(script: str) -> Callable[[Any], Any]:
    namespace = runpy.run_path(script, run_name="__smpc_main__")
    fn = namespace.get("main")
    if not callable(fn):
        raise SystemExit(f"smpc-launch: {script} must define a function main(sess)")
    return fn  # type: ignore[no-any-return]


class _ScriptProgram:
    """A picklable program that loads ``main`` from a script file in each process."""

    def __init__(self, script: str) -> None:
        self.script = os.path.abspath(script)

    def __call__(self, sess: Any) -> Any:
        return _load_main(self.script)(sess)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``smpc-launch`` (see ``docs/runtimes.md``)."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.script is not None and not os.path.isfile(args.script):
        ap.error(f"script {args.script!r} not found")
    if not args.local:  # this process is a party or the provider (see perf.batch_scheduling)
        from .perf import batch_scheduling

        batch_scheduling()
    names: tuple[str, ...] = args.parties
    n = len(names)
    seed = args.seed
    if seed is not None and seed.lstrip("-").isdigit():
        seed = int(seed)
    if args.local:
        if not args.script:
            ap.error("--local needs a script")
        results = run(
            _ScriptProgram(args.script),
            names,
            frac_bits=args.frac_bits,
            seed=seed,
            timeout=args.timeout,
            truncation=args.truncation,
            port=args.master_port,
            transport=args.transport,
            credentials=args.credentials,
            insecure=args.insecure,
        )
        for name, value in zip(names, results, strict=True):
            print(f"{name}: {value!r}")
        return 0
    if args.role is not None:
        if args.role == "dealer":
            rank = n
        elif args.role.isdigit():
            rank = int(args.role)
        elif args.role in names:
            rank = names.index(args.role)
        else:
            ap.error(f"--role must be one of {names} or 'dealer'; got {args.role!r}")
    elif "RANK" in os.environ:
        if not os.environ["RANK"].strip().isdigit():
            ap.error(f"RANK must be an int in [0, {n}]; got {os.environ['RANK']!r}")
        rank = int(os.environ["RANK"])
    else:
        ap.error("give --role or set RANK")
    if not 0 <= rank <= n:
        ap.error(f"rank must be in [0, {n}] (n parties + the dealer); got {rank}")
    world = os.environ.get("WORLD_SIZE")
    if world is not None and world.strip() != str(n + 1):
        ap.error(f"WORLD_SIZE must be {n + 1} ({n} parties + dealer); got {world!r}")
    addr = args.master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
    if args.master_port is not None:
        port = args.master_port
    else:
        try:
            port = _port_arg(os.environ.get("MASTER_PORT", "29533"))
        except argparse.ArgumentTypeError as err:
            ap.error(f"MASTER_PORT {err}")
    if rank == n:
        stats = run_dealer(
            names,
            seed=seed,
            timeout=args.timeout,
            master_addr=addr,
            master_port=port,
            transport=args.transport,
            credentials=args.credentials,
            insecure=args.insecure,
            address=args.address,
            listen_port=args.listen_port,
        )
        print(f"dealer: {stats}", file=sys.stderr)
        return 0
    if not args.script:
        ap.error("a party needs a script defining main(sess)")
    fn = _load_main(args.script)
    result = run_party(
        fn,
        rank,
        names,
        frac_bits=args.frac_bits,
        seed=seed,
        timeout=args.timeout,
        truncation=args.truncation,
        master_addr=addr,
        master_port=port,
        transport=args.transport,
        credentials=args.credentials,
        insecure=args.insecure,
        address=args.address,
        listen_port=args.listen_port,
    )
    if result is not None:
        print(f"{names[rank]}: {result!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

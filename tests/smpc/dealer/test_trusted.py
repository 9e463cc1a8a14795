"""The provider process's serve loop, run in threads of this process over gloo."""

from __future__ import annotations

import pickle
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed import HashStore

from smpc import ring
from smpc.comm.framing import MessageKind
from smpc.comm.torchdist import TorchDistCommunicator
from smpc.dealer.base import Component, Kind, request_codec
from smpc.dealer.trusted import DealerStats, TrustedDealer, TrustedDealerClient
from smpc.errors import DealerError, PartyTimeoutError, ProtocolError
from smpc.protocols import beaver, truncation
from smpc.protocols.beaver import (
    KeepingMatmulTruncTriple,
    KeptBilinearTruncTriple,
    LinearBackwardTriple,
    MulTriple,
    OperandMask,
)
from smpc.protocols.truncation import TruncPair
from smpc.ring import MatmulOp

# The request classes these tests send (a provider decodes only the classes it is given).
REQUESTS = (*beaver.REQUEST_TYPES, *truncation.REQUEST_TYPES)


def _serve(
    party: Callable[[TrustedDealerClient, int], Any], *, speculate: bool = True
) -> tuple[DealerStats, list[Any]]:
    """Run a provider and two parties (threads); return its stats and the parties' results."""
    store = HashStore()
    stats: list[DealerStats] = []
    results: list[Any] = [None, None]
    errors: list[BaseException] = []

    def guard(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # reported below
                errors.append(e)

        return run

    def dealer() -> None:
        provider = TrustedDealer(
            2, store=store, seed=1, timeout=30, speculate=speculate, request_types=REQUESTS
        )
        stats.append(provider.serve())

    def run_party(rank: int) -> None:
        comm = TorchDistCommunicator(rank, 2, store=store, timeout=30)
        client = TrustedDealerClient(comm)
        try:
            results[rank] = party(client, rank)
        finally:
            client.close()

    threads = [threading.Thread(target=guard(dealer))]
    threads += [threading.Thread(target=guard(lambda r=r: run_party(r))) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return stats[0], results


def _triples(client: TrustedDealerClient, rank: int, count: int) -> list[torch.Tensor]:
    out = []
    for _ in range(count):
        t = client.request(MulTriple((1000,), (1000,)))
        out.append(torch.stack([t["a"], t["b"], t["c"]]))
    return out


def test_provider_keeps_a_bounded_number_of_sends_in_flight() -> None:
    # gloo reports a send complete only after wait(): the provider must wait for
    # old sends itself, or it would keep every correction buffer (memory grows).
    stats, (p0, p1) = _serve(lambda client, rank: _triples(client, rank, 40))
    assert stats.requests == 40
    assert stats.correction_bytes == 40 * 1000 * 8
    assert 1 <= stats.peak_in_flight <= 3
    for s0, s1 in zip(p0, p1, strict=True):  # every triple is right: c = a * b
        a, b, c = s0 + s1
        assert torch.equal(a * b, c)


def test_unread_corrections_do_not_deadlock() -> None:
    # The last party requests many triples before it reads any: the provider's
    # waits for old sends complete once the party reads them in order.
    def party(client: TrustedDealerClient, rank: int) -> torch.Tensor:
        shares = [client.request(MulTriple((500,), (500,))) for _ in range(12)]
        return torch.stack([s["c"] for s in shares])

    stats, results = _serve(party)
    assert stats.requests == 12
    assert stats.peak_in_flight <= 3
    assert results[0].shape == results[1].shape == (12, 500)


def _mixed_requests(client: TrustedDealerClient, rank: int) -> list[torch.Tensor]:
    """A loop of requests that repeats, then changes (the provider's guesses miss), with
    a mask kept for later products, a linear layer's forward masks kept until its
    backward releases them, and a correction larger than a frame (1 MiB)."""
    big = (150_000,)  # 1.2 MB of correction: received into a buffer posted with the request
    step = [("mask", 7), ("kept", 7), ("fwd", -2), ("mul", big), ("bwd", -2), ("trunc", (30,))]
    # a guessed mask 7 replaced the kept one, then mask 8 came: the old mask 7 is back;
    # a guessed backward released forward -2's masks, then forward -4 came: they are back
    plan = step * 3 + [("mask", 8), ("kept", 7), ("kept", 8), ("fwd", -2), ("fwd", -4)]
    plan += [("bwd", -4), ("trunc", (30,)), ("bwd", -2), ("mul", big)]
    plan += step * 2
    plan += [("mul", (5,)), ("mask", 9)] + step
    out = []
    for kind, arg in plan:
        if kind == "mask":
            t = client.request(OperandMask((3, 4), arg))
            out.append(t["b"].reshape(-1))
        elif kind == "kept":
            t = client.request(KeptBilinearTruncTriple(ring.MatmulOp(), (2, 3), (3, 4), 16, arg))
            out += [t["a"].reshape(-1), t["c"].reshape(-1), t["s"].reshape(-1)]
        elif kind == "fwd":
            t = client.request(KeepingMatmulTruncTriple((20, 30), (30, 4), 16, arg))
            out += [t["a"].reshape(-1), t["b"].reshape(-1), t["c"].reshape(-1)]
        elif kind == "bwd":
            t = client.request(LinearBackwardTriple((20, 4), (20, 30), 16, arg, True, True, False))
            out += [t["a"].reshape(-1), t["cx"].reshape(-1), t["cw"].reshape(-1)]
        elif kind == "mul":
            t = client.request(MulTriple(arg, arg))
            out += [t["a"], t["b"], t["c"]]
        else:
            t = client.request(TruncPair(arg, 16))
            out += [t["r"], t["neg_r_hi"], t["s"]]
    return [v.clone() for v in out]


def test_speculation_changes_no_share() -> None:
    """Computing each correction ahead of its request (and undoing wrong guesses:
    streams rewound, kept masks restored) gives every party exactly the shares a
    provider that waits for each request gives."""
    spec_stats, spec = _serve(_mixed_requests, speculate=True)
    plain_stats, plain = _serve(_mixed_requests, speculate=False)
    assert plain_stats.speculated == 0
    assert spec_stats.requests == plain_stats.requests == 41  # + 6 small ones from pools
    assert spec_stats.kept_masks == plain_stats.kept_masks == 3  # operand masks 7, 8, 9
    assert 0 < spec_stats.speculation_hits < spec_stats.speculated  # hits and misses
    for rank in (0, 1):
        assert len(spec[rank]) == len(plain[rank])
        for a, b in zip(spec[rank], plain[rank], strict=True):
            assert torch.equal(a, b)
    # and the triples are right: c = a * b for the large ones
    a, b, c = (spec[0][i] + spec[1][i] for i in (7, 8, 9))
    assert a.numel() == 150_000 and torch.equal(a * b, c)
    # and the backward's triples use the forward's masks: cw = a^T @ xa
    xa, _, _ = (spec[0][i] + spec[1][i] for i in (4, 5, 6))
    ga, _, cw = (spec[0][i] + spec[1][i] for i in (10, 11, 12))
    assert torch.equal(ring.matmul(ga.view(20, 4).t(), xa.view(20, 30)), cw.view(4, 30))


def test_a_provider_failure_is_fatal_for_the_session() -> None:
    """A request the provider cannot serve raises DealerError on the party; later
    requests raise too (receives posted for large corrections no longer line up)."""

    def party(client: TrustedDealerClient, rank: int) -> list[str]:
        errors = []
        t = client.request(MulTriple((200_000,), (200_000,)))
        # unknown kept-mask key: the provider reports the failure
        bad = client.request(
            KeptBilinearTruncTriple(ring.MatmulOp(), (400, 300), (300, 400), 16, 99)
        )
        for fn in (lambda: bad["c"], lambda: client.request(MulTriple((3,), (3,)))):
            try:
                fn()
            except DealerError as e:
                errors.append(str(e))
        assert t["a"].shape == (200_000,)
        return errors

    _, (p0, p1) = _serve(party)
    assert p0 == []  # party 0 never talks to the provider after the seed
    assert len(p1) == 2
    assert "no kept mask with key 99" in p1[0]
    assert "failed earlier" in p1[1]


def test_small_requests_come_from_pools() -> None:
    """A small elementwise request is served from a pool of POOL instances, drawn
    in one provider request: 600 one-element products cost 3 requests; the stats
    count every instance, as the simulation's dealer does."""
    from smpc.dealer.base import POOL
    from smpc.dealer.trusted import TrustedDealerClient as Client

    def party(client: Client, rank: int) -> tuple[list[torch.Tensor], int, int]:
        before = client._stats.dealer_requests
        shares = [client.request(MulTriple((1,), (1,))) for _ in range(600)]
        out = [torch.stack([t["a"], t["b"], t["c"]]) for t in shares]
        return out, client._stats.dealer_requests - before, client._stats.dealer_bytes

    stats, (p0, p1) = _serve(party)
    assert POOL == 256 and stats.requests == 3  # ceil(600 / 256)
    assert p0[1] == p1[1] == 600 and p0[2] == p1[2] == 600 * 8
    for s0, s1 in zip(p0[0], p1[0], strict=True):
        a, b, c = s0 + s1
        assert torch.equal(a * b, c)
    assert len({(int(s0[0]), int(s1[0])) for s0, s1 in zip(p0[0], p1[0], strict=True)}) == 600


# ----------------------------------------------------------------- hostile or vanished parties
def _run_roles(
    party: Callable[[TrustedDealerClient, int], Any],
    *,
    on_dealer_exit: Callable[[], None] = lambda: None,
    **dealer_kwargs: Any,
) -> tuple[Any, list[Any]]:
    """A provider and two parties (threads); each slot holds a result or the exception raised."""
    store = HashStore()
    out: dict[str, Any] = {}

    def dealer() -> None:
        try:
            kwargs = {"request_types": REQUESTS, **dealer_kwargs}
            out["dealer"] = TrustedDealer(2, store=store, seed=1, **kwargs).serve()
        except BaseException as e:  # the test inspects it
            out["dealer"] = e
        on_dealer_exit()

    def run_party(rank: int) -> None:
        try:
            comm = TorchDistCommunicator(rank, 2, store=store, timeout=30)
            client = TrustedDealerClient(comm)
            try:
                out[rank] = party(client, rank)
            finally:
                client.close()
        except BaseException as e:  # the test inspects it
            out[rank] = e

    threads = [threading.Thread(target=dealer)]
    threads += [threading.Thread(target=run_party, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a role hung"
    return out["dealer"], [out[0], out[1]]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@dataclass(frozen=True, slots=True)
class _UnknownRequest:
    """A request class outside the provider's allow-list."""

    shape: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        return (Component("a", Kind.RANDOM, self.shape),)

    def derive(self, values: Any) -> dict[str, torch.Tensor]:
        return {}


def _raw_request(client: TrustedDealerClient, data: bytes) -> Any:
    """Send ``data`` as the next request, bypassing the codec (a hostile last party)."""
    ch = client._channel
    ch.send(
        client._dealer, 1, MessageKind.REQUEST, torch.frombuffer(bytearray(data), dtype=torch.uint8)
    )
    return ch.recv(
        client._dealer, 1, MessageKind.CORRECTION, "hostile", accept=(MessageKind.ERROR,)
    )


def test_crafted_pickle_request_runs_no_code(tmp_path: Path) -> None:
    # Prepare: the last party sends a pickle whose loading would create `marker`
    marker = tmp_path / "marker"

    def party(client: TrustedDealerClient, rank: int) -> Any:
        return _raw_request(client, pickle.dumps(_Evil(marker))) if rank == 1 else None

    # Execute
    dealer, (_, reply) = _run_roles(party, timeout=10)
    # Assert: the provider refused it (and said so to the party), no code ran
    assert isinstance(dealer, ProtocolError) and "'party1' (rank 1)" in str(dealer)
    kind, raw, _ = reply
    assert kind is MessageKind.ERROR and b"ProtocolError" in raw.numpy().tobytes()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (_UnknownRequest((3,)), "is not allowed"),
        (MulTriple((1 << 40,), (1,)), "the limit is"),  # 8 TiB of randomness: never allocated
        (MatmulOp(), "not a dealer request"),
    ],
    ids=["unknown-class", "oversized", "not-a-request"],
)
def test_unexpected_or_oversized_requests_are_refused(request_: Any, match: str) -> None:
    # Prepare: the encoding of a request the provider must not serve
    data = request_codec(encode_any=True).encode(request_)

    def party(client: TrustedDealerClient, rank: int) -> Any:
        return _raw_request(client, data) if rank == 1 else None

    # Execute
    dealer, (_, reply) = _run_roles(party, timeout=10)
    # Assert: refused with a reason, told to the party first
    assert isinstance(dealer, ProtocolError) and re.search(match, str(dealer))
    kind, raw, _ = reply
    assert kind is MessageKind.ERROR and re.search(match, raw.numpy().tobytes().decode())


def test_provider_gives_up_when_the_last_party_stalls() -> None:
    # Prepare: the last party asks once, then stalls far longer than the idle timeout
    resumed = threading.Event()

    def party(client: TrustedDealerClient, rank: int) -> Any:
        client.request(MulTriple((4,), (4,)))
        if rank == 1:
            time.sleep(6.0)
            resumed.set()
        return rank

    # Execute
    stalled_at_exit: list[bool] = []
    dealer, _ = _run_roles(
        party,
        timeout=10,
        idle_timeout=1.0,
        on_dealer_exit=lambda: stalled_at_exit.append(not resumed.is_set()),
    )
    # Assert: the provider gave up (naming the last party and its idle timeout) while
    # the party was still stalled, instead of waiting for it indefinitely
    assert isinstance(dealer, PartyTimeoutError)
    assert "'party1' (rank 1)" in str(dealer) and "within 1 s" in str(dealer)
    assert stalled_at_exit == [True]


def test_a_live_gap_within_the_idle_timeout_is_allowed() -> None:
    # every role idles (local work) longer than the session timeout but within idle_timeout
    def party(client: TrustedDealerClient, rank: int) -> Any:
        first = client.request(MulTriple((1000,), (1000,)))["c"].clone()  # not pooled
        time.sleep(1.5)
        return first, client.request(MulTriple((1000,), (1000,)))["c"].clone()

    dealer, results = _run_roles(party, timeout=1.0, idle_timeout=5.0)
    assert isinstance(dealer, DealerStats) and dealer.requests == 2
    assert all(isinstance(r, tuple) for r in results)


def test_bad_provider_arguments() -> None:
    with pytest.raises(ValueError, match="`idle_timeout`"):
        TrustedDealer(2, store=HashStore(), idle_timeout=float("inf"))
    with pytest.raises(ValueError, match="`timeout`"):
        TrustedDealer(2, store=HashStore(), timeout=float("nan"))

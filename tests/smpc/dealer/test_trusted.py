"""The provider process's serve loop, run in threads of this process over gloo."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed import HashStore

from smpc.comm.torchdist import TorchDistCommunicator
from smpc.dealer.base import MulTriple
from smpc.dealer.trusted import DealerStats, TrustedDealer, TrustedDealerClient


def _serve(party: Callable[[TrustedDealerClient, int], Any]) -> tuple[DealerStats, list[Any]]:
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
        stats.append(TrustedDealer(2, store=store, seed=1, timeout=30).serve())

    def run_party(rank: int) -> None:
        comm = TorchDistCommunicator(rank, 2, store=store, timeout=30)
        client = TrustedDealerClient(comm)
        results[rank] = party(client, rank)
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

"""Sharing: shares look uniform, one party's view is independent of the secret, and the
party-dependent local helpers give each runtime its part of the same result."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc.comm.base import Communicator
from smpc.prg import AesPrg
from smpc.protocols.beaver import MulTriple
from smpc.sharing import (
    add_public,
    add_public_,
    addcmul_public_,
    additive_shares,
    per_party,
    public_share,
    reconstruct,
    xor_public,
    xor_public_,
)


def _chi2_bytes(values: torch.Tensor) -> float:
    """Chi-square statistic of the byte histogram of int64 values (255 dof)."""
    b = values.contiguous().view(torch.uint8).long()
    counts = torch.bincount(b, minlength=256).double()
    expected = b.numel() / 256
    return float(((counts - expected) ** 2 / expected).sum())


# Chi-square with 255 degrees of freedom: the 0.9999 quantile is about 347.
CHI2_LIMIT = 350.0


def test_reconstruct_exact() -> None:
    x = torch.randint(-(2**63), 2**63 - 1, (1000,))
    for n in (2, 3, 5):
        assert torch.equal(reconstruct(additive_shares(x, n, AesPrg())), x)


def test_shares_of_fixed_secret_are_uniform() -> None:
    secret = torch.full((50_000,), 12345, dtype=torch.int64)
    for n in (2, 3):
        shares = additive_shares(secret, n, AesPrg())
        for i in range(n):
            assert _chi2_bytes(shares[i]) < CHI2_LIMIT


def test_one_party_view_independent_of_secret() -> None:
    """Party 0's shares of 0 and of a large secret have indistinguishable byte histograms."""
    with smpc.Session(parties=3) as sess:
        a = sess.share(torch.zeros(40_000)).shares[1]
        b = sess.share(torch.full((40_000,), 30000.0)).shares[1]
    ca = torch.bincount(a.contiguous().view(torch.uint8).long(), minlength=256).double()
    cb = torch.bincount(b.contiguous().view(torch.uint8).long(), minlength=256).double()
    # Two-sample chi-square homogeneity test, 255 dof.
    tot = ca + cb
    ea, eb = tot * ca.sum() / tot.sum(), tot * cb.sum() / tot.sum()
    chi2 = float(((ca - ea) ** 2 / ea + (cb - eb) ** 2 / eb).sum())
    assert chi2 < CHI2_LIMIT


def test_beaver_openings_differ_across_runs() -> None:
    """The opened masked values of a product change from run to run (fresh triples)."""
    x = torch.tensor([3.0, 4.0])
    seen = []
    for _ in range(2):
        with smpc.Session(parties=2) as sess:
            xs = sess.share(x)
            t = sess.dealer.request(MulTriple((2,), (2,)))
            seen.append((xs.share - t["a"]).sum(0))
    assert not torch.equal(seen[0], seen[1])


def test_seed_switch_makes_runs_reproducible() -> None:
    outs = []
    for _ in range(2):
        with smpc.Session(parties=2, seed=42) as sess:
            outs.append(sess.share(torch.tensor([1.0, 2.0])).share.clone())
    assert torch.equal(outs[0], outs[1])


# ----------------------------------------------------------------- party-dependent local steps
class _PeerGroup:
    """A process group that is never used: the helpers below are local."""

    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int) -> None:  # noqa: N803
        raise AssertionError("a local helper sent a message")

    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int) -> None:  # noqa: N803
        raise AssertionError("a local helper posted a receive")


def _runtimes(n: int) -> tuple[Communicator, list[Communicator]]:
    """The simulation, and every party's distributed endpoint (over a group never used)."""
    from smpc.comm.local import LocalCommunicator
    from smpc.comm.torchdist import TorchDistCommunicator

    ranks = [TorchDistCommunicator(r, n, pg=_PeerGroup()) for r in range(n)]
    return LocalCommunicator(n), list(ranks)


def _both(
    n: int, stacked: torch.Tensor, step: Callable[[Communicator, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``step`` in simulation; checks that each rank alone computes its row of the same result."""
    sim, ranks = _runtimes(n)
    assert sim.holds_party0 and [c.holds_party0 for c in ranks] == [r == 0 for r in range(n)]
    out = step(sim, stacked.clone())
    for r, comm in enumerate(ranks):
        assert torch.equal(step(comm, stacked[r].clone()), out[r]), f"rank {r}"
    return out


ring_values = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 5),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    public=ring_values,
)
def test_party_zero_absorbs_public_values_in_both_runtimes(
    n: int, shape: list[int], seed: int, public: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    stacked = torch.randint(-(2**63), 2**63 - 1, (n, *shape), generator=g)
    p = torch.randint(-(2**63), 2**63 - 1, tuple(shape), generator=g)
    q = torch.randint(-(2**63), 2**63 - 1, tuple(shape), generator=g)
    x = reconstruct(stacked)
    xor = stacked[0].clone()
    for i in range(1, n):
        xor ^= stacked[i]

    def xor_of(t: torch.Tensor) -> torch.Tensor:
        out = t[0].clone()
        for i in range(1, n):
            out ^= t[i]
        return out

    assert torch.equal(reconstruct(_both(n, stacked, lambda c, s: add_public(c, s, p))), x + p)
    assert torch.equal(
        reconstruct(_both(n, stacked, lambda c, s: add_public(c, s, public))), x + public
    )
    assert torch.equal(reconstruct(_both(n, stacked, lambda c, s: add_public_(c, s, p))), x + p)
    got = _both(n, stacked, lambda c, s: addcmul_public_(c, s, p, q))
    assert torch.equal(reconstruct(got), x + p * q)
    assert torch.equal(xor_of(_both(n, stacked, lambda c, s: xor_public(c, s, p))), xor ^ p)
    assert torch.equal(
        xor_of(_both(n, stacked, lambda c, s: xor_public_(c, s, public))), xor ^ public
    )
    zeros = torch.zeros((n, *shape), dtype=torch.int64)
    assert torch.equal(reconstruct(_both(n, zeros, lambda c, s: public_share(c, p))), p)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 5),
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_per_party_maps_party_zero_and_the_rest_apart(n: int, shape: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    stacked = torch.randint(-(2**63), 2**63 - 1, (n, *shape), generator=g)
    got = _both(n, stacked, lambda c, s: per_party(c, s, lambda v: v >> 3, lambda v: -v))
    assert torch.equal(got[0], stacked[0] >> 3)
    assert torch.equal(got[1:], -stacked[1:])

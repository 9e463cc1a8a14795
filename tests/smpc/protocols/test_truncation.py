"""Truncation: at most one ulp of error, never a large error for in-range inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smpc
from smpc.protocols.truncation import trunc, trunc_local, trunc_many
from smpc.sharing import additive_shares
from tests.strategies import party_counts, seeds


def _values(count: int, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**bits), 2**bits, (count,), generator=g)


@given(party_counts, st.lists(st.tuples(st.integers(1, 61), st.integers(0, 40)), max_size=4), seeds)
def test_trunc_many_each_by_its_bits_in_one_round(
    n: int, items: list[tuple[int, int]], seed: int
) -> None:
    """Values truncated by different numbers of bits share one round, each within one ulp."""
    xs = [_values(50 + i, bits, seed + i) for i, (bits, _) in enumerate(items)]
    with smpc.Session(parties=n) as sess:
        shared = [(additive_shares(x, n, sess.prg), f) for x, (_, f) in zip(xs, items, strict=True)]
        before = sess.stats.snapshot()
        zs = trunc_many(sess.comm, sess.dealer, shared)
        cost = sess.stats - before
    assert cost.rounds == (1 if items else 0)
    assert cost.bytes_per_party[0] == sum(x.numel() for x in xs) * 8 * (n - 1)
    for z, x, (_, f) in zip(zs, xs, items, strict=True):
        diff = (x >> f) - z.sum(0)
        assert bool(((diff == 0) | (diff == -1)).all())


@given(party_counts, st.integers(1, 61), st.integers(0, 30), seeds)
def test_trunc_within_one_ulp(n: int, bits: int, f: int, seed: int) -> None:
    x = _values(500, bits, seed)
    with smpc.Session(parties=n) as sess:
        z = trunc(sess.comm, sess.dealer, additive_shares(x, n, sess.prg), f).sum(0)
    exact = x >> f  # floor division
    diff = exact - z
    assert bool(((diff == 0) | (diff == -1)).all())


def test_trunc_edges() -> None:
    lim = 2**62 - 1
    x = torch.tensor([0, 1, -1, 2**16, -(2**16), lim, -lim, 2**40 + 12345, -(2**40) - 7])
    for n in (2, 3, 5):
        with smpc.Session(parties=n) as sess:
            z = trunc(sess.comm, sess.dealer, additive_shares(x, n, sess.prg), 16).sum(0)
        diff = (x >> 16) - z
        assert bool(((diff == 0) | (diff == -1)).all()), (n, diff)


@pytest.mark.parametrize("n", [2, 3])
def test_sweep_million_products(n: int) -> None:
    """10^6 random fixed-point products across the documented range: no error above 2 ulps
    beyond the encoding error (the truncation itself never errs by more than one ulp)."""
    count = 1_000_000
    fp = smpc.FixedPoint(16)
    g = torch.Generator().manual_seed(n)
    x = (torch.rand(count, generator=g, dtype=torch.float64) * 2 - 1) * fp.max_value
    y = (torch.rand(count, generator=g, dtype=torch.float64) * 2 - 1) * fp.max_value
    with smpc.Session(parties=n) as sess:
        z = (sess.share(x) * sess.share(y)).share.sum(0)
    ex, ey = fp.encode(x), fp.encode(y)
    exact = (ex * ey) >> 16  # exact: |ex*ey| < 2^62 fits in int64
    diff = exact - z
    assert int(diff.min()) >= -1 and int(diff.max()) <= 0


def test_trunc_cost() -> None:
    with smpc.Session(parties=3) as sess:
        x = additive_shares(_values(10, 40, 0), 3, sess.prg)
        before = sess.stats.snapshot()
        trunc(sess.comm, sess.dealer, x, 16)
        d = sess.stats - before
        assert d.rounds == 1 and d.bytes_per_party == [2 * 8 * 10] * 3
        assert d.dealer_bytes == 2 * 8 * 10  # two correction shares (r_hi, s)


def test_local_truncation_is_opt_in_and_measured() -> None:
    """SecureML local truncation (2 parties only) fails with a large error at a rate of about
    |x| / 2^63 per element: measured here for |x| ~ 2^58 (rate ~ 2^-5)."""
    with pytest.raises(ValueError, match="2 parties"):
        smpc.Session(parties=3, truncation="local")
    x = _values(200_000, 58, 3)
    with smpc.Session(parties=2, truncation="local") as sess:
        z = trunc_local(sess.comm, additive_shares(x, 2, sess.prg), 16).sum(0)
    big = ((x >> 16) - z).abs() > 1
    rate = float(big.double().mean())
    assert 0.005 < rate < 0.06  # expected ~ E|x| / 2^63 = 2^57 / 2^63 = 1.6 %
    with smpc.Session(parties=2, truncation="local") as sess:
        out = (sess.share(torch.tensor([3.0])) * sess.share(torch.tensor([2.0]))).reveal()
    assert abs(out.item() - 6.0) < 1e-3

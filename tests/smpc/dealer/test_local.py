"""The in-process crypto provider (``smpc.dealer.local``): material is correct over Z_2^64.

Every request's shares, summed (or XORed) over the party axis, satisfy the
request's relation exactly, for 2-5 parties, pooled and unpooled requests; the
provider is deterministic only under a seeded key (the testing switch).
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smpc import ring
from smpc.comm.stats import Stats
from smpc.dealer.base import POOL, poolable
from smpc.dealer.local import LocalDealer, generate_stacked
from smpc.prg import AesPrg, key_from_seed
from smpc.protocols.beaver import BilinearTriple, MulTriple, SquarePair
from smpc.protocols.convert import BitPair

from ...strategies import broadcastable_pair, party_counts, shapes


def _dealer(n: int, seed: int | None = 0) -> LocalDealer:
    key = None if seed is None else key_from_seed(seed, label="test-local-dealer")
    return LocalDealer(n, Stats(n), key=key)


def _xor_reduce(t: torch.Tensor) -> torch.Tensor:
    out = t[0].clone()
    for row in t[1:]:
        out ^= row
    return out


@settings(max_examples=40, deadline=None)
@given(n=party_counts, pair=broadcastable_pair(), seed=st.integers(0, 2**31))
def test_mul_triple_sums_to_a_product(n: int, pair: tuple[tuple[int, ...], ...], seed: int) -> None:
    sa, sb = pair
    dealer = _dealer(n, seed)
    t = dealer.request(MulTriple(sa, sb))
    assert t["a"].shape == (n, *sa) and t["b"].shape == (n, *sb)
    a, b, c = t["a"].sum(0), t["b"].sum(0), t["c"].sum(0)
    assert torch.equal(c, a * b)  # int64 arithmetic wraps: exactly the ring Z_2^64


@settings(max_examples=30, deadline=None)
@given(n=party_counts, shape=shapes(min_dims=1, max_dims=3, max_side=12))
def test_square_pair_sums_to_a_square(n: int, shape: tuple[int, ...]) -> None:
    t = _dealer(n).request(SquarePair(shape))
    a = t["a"].sum(0)
    assert torch.equal(t["c"].sum(0), a * a)


@settings(max_examples=30, deadline=None)
@given(n=party_counts, m=st.integers(1, 6), k=st.integers(1, 9), p=st.integers(1, 6))
def test_matmul_triple_sums_to_a_ring_matmul(n: int, m: int, k: int, p: int) -> None:
    t = _dealer(n).request(BilinearTriple(ring.MatmulOp(), (m, k), (k, p)))
    a, b, c = t["a"].sum(0), t["b"].sum(0), t["c"].sum(0)
    # Plaintext oracle: the wrapping int64 product, row by column.
    expected = (a.unsqueeze(-1) * b.unsqueeze(0)).sum(1)
    assert torch.equal(c, expected)


@settings(max_examples=30, deadline=None)
@given(n=party_counts, size=st.integers(1, 200))
def test_bit_pair_is_one_bit_shared_twice(n: int, size: int) -> None:
    t = _dealer(n).request(BitPair((size,)))
    bit = _xor_reduce(t["s_xor"]) & 1
    assert torch.equal(t["s"].sum(0), bit)
    assert set(bit.unique().tolist()) <= {0, 1}


def test_pooled_requests_give_fresh_instances_and_count_bytes() -> None:
    n = 3
    req = MulTriple((4,), (4,))
    assert poolable(req)
    stats = Stats(n)
    dealer = LocalDealer(n, stats, key=key_from_seed(0, label="test-local-dealer"))
    first = dealer.request(req)
    second = dealer.request(req)
    assert not torch.equal(first["a"], second["a"])  # a new instance per request
    corr = 4 * 8  # one derived component of 4 ring elements
    assert stats.dealer_bytes == 2 * corr and stats.dealer_requests == 2
    assert dealer.sent_bytes == POOL * corr  # the whole pool is drawn with its first use
    for t in (first, second):
        assert torch.equal(t["c"].sum(0), t["a"].sum(0) * t["b"].sum(0))


def test_unpooled_request_counts_its_correction() -> None:
    req = MulTriple((100,), (100,))
    assert not poolable(req)
    stats = Stats(4)
    dealer = LocalDealer(4, stats)
    dealer.request(req)
    assert dealer.sent_bytes == stats.dealer_bytes == 100 * 8


def test_seeded_key_is_deterministic_and_default_key_is_not() -> None:
    req = MulTriple((3, 5), (5,))
    same = [_dealer(3, seed=7).request(req)["a"] for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], _dealer(3, seed=8).request(req)["a"])
    fresh = [_dealer(3, seed=None).request(req)["a"] for _ in range(2)]  # os.urandom keys
    assert not torch.equal(fresh[0], fresh[1])


@settings(max_examples=20, deadline=None)
@given(n=party_counts, batch=st.integers(1, 5), size=st.integers(1, 10))
def test_generate_stacked_batches_independent_instances(n: int, batch: int, size: int) -> None:
    prg = AesPrg(key_from_seed(1, label="test"))
    t = generate_stacked(MulTriple((size,), (size,)), n, prg, batch=batch)
    prg.close()
    assert t["c"].shape == (n, batch, size)
    assert torch.equal(t["c"].sum(0), t["a"].sum(0) * t["b"].sum(0))


def test_shares_look_uniform() -> None:
    # Each party's share of ``a`` alone is uniform bytes (chi-square, 255 dof, 0.9999 quantile).
    t = _dealer(2, seed=None).request(SquarePair((1 << 14,)))
    b = t["a"][0].contiguous().view(torch.uint8).long()
    counts = torch.bincount(b, minlength=256).double()
    expected = b.numel() / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < 350.0
    assert math.prod(t["c"].shape) == 2 << 14

"""Tests of the dealer-assisted table lookup on small shared integers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc.protocols import lookup
from smpc.sharing import additive_shares

from ...strategies import party_counts, shapes


def _shares(sess: smpc.Session, plain: torch.Tensor) -> torch.Tensor:
    return additive_shares(plain, sess.world_size, sess.prg)


@given(
    n=party_counts,
    seed=st.integers(0, 2**31),
    shape=shapes(min_dims=0, max_dims=3),
    bits=st.integers(1, 6),
    offset=st.integers(-(2**40), 2**40),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_lookup_matches_the_table(
    n: int, seed: int, shape: tuple[int, ...], bits: int, offset: int, data: st.DataObject
) -> None:
    domain = 1 << bits
    table = data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=domain, max_size=domain))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, domain, shape, generator=g, dtype=torch.int64)
    mul = torch.randint(-(2**50), 2**50, shape, generator=g, dtype=torch.int64)
    s = idx + offset
    want = torch.tensor(table, dtype=torch.int64)[idx]
    with smpc.Session(parties=n, seed=seed) as sess:
        before = sess.stats.snapshot()
        f, none = lookup.lookup(sess.comm, sess.dealer, _shares(sess, s), table, offset=offset)
        mid = sess.stats.snapshot()
        f2, fm = lookup.lookup(
            sess.comm,
            sess.dealer,
            _shares(sess, s),
            table,
            offset=offset,
            mul=_shares(sess, mul),
        )
        after = sess.stats.snapshot()
    assert none is None and fm is not None
    assert torch.equal(f.sum(0), want) and torch.equal(f2.sum(0), want)
    assert torch.equal(fm.sum(0), want * mul)
    numel = idx.numel()
    for d, m in ((mid - before, False), (after - mid, True)):
        rounds, nbytes = lookup.cost(mul=m)
        assert d.rounds == (rounds if numel else d.rounds)
        assert d.bytes_per_party[0] == nbytes * (n - 1) * numel


@given(n=party_counts, seed=st.integers(0, 2**31), k=st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_eq_public_is_the_equality_bit(n: int, seed: int, k: int) -> None:
    domain = 1 << max(1, (k - 1).bit_length())
    low = -(k - 1)
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(low, low + k, (3, 7), generator=g, dtype=torch.int64)
    value = int(torch.randint(low, low + k, (), generator=g))
    with smpc.Session(parties=n, seed=seed) as sess:
        bit, _ = lookup.eq_public(sess.comm, sess.dealer, _shares(sess, s), value, low=low,
                                  domain=domain)  # fmt: skip
    assert torch.equal(bit.sum(0), (s == value).to(torch.int64))


def test_opened_value_is_masked() -> None:
    # The same input twice opens two different (uniform) values.
    with smpc.Session(parties=2, seed=1) as sess:
        t1 = sess.dealer.request(lookup.OneHotMaterial((5,), 8))
        t2 = sess.dealer.request(lookup.OneHotMaterial((5,), 8))
        assert not torch.equal(t1["r"].sum(0), t2["r"].sum(0))
        e = t1["e"].sum(0)
        assert torch.equal(e.sum(-1), torch.ones(5, dtype=torch.int64))
        assert torch.equal(e.argmax(-1), t1["r"].sum(0) & 7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table": [1, 2, 3]}, "`domain` must be a power of two"),
        ({"table": [[1, 2]]}, "`table` must be one-dimensional"),
        ({"table": [0] * 2048}, "`domain` must be a power of two in \\[2, 1024\\]"),
        ({"table": [0, 1], "mul": torch.zeros(2, 3, dtype=torch.int64)}, "`mul` must have"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with smpc.Session(parties=2, seed=1) as sess:
        s = torch.zeros(2, 4, dtype=torch.int64)
        with pytest.raises(ValueError, match=match):
            lookup.lookup(sess.comm, sess.dealer, s, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="`value` must lie in"):
            lookup.eq_public(sess.comm, sess.dealer, s, 5, low=0, domain=4)

"""XOR-share helpers and bit-to-arithmetic conversion (``smpc.protocols.convert``).

Exact against plaintext XOR / integer oracles over random ring words, 2-5
parties (simulation runtime; the comparison circuit that uses these runs in the
distributed runtime in ``tests/smpc/test_distributed.py``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc.protocols import convert

from ...strategies import party_counts

_LO, _HI = -(2**63), 2**63 - 1


def _words(g: torch.Generator, n: int, size: int) -> torch.Tensor:
    return torch.randint(_LO, _HI, (n, size), dtype=torch.int64, generator=g)


def _xor_reduce(t: torch.Tensor) -> torch.Tensor:
    out = t[0].clone()
    for row in t[1:]:
        out ^= row
    return out


@pytest.mark.parametrize(("n", "width"), [(2, 2), (3, 2), (4, 3), (5, 3), (7, 3), (8, 4)])
def test_field_width_holds_a_count_of_n_bits(n: int, width: int) -> None:
    assert convert.field_width(n) == width
    assert n < 1 << width  # a count of n set bits never carries out of the field


@settings(max_examples=30, deadline=None)
@given(n=party_counts, seed=st.integers(0, 2**31), public=st.integers(_LO, _HI))
def test_xor_public_applies_once(n: int, seed: int, public: int) -> None:
    g = torch.Generator().manual_seed(seed)
    shares = _words(g, n, 17)
    with smpc.Session(parties=n, seed=seed) as sess:
        out = convert.xor_public(sess.comm, shares, public)
    assert torch.equal(_xor_reduce(out), _xor_reduce(shares) ^ public)
    assert torch.equal(out[1:], shares[1:])  # only party 0 changes its share


@st.composite
def _field_layouts(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """(parties, group_bits, one mask per word) with the masks' bits at group bottoms."""
    n = draw(party_counts)
    group_bits = draw(st.sampled_from([4, 8, 16, 32, 64]).filter(lambda b: b >= n.bit_length()))
    groups = 64 // group_bits
    masks = []
    for _ in range(draw(st.integers(1, 6))):
        chosen = draw(st.lists(st.integers(0, groups - 1), min_size=1, unique=True))
        mask = 0
        for k in chosen:
            mask |= 1 << (k * group_bits)
        masks.append(mask - (1 << 64) if mask >= 1 << 63 else mask)
    if draw(st.booleans()):  # all words share one mask: they may be packed together
        masks = [masks[0]] * len(masks)
    return n, group_bits, masks


@settings(max_examples=60, deadline=None)
@given(layout=_field_layouts(), seed=st.integers(0, 2**31), size=st.integers(1, 40))
def test_open_fields_opens_the_xor_at_the_masked_bits(
    layout: tuple[int, int, list[int]], seed: int, size: int
) -> None:
    n, group_bits, masks = layout
    g = torch.Generator().manual_seed(seed)
    words = [_words(g, n, size) for _ in masks]
    with smpc.Session(parties=n, seed=seed) as sess:
        before = sess.stats.snapshot()
        opened = convert.open_fields(sess.comm, words, masks, group_bits, "test")
        d = sess.stats - before
    assert d.rounds == 1
    for w, m, o in zip(words, masks, opened, strict=True):
        assert torch.equal(o, _xor_reduce(w) & m)


def test_open_fields_rejects_fields_too_narrow_for_the_parties() -> None:
    with smpc.Session(parties=4, seed=0) as sess:  # a count of 4 needs 3 bits
        words = [torch.zeros(4, 3, dtype=torch.int64)]
        with pytest.raises(ValueError, match="cannot open bit fields of 2 bits among 4"):
            convert.open_fields(sess.comm, words, [1], 2, "test")


@settings(max_examples=40, deadline=None)
@given(n=party_counts, seed=st.integers(0, 2**31), size=st.integers(1, 300))
def test_b2a_round_trip_is_exact(n: int, seed: int, size: int) -> None:
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (size,), dtype=torch.int64, generator=g)
    # XOR shares of words whose bit 0 is the bit; the other bits are noise.
    shares = _words(g, n, size)
    shares[-1] = shares[-1] ^ ((_xor_reduce(shares) ^ bits) & 1)
    with smpc.Session(parties=n, seed=seed) as sess:
        before = sess.stats.snapshot()
        out = convert.b2a(sess.comm, sess.dealer, shares, (size,))
        d = sess.stats - before
    assert torch.equal(out.sum(0), bits)  # additive shares of the same bit
    assert d.rounds == 1
    assert d.bytes_per_party[0] == 8 * size * (n - 1)  # one ring element to each other party


def test_bit_pair_derives_the_additive_bit() -> None:
    words = torch.tensor([0, 1, 2, 3, -1, -2], dtype=torch.int64)
    derived = convert.BitPair((6,)).derive({"s_xor": words})
    assert derived["s"].tolist() == [0, 1, 0, 1, 1, 0]

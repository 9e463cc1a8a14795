"""smpc.ops: chunked execution of large elementwise ops (bounded memory, same results)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import ops as nl
from smpc.comm.stats import Stats
from tests.strategies import party_counts, seeds

_EXACT: dict[str, Callable[[Any, Any], Any]] = {
    "relu": lambda x, y: x.relu(),
    "relu_with_bit": lambda x, y: nl.relu_with_bit(x)[1],
    "lt": lambda x, y: x < y,
    "ge_public": lambda x, y: x >= 0.25,
    "eq": lambda x, y: x == y,
    "sign": lambda x, y: x.sign(),
    "abs": lambda x, y: x.abs(),
    "where": lambda x, y: smpc.where(x > y, x, y),
}


def _run(
    n: int, chunk: int | None, frac: int, x: torch.Tensor, y: torch.Tensor, op: Callable[..., Any]
) -> tuple[torch.Tensor, Stats]:
    with smpc.Session(parties=n, frac_bits=frac, chunk_size=chunk) as sess:
        sx, sy = sess.share(x), sess.share(y)
        before = sess.stats.snapshot()
        out = op(sx, sy)
        stats = sess.stats - before
        return out.reveal(), stats


def _same_costs(a: Stats, b: Stats) -> None:
    assert a.rounds == b.rounds
    assert a.bytes == b.bytes and a.bytes_per_party == b.bytes_per_party
    assert {k: (v.rounds, v.bytes, v.calls) for k, v in a.by_op.items()} == {
        k: (v.rounds, v.bytes, v.calls) for k, v in b.by_op.items()
    }


@settings(max_examples=15, deadline=None)
@given(
    n=party_counts,
    size=st.integers(1, 400),
    chunk=st.sampled_from([64, 100, 128]),
    name=st.sampled_from(sorted(_EXACT)),
    seed=seeds,
)
def test_chunked_comparisons_equal_the_whole_op(
    n: int, size: int, chunk: int, name: str, seed: int
) -> None:
    # Prepare: values on the fixed-point grid, some equal pairs
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(2**20), 2**20, (size,), generator=g).double() / 2**16
    y = torch.where(torch.rand(size, generator=g) < 0.2, x, x.flip(0))
    # Execute: whole (the default chunk is far above these sizes) and in tiny chunks
    whole, s_whole = _run(n, None, 16, x, y, _EXACT[name])
    parts, s_parts = _run(n, chunk, 16, x, y, _EXACT[name])
    # Assert: bit for bit, same rounds, bytes and calls
    assert torch.equal(whole, parts)
    _same_costs(s_whole, s_parts)


@settings(max_examples=10, deadline=None)
@given(n=party_counts, size=st.integers(65, 300), shape2=st.booleans(), seed=seeds)
def test_chunked_products_equal_the_whole_op(n: int, size: int, shape2: bool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(2**15), 2**15, (size,), generator=g)
    y = torch.randint(-(2**15), 2**15, (size,), generator=g)
    if shape2 and size % 5 == 0:
        x, y = x.reshape(5, -1), y.reshape(5, -1)
    # frac_bits=0: no truncation, so the product is exact whatever the randomness
    whole, s_whole = _run(n, None, 0, x, y, lambda a, b: a * b)
    parts, s_parts = _run(n, 64, 0, x, y, lambda a, b: a * b)
    assert torch.equal(whole, x * y) and torch.equal(parts, x * y)
    _same_costs(s_whole, s_parts)
    # fixed point: within the probabilistic truncation's one ulp, same costs
    xf, yf = x.double() / 2**10, y.double() / 2**10
    whole, s_whole = _run(n, None, 16, xf, yf, lambda a, b: a * b)
    parts, s_parts = _run(n, 64, 16, xf, yf, lambda a, b: a * b)
    assert (whole - xf * yf).abs().max() <= 2.0**-16
    assert (parts - xf * yf).abs().max() <= 2.0**-16
    _same_costs(s_whole, s_parts)


def test_chunked_approximations_cost_the_same() -> None:
    x = torch.linspace(-4, 4, 300, dtype=torch.float64)
    for op in (lambda a, b: a.sigmoid(), lambda a, b: a.exp(), lambda a, b: b.reciprocal()):
        whole, s_whole = _run(2, None, 16, x, x.abs() + 1, op)
        parts, s_parts = _run(2, 64, 16, x, x.abs() + 1, op)
        # approximations: truncation noise (amplified by exp's squarings) differs
        assert ((whole - parts).abs() <= 5e-3 * whole.abs() + 1e-3).all()
        _same_costs(s_whole, s_parts)


def test_broadcasting_and_distributed_ops_run_whole() -> None:
    with smpc.Session(parties=2, chunk_size=64) as sess:
        x = sess.share(torch.arange(200.0).reshape(2, 100))
        y = sess.share(torch.ones(100))
        assert torch.equal((x * y).reveal(), torch.arange(200.0).reshape(2, 100))
        assert sess.chunk_size == 64


@pytest.mark.parametrize("bad", [0, -64, 2.5, True, "64"])
def test_bad_chunk_size(bad: Any) -> None:
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        smpc.Session(parties=2, chunk_size=bad)


def test_chunk_size_is_rounded_to_whole_words() -> None:
    with smpc.Session(parties=3, chunk_size=100) as a, smpc.Session(parties=3, chunk_size=3) as b:
        assert (a.chunk_size, b.chunk_size) == (64, 64)
    with smpc.Session(parties=2) as c:
        assert c.chunk_size == (1 << 20) // 2


def test_chunked_ops_on_views_and_public_operands() -> None:
    # A transposed (non-contiguous) share and a public operand of the same shape.
    x = (torch.arange(-600, 600, dtype=torch.float64) / 64).reshape(30, 40)  # on the grid
    with smpc.Session(parties=3, chunk_size=64) as sess:
        sx = sess.share(x).t()
        assert torch.equal(sx.relu().reveal(), x.t().relu())
        assert torch.equal((sx > x.t().flip(0)).reveal(), (x.t() > x.t().flip(0)).double())
        got = (sx * x.t()).reveal()
    assert (got - x.t() * x.t()).abs().max() <= 2.0**-15


# ----------------------------------------------------------------- ring-level helpers
@settings(max_examples=20, deadline=None)
@given(n=party_counts, size=st.integers(1, 30), seed=seeds)
def test_public_shared_and_products_of_shares(n: int, size: int, seed: int) -> None:
    """``public_shared`` encodes locally; ``mul_shares``/``square_shares`` keep the scale 2^2f."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(size, generator=g, dtype=torch.float64) * 2 - 1) * 100
    y = (torch.rand(size, generator=g, dtype=torch.float64) * 2 - 1) * 100
    with smpc.Session(parties=n, seed=seed) as sess:
        before = sess.stats.snapshot()
        px = nl.public_shared(sess, x, name="x")
        assert (sess.stats - before).rounds == 0
        enc = sess.encoding.encode(x, name="x")
        assert torch.equal(px.reveal().double(), sess.encoding.decode(enc).double())
        sy = sess.share(y)
        ey = sess.encoding.encode(y, name="y")
        before = sess.stats.snapshot()
        prod = nl.mul_shares(sess, px.share, sy.share)
        sq = nl.square_shares(sess, sy.share)
        assert (sess.stats - before).rounds == 2  # one Beaver round each
        (p_open, s_open) = sess.comm.open([prod, sq], "check")
        assert torch.equal(p_open, enc * ey)  # exact in the ring, not truncated
        assert torch.equal(s_open, ey * ey)

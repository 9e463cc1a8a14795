"""Fused truncation products: exact monomials of truncated values, exp and softmax on them."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import ops as nl
from smpc.dealer.base import request_codec
from smpc.protocols import compare
from smpc.protocols.truncpoly import (
    SOFTMAX_WIDE_BITS,
    Fused,
    TruncProducts,
    exp_ring,
    exp_rounds,
    reciprocal_plan,
    reciprocal_ring,
    reciprocal_rounds,
    softmax_ring,
    softmax_rounds,
)
from smpc.sharing import add_public, additive_shares
from tests.strategies import party_counts, seeds, shapes


@st.composite
def _plans(draw: st.DrawFn) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Openings with 1-2 truncation shifts each, and monomials of degree 2-4 over them."""
    n_open = draw(st.integers(1, 2))
    shifts = tuple(
        tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=2))) for _ in range(n_open)
    )
    nvar = sum(len(s) for s in shifts)
    exps = st.lists(st.integers(0, 3), min_size=nvar, max_size=nvar).filter(
        lambda e: 2 <= sum(e) <= 4
    )
    mons = tuple(tuple(e) for e in draw(st.lists(exps, min_size=1, max_size=3)))
    return shifts, mons


@settings(max_examples=25, deadline=None)
@given(party_counts, shapes(min_dims=1, max_dims=2), _plans(), seeds)
def test_monomials_are_exact_products_of_the_truncated_values(
    n: int, shape: tuple[int, ...], plan: tuple, seed: int
) -> None:
    """Each monomial is ``prod (floor(x >> d_v) + b_v)^(e_v)`` mod 2^64, ``b_v`` in {0, 1}."""
    shifts, mons = plan
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(-(2**60), 2**60, shape, generator=g) for _ in shifts]
    var = [(o, d) for o, ds in enumerate(shifts) for d in ds]
    with smpc.Session(parties=n) as sess:
        fz = Fused(sess.comm, sess.dealer, TruncProducts(shape, shifts, mons))
        before = sess.stats.snapshot()
        fz.open({o: additive_shares(x, n, sess.prg) for o, x in enumerate(xs)})
        cost = sess.stats - before
        got = [fz.monomial(e).sum(0) for e in mons]
        lin = [
            fz.monomial(tuple(int(i == v) for i in range(len(var)))).sum(0) for v in range(len(var))
        ]
    assert cost.rounds == 1
    assert cost.bytes_per_party[0] == 8 * len(xs) * max(1, xs[0].numel()) * (n - 1)
    floors = [xs[o] >> d for o, d in var]
    for t, fl in zip(lin, floors, strict=True):  # each variable: the truncation, within one unit
        assert bool(((t - fl == 0) | (t - fl == 1)).all())
    for e, m in zip(mons, got, strict=True):
        ok = torch.zeros(shape, dtype=torch.bool)
        for borrow in itertools.product((0, 1), repeat=len(var)):
            prod = torch.ones(shape, dtype=torch.int64)
            for fl, b, k in zip(floors, borrow, e, strict=True):
                for _ in range(k):
                    prod = prod * (fl + b)
            ok |= prod == m
        assert bool(ok.all())
        # ...and with the borrows of the variables themselves
        expect = torch.ones(shape, dtype=torch.int64)
        for t, k in zip(lin, e, strict=True):
            for _ in range(k):
                expect = expect * t
        assert torch.equal(expect, m)


@given(party_counts, st.integers(-(2**30), 2**30), seeds)
def test_offset_and_poly(n: int, offset: int, seed: int) -> None:
    """``poly`` of ``t - offset``: public integer coefficients, a constant, wrap-around exact."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-(2**50), 2**50, (7,), generator=g)
    with smpc.Session(parties=n) as sess:
        fz = Fused(sess.comm, sess.dealer, TruncProducts((7,), ((10,),), ((3,),)))
        fz.open({0: additive_shares(x, n, sess.prg)})
        t = fz.monomial((1,)).sum(0)
        fz.offset(0, offset)
        p = fz.poly([(5, (1,)), (-3, (3,)), (2**70 + 1, (1,))], constant=2**65 + 7).sum(0)
    assert bool((((x >> 10) - t == 0) | ((x >> 10) - t == -1)).all())
    u = t - offset
    assert torch.equal(p, 5 * u - 3 * u * u * u + u + 7)


def test_request_codec_round_trip_and_components() -> None:
    req = TruncProducts((3, 2), ((5, 9), (12,)), ((2, 0, 1), (0, 1, 1)))
    codec = request_codec([TruncProducts])
    assert codec.decode(codec.encode(req)) == req
    names = [c.name for c in req.components()]
    assert names[:2] == ["r0", "r1"] and len(set(names)) == len(names)
    # (2,0,1): sub-monomials (2,0,0) [1 opening: 2], (1,0,1) and (2,0,1) [2 openings: 4 each];
    # (0,1,1): (0,1,1) [4]; 2 masks + 3 x 2 truncation words
    assert len(names) == 2 + 6 + 2 + 4 + 4 + 4


@settings(max_examples=15, deadline=None)
@given(party_counts, shapes(min_dims=1, max_dims=2, max_side=8), seeds)
def test_exp_ring_matches_torch(n: int, shape: tuple[int, ...], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = -16 + 26 * torch.rand(shape, generator=g, dtype=torch.float64)
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        before = sess.stats.snapshot()
        out, scale = exp_ring(sess.comm, sess.dealer, xs.share, 16)
        cost = sess.stats - before
        got = smpc.SharedTensor(out, sess).reveal().double()
    assert scale == 16 and cost.rounds == exp_rounds() == 6
    ref = x.exp()
    assert bool(((got - ref).abs() <= 3e-3 * ref + 4 * 2.0**-16).all())


def test_exp_accuracy_on_a_grid() -> None:
    """The figures of docs/approximations.md: 2e-4 absolute on [-16, 0], 1.5e-3 relative."""
    x = torch.linspace(-16, 10, 6001, dtype=torch.float64)
    with smpc.Session(parties=2, seed=3) as sess:
        got = nl.exp(sess.share(x)).reveal().double()
    ref = x.exp()
    assert float((got - ref)[x <= 0].abs().max()) <= 2e-4
    big = ref > 1e-2
    assert float(((got - ref).abs() / ref)[big].max()) <= 1.5e-3


@settings(max_examples=15, deadline=None)
@given(
    party_counts,
    st.integers(1, 6),
    st.integers(2, 10),
    st.sampled_from([0.5, 4.0, 30.0, 1000.0]),
    seeds,
)
def test_softmax_ring_matches_torch(n: int, rows: int, k: int, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64) * scale
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        before = sess.stats.snapshot()
        p = softmax_ring(sess.comm, sess.dealer, xs.share, 16)
        cost = sess.stats - before
        got = smpc.SharedTensor(p, sess).reveal().double()
    assert cost.rounds == softmax_rounds(compare.cost(n)[0])
    assert float((got - x.softmax(1)).abs().max()) <= 2e-4
    with smpc.Session(parties=n) as sess:  # wide: one round less, the result at 2^60
        xs = sess.share(x)
        before = sess.stats.snapshot()
        q = softmax_ring(sess.comm, sess.dealer, xs.share, 16, wide=True)
        cost = sess.stats - before
        ring = q.sum(0)
    assert cost.rounds == softmax_rounds(compare.cost(n)[0]) - 1
    wide = ring.double() / 2.0**SOFTMAX_WIDE_BITS
    assert float((wide - x.softmax(1)).abs().max()) <= 2e-4


@given(party_counts, st.integers(2, 10), st.booleans(), seeds)
def test_softmax_and_exp_cost_through_nonlinear(n: int, k: int, first: bool, seed: int) -> None:
    """``nl.softmax`` over 2-10 classes (any dim): 1 comparison + 11 rounds; ``nl.exp``: 1 + 6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, 3, generator=g, dtype=torch.float64) * 3
    dim = 0 if first else 1
    if not first:
        x = x.t().contiguous()
    rounds = compare.cost(n)[0]
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        before = sess.stats.snapshot()
        p = nl.softmax(xs, dim)
        mid = sess.stats.snapshot()
        e = nl.exp(xs)
        end = sess.stats.snapshot()
        got_p, got_e = p.reveal().double(), e.reveal().double()
    assert (mid - before).rounds == rounds + 11
    assert (end - mid).rounds == rounds + 6
    assert float((got_p - x.softmax(dim)).abs().max()) <= 2e-4
    assert torch.allclose(got_e, x.exp(), rtol=3e-3, atol=2e-3)


def _line(lo: float, hi: float) -> tuple[float, float]:
    k = hi / lo
    d = 8.0 / (k * k + 6.0 * k + 1.0)
    return d * (k + 1.0) / lo, d / (lo * lo)


@settings(max_examples=20, deadline=None)
@given(party_counts, st.floats(0.05, 50.0), st.floats(1.5, 400.0), st.integers(1, 8), seeds)
def test_reciprocal_ring_matches_torch(
    n: int, lo: float, ratio: float, steps: int, seed: int
) -> None:
    """Newton steps of one round each; converged (enough steps) to a few units."""
    hi = min(lo * ratio, 1000.0)
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(40, generator=g, dtype=torch.float64)
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        before = sess.stats.snapshot()
        out = reciprocal_ring(sess.comm, sess.dealer, xs.share, 16, (lo, hi), _line(lo, hi), steps)
        cost = sess.stats - before
        got = smpc.SharedTensor(out, sess).reveal().double()
    assert reciprocal_plan(lo, hi, 16) is not None
    assert cost.rounds == reciprocal_rounds(steps) == steps + 1
    assert cost.bytes_per_party[0] == 8 * 40 * (steps + 2) * (n - 1)
    # the line's relative error e0 = 1 - 8k/(k^2+6k+1) squares each step
    k = hi / lo
    e = 1 - 8 * k / (k * k + 6 * k + 1)
    for _ in range(steps):
        e = e * e + 2**-11
    err = (got - 1 / x).abs()
    assert float((err - (e + 1e-3) / x).max()) <= 8 * 2.0**-16


def test_reciprocal_with_bounds_uses_it_while_the_ratio_allows() -> None:
    with smpc.Session(parties=2) as sess:
        x = torch.tensor([1.0, 3.0, 9.5])
        xs = sess.share(x)
        before = sess.stats.snapshot()
        y = nl.reciprocal(xs, bounds=(1.0, 10.0))
        mid = sess.stats.snapshot()
        wide = torch.tensor([0.002, 1.0, 900.0])
        z = nl.reciprocal(sess.share(wide), bounds=(0.001, 1000.0))  # too wide: the old steps
        assert (mid - before).rounds == 7
        assert torch.allclose(y.reveal(), 1 / x, atol=1e-4)
        assert torch.allclose(z.reveal().double(), 1 / wide.double(), rtol=2e-3, atol=1e-4)
    assert reciprocal_plan(0.001, 1000.0, 16) is None
    with pytest.raises(ValueError, match="too wide"):
        reciprocal_ring(sess.comm, sess.dealer, xs.share, 16, (0.001, 1000.0), (1.0, 1.0), 3)


def test_softmax_ring_takes_2_to_10_classes() -> None:
    with smpc.Session(parties=2) as sess:
        x = sess.share(torch.zeros(2, 11))
        with pytest.raises(ValueError, match="2 to 10 classes"):
            softmax_ring(sess.comm, sess.dealer, x.share, 16)


def _dist_program(sess: smpc.Session, x_plain: torch.Tensor) -> dict:
    """Runs in every party process (and in simulation, for comparison)."""
    x = sess.share(x_plain if sess.rank in (None, 0) else None, src=0)
    before = sess.stats.snapshot()
    p = softmax_ring(sess.comm, sess.dealer, x.share, sess.encoding.frac_bits)
    cost = sess.stats - before
    e, _ = exp_ring(sess.comm, sess.dealer, x.share, sess.encoding.frac_bits)
    fz = Fused(sess.comm, sess.dealer, TruncProducts(tuple(x.shape), ((16, 20),), ((2, 1),)))
    fz.open({0: x.share})
    m = smpc.SharedTensor(fz.monomial((2, 1)), sess)
    xp = add_public(sess.comm, x.share, 20 << sess.encoding.frac_bits)  # x + 20 in [4, 29]
    r = reciprocal_ring(sess.comm, sess.dealer, xp, 16, (4.0, 30.0), _line(4.0, 30.0), 5)
    return {
        "reciprocal": smpc.SharedTensor(r, sess).reveal(),
        "softmax": smpc.SharedTensor(p, sess).reveal(),
        "exp": smpc.SharedTensor(e, sess).reveal(),
        "mono": m.reveal(),
        "rounds": cost.rounds,
    }


@pytest.mark.distributed
@pytest.mark.parametrize("n", [2, 3])
def test_distributed_matches_simulation(n: int) -> None:
    from smpc.launch import run

    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(n)) * 4
    x[0] = x[0].clamp(max=9.0)
    x = x.clamp(-16, 9)
    results = run(functools.partial(_dist_program, x_plain=x), parties=n, seed=5)
    with smpc.Session(parties=n, seed=5) as sess:
        sim = _dist_program(sess, x)
    # x (scale 2^16) truncated by 16 and by 20 bits: t16^2 t20 for floors plus a borrow each
    ring = torch.round(x.double() * 2**16).long()
    cands = [
        ((ring >> 16) + b1) ** 2 * ((ring >> 20) + b2) / 2.0**16 for b1 in (0, 1) for b2 in (0, 1)
    ]
    for res in [*results, sim]:
        assert torch.allclose(res["softmax"].double(), x.double().softmax(1), atol=2e-4)
        assert torch.allclose(res["exp"].double(), x.double().exp(), rtol=3e-3, atol=1e-3)
        dist = torch.stack([(res["mono"].double() - c).abs() / (1 + c.abs()) for c in cands])
        assert float(dist.min(0).values.max()) <= 1e-6
        assert res["rounds"] == sim["rounds"] == softmax_rounds(compare.cost(n)[0])
        assert torch.allclose(res["reciprocal"].double(), 1 / (x.double() + 20), atol=1e-4)

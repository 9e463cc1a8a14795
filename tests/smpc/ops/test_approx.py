"""smpc.ops.approx: exp, reciprocal, div, log, sqrt, sigmoid, tanh, softmax against torch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import ops as nl
from smpc.errors import EncodingOverflowError

from ...strategies import party_counts

F16 = 16
ULP = 2.0**-F16


def _rel(out: torch.Tensor, ref: torch.Tensor, floor: float = 1e-2) -> float:
    m = ref.abs() > floor
    return float(((out - ref).abs()[m] / ref.abs()[m]).max()) if bool(m.any()) else 0.0


# (name, function, torch reference, range, max abs error, max rel error where |ref| > 1e-2)
APPROX = [
    ("exp", nl.exp, torch.exp, (-16.0, 0.0), 2e-3, 3e-3),
    ("exp_pos", nl.exp, torch.exp, (-4.0, 10.0), 30.0, 3e-3),
    ("reciprocal", nl.reciprocal, torch.reciprocal, (0.05, 500.0), 3e-3, 1.5e-2),
    ("reciprocal_neg", nl.reciprocal, torch.reciprocal, (-500.0, -0.05), 3e-3, 1.5e-2),
    (
        "reciprocal_bounds_1_10",
        lambda x: nl.reciprocal(x, bounds=(1.0, 10.0)),
        torch.reciprocal,
        (1.0, 10.0),
        1e-4,
        1e-3,
    ),
    (
        "reciprocal_bounds_0.5_64",
        lambda x: nl.reciprocal(x, bounds=(0.5, 64.0)),
        torch.reciprocal,
        (0.5, 64.0),
        1e-4,
        5e-3,
    ),
    ("log", nl.log, torch.log, (0.1, 200.0), 8e-3, 1e-2),
    ("rsqrt", nl.rsqrt, torch.rsqrt, (0.1, 100.0), 1e-3, 2e-3),
    ("sqrt", nl.sqrt, torch.sqrt, (0.1, 100.0), 2e-2, 2e-3),
    ("sigmoid", nl.sigmoid, torch.sigmoid, (-30.0, 30.0), 1e-3, 5e-3),
    ("tanh", nl.tanh, torch.tanh, (-15.0, 15.0), 2e-3, 3e-2),
]


@pytest.mark.parametrize("case", APPROX, ids=[c[0] for c in APPROX])
def test_approximation_accuracy_table(case: tuple) -> None:
    """The accuracy table of docs/approximations.md, measured on a dense grid."""
    _, fn, ref, (lo, hi), max_abs, max_rel = case
    x = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    with smpc.Session(parties=2, seed=11) as sess:
        out = fn(sess.share(x)).reveal().double()
    expect = ref(x)
    assert float((out - expect).abs().max()) <= max_abs
    assert _rel(out, expect) <= max_rel


@given(n=party_counts, seed=st.integers(0, 2**31), which=st.integers(0, len(APPROX) - 1))
def test_approximations_random(n: int, seed: int, which: int) -> None:
    _, fn, ref, (lo, hi), max_abs, max_rel = APPROX[which]
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(20, generator=g, dtype=torch.float64)
    with smpc.Session(parties=n, seed=seed) as sess:
        out = fn(sess.share(x)).reveal().double()
    assert float((out - ref(x)).abs().max()) <= max_abs


@given(n=party_counts, seed=st.integers(0, 2**31))
def test_div(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, generator=g, dtype=torch.float64) * 10
    y = (
        (torch.rand(10, generator=g, dtype=torch.float64) + 0.5)
        * 4
        * torch.sign(torch.randn(10, generator=g))
    )
    with smpc.Session(parties=n, seed=seed) as sess:
        sx, sy = sess.share(x), sess.share(y)
        assert torch.allclose((sx / sy).reveal().double(), x / y, atol=0.02, rtol=5e-3)
        # a public float divisor is encoded: 1/y carries a 2^-17 error, times |x|
        assert torch.allclose(
            (sx / 3.0).reveal().double(), x / 3.0, atol=x.abs().max().item() * 2**-16 + 2 * ULP
        )
        assert torch.allclose(
            nl.div(sx, y).reveal().double(), x / y, atol=x.abs().max().item() * 2**-14 + 2 * ULP
        )
        with pytest.raises(ZeroDivisionError):
            nl.div(sx, 0.0)


@given(
    n=party_counts,
    seed=st.integers(0, 2**31),
    rows=st.integers(1, 6),
    k=st.integers(1, 12),
    scale=st.sampled_from([1.0, 5.0, 20.0]),
)
def test_softmax_log_softmax(n: int, seed: int, rows: int, k: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64) * scale
    with smpc.Session(parties=n, seed=seed) as sess:
        sx = sess.share(x)
        p = nl.softmax(sx, 1).reveal().double()
        assert float((p - x.softmax(1)).abs().max()) <= 5e-3
        lp = nl.log_softmax(sx, -1).reveal().double()
        ref = x.log_softmax(1)
        # log-softmax: absolute error where the probability is not negligible (> e^-16)
        m = ref > -16
        assert float((lp - ref).abs()[m].max()) <= 2e-2
        p0 = nl.softmax(sx, 0).reveal().double()
        assert float((p0 - x.softmax(0)).abs().max()) <= 5e-3


def test_softmax_large_spread_stable() -> None:
    x = torch.tensor([[1000.0, 0.0, -1000.0, 999.0], [-3000.0, -3000.0, -3000.0, -3001.0]])
    with smpc.Session(parties=2, seed=1) as sess:
        p = nl.softmax(sess.share(x), 1).reveal().double()
        assert float((p - x.double().softmax(1)).abs().max()) <= 5e-3
        lp = nl.log_softmax(sess.share(x), 1).reveal().double()
        ref = x.double().log_softmax(1)
        assert float((lp - ref).abs()[ref > -16].max()) <= 2e-2


@settings(max_examples=20, deadline=None)
@given(
    party_counts,
    st.floats(0.05, 50.0),
    st.floats(1.5, 400.0),
    st.integers(0, 2**31 - 1),
)
def test_reciprocal_with_bounds_property(n: int, lo: float, ratio: float, seed: int) -> None:
    """``reciprocal(bounds=(lo, hi))`` on random intervals and inputs, 2-5 parties."""
    hi = min(lo * ratio, 1000.0)
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(64, generator=g, dtype=torch.float64)
    with smpc.Session(n) as sess:
        out = nl.reciprocal(sess.share(x), bounds=(lo, hi)).reveal().double()
    # Newton converges to the fixed-point resolution: a few ulps absolute, plus a
    # small relative error where 1/x is large.
    err = (out - 1 / x).abs()
    assert float((err - 1e-3 / x).max()) <= 8 * 2.0**-16


def test_reciprocal_bounds_bad_input() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.tensor([2.0]))
        for bad in [(0.0, 1.0), (2.0, 1.0), (-1.0, 3.0), (1.0, float("inf")), (1.0, 2000.0)]:
            with pytest.raises(ValueError, match="bounds"):
                nl.reciprocal(x, bounds=bad)


def test_softmax_over_more_classes_than_the_bounded_reciprocal_takes() -> None:
    x = torch.randn(2, 1100, generator=torch.Generator().manual_seed(0)) * 2
    with smpc.Session(2) as sess:
        p = nl.softmax(sess.share(x), 1).reveal().double()
    assert float((p - x.double().softmax(1)).abs().max()) <= 5e-4


# ----------------------------------------------------------------- large frac_bits
APPROXIMATIONS = {
    "exp": lambda x: x.exp(),
    "reciprocal": lambda x: x.reciprocal(),
    "sigmoid": lambda x: x.sigmoid(),
    "tanh": lambda x: x.tanh(),
    "log": lambda x: x.log(),
    "sqrt": lambda x: x.sqrt(),
    "rsqrt": lambda x: x.rsqrt(),
    "softmax": lambda x: x.softmax(0),
    "log_softmax": lambda x: x.log_softmax(0),
    "div": lambda x: x / x,
}


@pytest.mark.parametrize("frac_bits", [26, 27, 28, 30])
@pytest.mark.parametrize("name", sorted(APPROXIMATIONS))
def test_approximations_name_the_frac_bits_they_need(name: str, frac_bits: int) -> None:
    # Prepare: values every approximation takes; a precision that may leave no room
    x = torch.tensor([0.5, 1.0])
    with smpc.Session(parties=2, frac_bits=frac_bits) as sess:
        xs = sess.share(x)
        try:
            got = APPROXIMATIONS[name](xs).reveal()
        except EncodingOverflowError as err:
            # Assert: the error names the function and the precision, never `other`
            msg = str(err)
            assert "`other`" not in msg
            assert name.split("_")[0] in msg and f"frac_bits={frac_bits}" in msg
            assert "use frac_bits <=" in msg
            assert frac_bits >= 27
            return
    assert got is not None and frac_bits <= 27
    assert got.shape == x.shape


@pytest.mark.parametrize("n", [2, 3])
def test_rsqrt_wide_accuracy_table(n: int) -> None:
    """docs/approximations.md's row: a log-spaced grid over [2^-6, 2^14], error at most
    5e-4 relative plus two units; below, 0 (negatives and values under 2^-18)."""
    x = 2.0 ** torch.linspace(-6, 14, 2001, dtype=torch.float64)
    with smpc.Session(parties=n, seed=13) as sess:
        out = nl.rsqrt_wide(sess.share(x)).reveal().double()
        low = nl.rsqrt_wide(sess.share(torch.tensor([-3.0, -(2.0**-16), 0.0]))).reveal()
    expect = x.rsqrt()
    assert bool(((out - expect).abs() <= 5e-4 * expect + 2.0**-15).all())
    assert bool((low == 0).all())


@given(n=party_counts, seed=st.integers(0, 2**31), lo=st.integers(-6, 12))
def test_rsqrt_wide_random(n: int, seed: int, lo: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 ** (lo + 2 * torch.rand(10, 3, generator=g, dtype=torch.float64))
    with smpc.Session(parties=n, seed=seed) as sess:
        out = nl.rsqrt_wide(sess.share(x)).reveal().double()
    assert out.shape == x.shape
    assert bool(((out - x.rsqrt()).abs() <= 5e-4 * x.rsqrt() + 2.0**-15).all())

"""Comparison, comparison-based ops and approximations on SharedTensor, against torch."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import nonlinear as nl
from smpc.errors import EncodingOverflowError, ShapeError
from smpc.protocols import compare

from ..strategies import party_counts, shapes

F16 = 16
ULP = 2.0**-F16
LIMIT = 2.0 ** (31 - F16)  # encoding range at f = 16


def _grid(shape: tuple[int, ...], seed: int, bound: float) -> torch.Tensor:
    """Values on the fixed-point grid (exactly encodable), with ties and zeros."""
    g = torch.Generator().manual_seed(seed)
    v = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
    # On the fixed-point grid and exact in float32 (reveal() returns float32).
    v = (torch.round(v * 2**F16) / 2**F16).float().double()
    flat = v.reshape(-1)
    if flat.numel() > 2:
        flat[0] = 0.0
        flat[1] = flat[2]  # a tie
    return v


CMP = [
    (nl.lt, torch.lt),
    (nl.le, torch.le),
    (nl.gt, torch.gt),
    (nl.ge, torch.ge),
    (nl.eq, torch.eq),
    (nl.ne, torch.ne),
]


@given(
    n=party_counts, shape=shapes(min_dims=1), seed=st.integers(0, 2**31), which=st.integers(0, 5)
)
def test_comparisons_exact(n: int, shape: tuple[int, ...], seed: int, which: int) -> None:
    ours, ref = CMP[which]
    x = _grid(shape, seed, LIMIT)
    y = _grid(shape, seed + 1, LIMIT)
    y.reshape(-1)[-1:] = x.reshape(-1)[-1:]  # equal values
    with smpc.Session(parties=n, seed=seed) as sess:
        sx, sy = sess.share(x), sess.share(y)
        expect = ref(x, y).to(torch.float32)
        assert torch.equal(ours(sx, sy).reveal(), expect)
        assert torch.equal(ours(sx, y).reveal(), expect)  # public right
        assert torch.equal(ours(x, sy).reveal(), expect)  # public left


def test_operators_and_edges() -> None:
    # 0, +-1 ulp, +- the range limit, against shared and public.
    edges = torch.tensor(
        [0.0, ULP, -ULP, LIMIT, -LIMIT, LIMIT - ULP, -LIMIT + ULP, 1.5, -1.5], dtype=torch.float64
    )
    with smpc.Session(parties=2, seed=1) as sess:
        x = sess.share(edges)  # float64 in: float64 out
        assert torch.equal((x > 0).reveal(), (edges > 0).double())
        assert torch.equal((x >= 0).reveal(), (edges >= 0).double())
        assert torch.equal((x < 0).reveal(), (edges < 0).double())
        assert torch.equal((x <= 0).reveal(), (edges <= 0).double())
        assert torch.equal((x == 0).reveal(), (edges == 0).double())
        assert torch.equal((x != 0).reveal(), (edges != 0).double())
        y = sess.share(edges.flip(0))
        assert torch.equal((x < y).reveal(), (edges < edges.flip(0)).double())
        assert torch.equal(x.relu().reveal(), edges.relu().double())
        assert torch.equal(nl.sign(x).reveal(), edges.sign().double())
        assert torch.equal(nl.abs(x).reveal(), edges.abs().double())
        # exact on the ring: the -1 ulp neighbour of the limit stays distinct
        assert int(x.relu().share.sum(0)[5]) == (1 << 31) - 1


@given(n=party_counts, shape=shapes(min_dims=1), seed=st.integers(0, 2**31))
def test_relu_sign_abs(n: int, shape: tuple[int, ...], seed: int) -> None:
    x = _grid(shape, seed, LIMIT)
    with smpc.Session(parties=n, seed=seed) as sess:
        sx = sess.share(x)
        value, bit = nl.relu_with_bit(sx)
        assert torch.equal(value.reveal().double(), x.relu())
        assert torch.equal(bit.reveal(), (x >= 0).float())
        assert torch.equal(nl.sign(sx).reveal().double(), x.sign())
        assert torch.equal(nl.abs(sx).reveal().double(), x.abs())


@given(n=party_counts, seed=st.integers(0, 2**31))
def test_where(n: int, seed: int) -> None:
    x = _grid((6,), seed, 100)
    y = _grid((6,), seed + 1, 100)
    with smpc.Session(parties=n, seed=seed) as sess:
        sx, sy = sess.share(x), sess.share(y)
        cond = sx > sy
        out = nl.where(cond, sx, sy).reveal().double()
        assert torch.allclose(out, torch.where(x > y, x, y), atol=2 * ULP)
        out2 = nl.where(cond, 1.0, -1.0).reveal().double()
        assert torch.allclose(out2, torch.where(x > y, 1.0, -1.0).double(), atol=2 * ULP)


@given(
    n=party_counts,
    shape=shapes(min_dims=1, max_dims=3, max_side=6),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_max_min_argmax(n: int, shape: tuple[int, ...], seed: int, data: st.DataObject) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    keepdim = data.draw(st.booleans())
    x = _grid(shape, seed, 1000)
    with smpc.Session(parties=n, seed=seed) as sess:
        sx = sess.share(x)
        res = nl.max(sx, dim, keepdim)
        ref = x.max(dim, keepdim=keepdim)
        assert torch.equal(res.values.reveal().double(), ref.values)
        onehot = F.one_hot(x.argmax(dim), x.shape[dim]).movedim(-1, dim % x.dim()).float()
        assert torch.equal(res.indices.reveal(), onehot)  # ties -> first index, like torch
        assert torch.equal(nl.argmax(sx, dim).reveal(), onehot)
        mres = nl.min(sx, dim, keepdim)
        assert torch.equal(mres.values.reveal().double(), x.min(dim, keepdim=keepdim).values)
        onehot_min = F.one_hot(x.argmin(dim), x.shape[dim]).movedim(-1, dim % x.dim()).float()
        assert torch.equal(nl.argmin(sx, dim).reveal(), onehot_min)
        assert torch.equal(nl.max(sx).reveal().double(), x.max())
        assert torch.equal(nl.min(sx).reveal().double(), x.min())
        flat_onehot = F.one_hot(x.argmax(), x.numel()).reshape(x.shape).float()
        assert torch.equal(nl.argmax(sx).reveal(), flat_onehot)


def test_max_rounds_logarithmic() -> None:
    with smpc.Session(parties=2, seed=1) as sess:
        x = sess.share(torch.randn(4, 16))
        before = sess.stats.snapshot()
        nl.max(x)  # 64 elements: 6 levels
        assert (sess.stats - before).rounds == 6 * compare.cost(2)[0]


@given(
    n=st.integers(2, 3),
    seed=st.integers(0, 2**31),
    cfg=st.sampled_from([(2, None, 0), (3, 2, 1), (2, 1, 0), ((2, 3), (2, 1), (1, 1)), (3, 3, 0)]),
    batch=st.booleans(),
)
def test_max_pool2d(n: int, seed: int, cfg: tuple, batch: bool) -> None:
    k, s, p = cfg
    shape = (2, 3, 7, 6) if batch else (3, 7, 6)
    x = _grid(shape, seed, 50)
    with smpc.Session(parties=n, seed=seed) as sess:
        sx = sess.share(x)
        out = nl.max_pool2d(sx, k, s, p).reveal().double()
        assert torch.equal(out, F.max_pool2d(x, k, s, p))
        out2, onehot = nl.max_pool2d_with_onehot(sx, k, s, p)
        assert torch.equal(out2.reveal().double(), out)
        assert torch.equal(onehot.reveal().sum(-1), torch.ones(out.shape))
        # functional / method entry points
        assert torch.equal(smpc.functional.max_pool2d(sx, k, s, p).reveal().double(), out)


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


def test_tensor_methods_route_here() -> None:
    x = torch.tensor([[-1.0, 2.0, 0.5], [3.0, -4.0, 0.0]])
    with smpc.Session(parties=2, seed=1) as sess:
        sx = sess.share(x)
        assert torch.equal(smpc.functional.relu(sx).reveal(), x.relu())
        assert torch.equal(abs(sx).reveal(), x.abs())
        assert torch.allclose(smpc.functional.softmax(sx, 1).reveal(), x.softmax(1), atol=5e-3)
        assert torch.equal(
            smpc.functional.argmax(sx, 1).reveal(), F.one_hot(x.argmax(1), 3).float()
        )


def test_cost_relu_and_gt() -> None:
    with smpc.Session(parties=2, seed=1) as sess:
        x = sess.share(torch.randn(1000))
        y = sess.share(torch.randn(1000))
        before = sess.stats.snapshot()
        x.relu()
        d = sess.stats - before
        assert d.rounds == 4 and d.bytes_per_party[0] == 27 * 1000
        before = sess.stats.snapshot()
        _ = x > y
        d = sess.stats - before
        assert d.rounds == 4 and d.bytes_per_party[0] == 19 * 1000
        assert compare.cost(2) == (4, 19)
        assert compare.cost(2, mul=True) == (4, 27)


def test_bad_inputs() -> None:
    with smpc.Session(parties=2, seed=1) as sess:
        x = sess.share(torch.randn(2, 3))
        with pytest.raises(EncodingOverflowError):
            _ = x < 1e9  # public value out of the fixed-point range
        with pytest.raises(EncodingOverflowError):
            _ = x < float("nan")
        with pytest.raises(ShapeError):
            _ = x < torch.zeros(4)  # not broadcastable
        with pytest.raises(IndexError):
            nl.max(x, 2)
        with pytest.raises(IndexError):
            nl.softmax(x, -3)
        with pytest.raises(TypeError):
            nl.max(x, 1.5)  # type: ignore[arg-type]
        with pytest.raises(ShapeError):
            nl.max_pool2d(x, 2)  # needs (N,C,H,W) or (C,H,W)
        img = sess.share(torch.randn(1, 1, 3, 3))
        with pytest.raises(ShapeError):
            nl.max_pool2d(img, 4)
        with pytest.raises(ValueError):
            nl.max_pool2d(img, 2, 1, 2)  # padding > kernel / 2
        with pytest.raises(ValueError):
            nl.exp(x, iterations=0)
        with pytest.raises(ValueError):
            nl.reciprocal(x, iterations=-1)
        with pytest.raises(TypeError):
            nl.relu(torch.zeros(3))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            nl.lt(torch.zeros(3), torch.ones(3))
        with smpc.Session(parties=2, seed=2) as other, pytest.raises(smpc.SessionMismatchError):
            _ = x < other.share(torch.randn(2, 3))


# ----------------------------------------------------------------- distributed runtime
def _dist_program(sess: smpc.Session, x_plain: torch.Tensor, y_plain: torch.Tensor) -> dict:
    """Runs in every party process (and in simulation, for comparison)."""
    me = sess.rank
    x = sess.share(x_plain if me in (None, 0) else None, src=0)
    y = sess.share(y_plain if me in (None, 1) else None, src=1)
    before = sess.stats.snapshot()
    r = x.relu()
    d = sess.stats - before
    out = {
        "relu": r.reveal(),
        "relu_cost": (d.rounds, d.bytes_per_party[me or 0]),
        "gt": (x > y).reveal(),
        "eq": (x == y).reveal(),
        "sign": nl.sign(x).reveal(),
        "max": nl.max(x, 1).values.reveal(),
        "argmax": nl.argmax(x, 1).reveal(),
        "pool": nl.max_pool2d(x.reshape(1, 1, 4, 6), 2).reveal(),
        "softmax": nl.softmax(x, 1).reveal(),
        "log_softmax": nl.log_softmax(x, 1).reveal(),
        "exp": nl.exp(nl.min(x, 1, keepdim=True).values).reveal(),
        "reciprocal": nl.reciprocal(nl.abs(x) + 1.0).reveal(),
        "lt": (x < y).reveal(),
        "le": (x <= y).reveal(),
        "ge": (x >= 0.5).reveal(),
        "ne": (x != y).reveal(),
        "abs": nl.abs(x).reveal(),
        "where": nl.where(x > y, x, y).reveal(),
        "min": nl.min(x, 1).values.reveal(),
        "argmin": nl.argmin(x, 1).reveal(),
        "log": nl.log(nl.abs(x) + 1.0).reveal(),
        "sqrt": nl.sqrt(nl.abs(x) + 1.0).reveal(),
        "rsqrt": nl.rsqrt(nl.abs(x) + 1.0).reveal(),
        "sigmoid": nl.sigmoid(x).reveal(),
        "tanh": nl.tanh(x).reveal(),
        "div": nl.div(x, nl.abs(y) + 1.0).reveal(),
    }
    return out


@pytest.mark.distributed
@given(n=st.integers(2, 3), seed=st.integers(0, 2**31))
@settings(max_examples=2, deadline=None)
def test_distributed_matches_torch_and_simulation(n: int, seed: int) -> None:
    from smpc.launch import run

    x = _grid((4, 6), seed, 8).float()
    y = _grid((4, 6), seed + 1, 8).float()
    y[0, 0] = x[0, 0]
    results = run(functools.partial(_dist_program, x_plain=x, y_plain=y), parties=n, seed=seed)
    with smpc.Session(parties=n, seed=seed) as sess:
        sim = _dist_program(sess, x, y)
    for res in results:
        assert torch.equal(res["relu"], x.relu())
        assert torch.equal(res["gt"], (x > y).float())
        assert torch.equal(res["eq"], (x == y).float())
        assert torch.equal(res["sign"], x.sign())
        assert torch.equal(res["max"], x.max(1).values)
        assert torch.equal(res["argmax"], F.one_hot(x.argmax(1), 6).float())
        assert torch.equal(res["pool"], F.max_pool2d(x.reshape(1, 1, 4, 6), 2))
        assert torch.allclose(res["softmax"], x.softmax(1), atol=5e-3)
        assert torch.allclose(res["log_softmax"], x.log_softmax(1), atol=2e-2)
        assert torch.allclose(res["exp"], x.min(1, keepdim=True).values.exp(), atol=2e-3, rtol=3e-3)
        assert torch.allclose(res["reciprocal"], 1 / (x.abs() + 1), atol=2e-3)
        assert torch.equal(res["lt"], (x < y).float())
        assert torch.equal(res["le"], (x <= y).float())
        assert torch.equal(res["ge"], (x >= 0.5).float())
        assert torch.equal(res["ne"], (x != y).float())
        assert torch.equal(res["abs"], x.abs())
        assert torch.equal(res["where"], torch.maximum(x, y))
        assert torch.equal(res["min"], x.min(1).values)
        assert torch.equal(res["argmin"], F.one_hot(x.argmin(1), 6).float())
        assert torch.allclose(res["log"], (x.abs() + 1).log(), atol=4e-3)
        assert torch.allclose(res["sqrt"], (x.abs() + 1).sqrt(), rtol=1e-3, atol=1e-3)
        assert torch.allclose(res["rsqrt"], (x.abs() + 1).rsqrt(), atol=1e-3)
        assert torch.allclose(res["sigmoid"], x.sigmoid(), atol=1e-3)
        assert torch.allclose(res["tanh"], x.tanh(), atol=1e-3)
        assert torch.allclose(res["div"], x / (y.abs() + 1), atol=5e-3, rtol=2e-3)
        assert (
            res["relu_cost"] == sim["relu_cost"] == (4, compare.cost(n, mul=True)[1] * (n - 1) * 24)
        )


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


# ----------------------------------------------------------------- empty tensors
@st.composite
def _empty_shapes(draw: st.DrawFn) -> tuple[int, ...]:
    """A shape with at least one zero-length dim."""
    shape = list(draw(shapes(min_dims=1, max_dims=3, max_side=3)))
    shape[draw(st.integers(0, len(shape) - 1))] = 0
    return tuple(shape)


def _empty_ops(x: smpc.SharedTensor, y: smpc.SharedTensor) -> dict[str, smpc.SharedTensor]:
    """Every elementwise op the protocols run on a comparison or an approximation."""
    return {
        "relu": x.relu(),
        "gt_public": x > 0.5,
        "gt_shared": x > y,
        "eq": x == y,
        "exp": x.exp(),
        "reciprocal": x.reciprocal(),
        "sigmoid": x.sigmoid(),
        "abs": x.abs(),
        "sign": x.sign(),
        "tanh": x.tanh(),
        "log": x.log(),
        "sqrt": x.sqrt(),
        "div": x / y,
    }


@given(n=party_counts, shape=_empty_shapes())
def test_nonlinear_ops_on_empty_tensors_return_empty_like_torch(
    n: int, shape: tuple[int, ...]
) -> None:
    # Prepare
    x = torch.zeros(shape)
    with smpc.Session(parties=n) as sess:
        xs, ys = sess.share(x), sess.share(x)
        # Execute
        got = {k: v.reveal() for k, v in _empty_ops(xs, ys).items()}
        dim = len(shape) - 1
        soft = xs.softmax(dim).reveal(), xs.log_softmax(dim).reveal()
    # Assert: torch's empty result of the same shape
    for name, value in got.items():
        assert value is not None and value.shape == torch.Size(shape), name
    assert all(v is not None and v.shape == x.softmax(dim).shape for v in soft)


@pytest.mark.parametrize(("shape", "dim"), [((0, 3), 1), ((2, 0, 3), 2), ((0, 4), -1)])
def test_max_over_a_nonempty_dim_of_an_empty_tensor_is_empty(
    shape: tuple[int, ...], dim: int
) -> None:
    x = torch.zeros(shape)
    with smpc.Session(parties=3) as sess:
        xs = sess.share(x)
        values = xs.max(dim).values.reveal()
        onehot = xs.argmax(dim).reveal()
    assert values is not None and values.shape == x.max(dim).values.shape
    assert onehot is not None and onehot.shape == x.shape


@pytest.mark.parametrize(("shape", "dim"), [((0,), None), ((0, 3), 0), ((3, 0), 1)])
def test_max_over_no_elements_is_a_shape_error_like_torch(
    shape: tuple[int, ...], dim: int | None
) -> None:
    with smpc.Session(parties=2) as sess, pytest.raises(ShapeError, match="no elements"):
        sess.share(torch.zeros(shape)).max(dim)


def _empty_program(sess: smpc.Session, shape: tuple[int, ...]) -> dict[str, Any]:
    """The empty-tensor ops in one party process (or all, simulated)."""
    x = sess.share(torch.zeros(shape) if sess.rank in (None, 0) else None, src=0)
    y = sess.share(torch.zeros(shape) if sess.rank in (None, 1) else None, src=1)
    out: dict[str, Any] = {k: v.reveal() for k, v in _empty_ops(x, y).items()}
    out["stats"] = (sess.stats.rounds, sess.stats.bytes)
    return out


@pytest.mark.distributed
@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_empty_tensors_in_the_distributed_runtime_match_the_simulation(n: int) -> None:
    from smpc.launch import run

    shape = (0, 3)
    program = functools.partial(_empty_program, shape=shape)
    results = run(program, parties=n, timeout=30)
    with smpc.Session(parties=n) as sess:
        sim = program(sess)
    for res in results:
        for name, value in res.items():
            if name != "stats":
                assert value.shape == torch.Size(shape), name
        # the same messages (empty ones) in both runtimes: nothing else is sent
        assert res["stats"][0] == sim["stats"][0]
        assert res["stats"][1] == sim["stats"][1] == 0


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

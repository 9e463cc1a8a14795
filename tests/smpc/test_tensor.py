"""SharedTensor against plaintext torch: arithmetic, products, shape ops, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smpc
from smpc import functional as F
from smpc.testing import assert_close, matmul_tolerance, product_tolerance, ulp
from tests.strategies import (
    bounds,
    broadcastable_pair,
    matmul_shapes,
    party_counts,
    seeds,
    shapes,
    tensors,
)

E = ulp(16)


@given(party_counts, broadcastable_pair(), bounds, seeds)
def test_add_sub_neg(
    n: int, sh: tuple[tuple[int, ...], tuple[int, ...]], bound: float, seed: int
) -> None:
    x, y = tensors(sh[0], bound, seed), tensors(sh[1], bound, seed + 1)
    with smpc.Session(parties=n) as sess:
        xs, ys = sess.share(x), sess.share(y)
        assert_close((xs + ys).reveal(), x + y, E)
        assert_close((xs - ys).reveal(), x - y, E)
        assert_close((-xs).reveal(), -x, E)
        assert_close((xs + y).reveal(), x + y, E)
        assert_close((y - xs).reveal(), y - x, E)
        assert_close((2.5 + xs).reveal(), x + 2.5, E)


@given(party_counts, broadcastable_pair(), bounds, seeds)
def test_mul_secret_secret(
    n: int, sh: tuple[tuple[int, ...], tuple[int, ...]], bound: float, seed: int
) -> None:
    x, y = tensors(sh[0], bound, seed), tensors(sh[1], bound, seed + 1)
    with smpc.Session(parties=n) as sess:
        got = (sess.share(x) * sess.share(y)).reveal()
    xb, yb = torch.broadcast_tensors(x, y)
    assert_close(got, x * y, product_tolerance(xb, yb))


@given(party_counts, shapes(max_dims=3), bounds, seeds, st.sampled_from([3, -2, 0.37, -12.5]))
def test_mul_public(n: int, shape: tuple[int, ...], bound: float, seed: int, c: float) -> None:
    x = tensors(shape, bound, seed)
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        assert_close((xs * c).reveal(), x * c, product_tolerance(x, torch.full_like(x, c)))
        w = tensors(shape, 2.0, seed + 7)
        assert_close((w * xs).reveal(), x * w, product_tolerance(x, w))


@given(party_counts, matmul_shapes(), bounds, seeds)
def test_matmul(
    n: int, sh: tuple[tuple[int, ...], tuple[int, ...]], bound: float, seed: int
) -> None:
    x, y = tensors(sh[0], bound, seed), tensors(sh[1], 3.0, seed + 1)
    want = x @ y
    tol = matmul_tolerance(
        x.reshape(-1, x.shape[-1]), y.reshape(y.shape[0], -1) if y.dim() <= 2 else y[0]
    ).max()
    with smpc.Session(parties=n) as sess:
        xs, ys = sess.share(x), sess.share(y)
        assert_close((xs @ ys).reveal(), want, tol)
        assert_close((xs @ y).reveal(), want, tol)
        assert_close((x @ ys).reveal(), want, tol)


@given(party_counts, matmul_shapes(), matmul_shapes(), st.sampled_from(["probabilistic", "local"]))
def test_matmuls_batch_the_shared_products(
    n: int,
    sh1: tuple[tuple[int, ...], tuple[int, ...]],
    sh2: tuple[tuple[int, ...], tuple[int, ...]],
    truncation: str,
) -> None:
    """``ops.matmuls`` equals ``matmul`` pair by pair; the shared @ shared products
    share two rounds (the default truncation); a public operand is allowed."""
    from smpc import ops

    if truncation == "local" and n != 2:
        n = 2
    x1, y1 = tensors(sh1[0], 2.0, 1), tensors(sh1[1], 2.0, 2)
    x2, y2 = tensors(sh2[0], 2.0, 3), tensors(sh2[1], 2.0, 4)
    with smpc.Session(parties=n, truncation=truncation) as sess:
        a1, b1, a2, b2 = (sess.share(v) for v in (x1, y1, x2, y2))
        before = sess.stats.snapshot()
        z1, z2, z3 = ops.matmuls([(a1, b1), (a2, b2), (a1, y1)])
        rounds = (sess.stats - before).rounds
        for z, want, (x, y) in ((z1, x1 @ y1, (x1, y1)), (z2, x2 @ y2, (x2, y2))):
            tol = matmul_tolerance(
                x.reshape(-1, x.shape[-1]), y.reshape(y.shape[0], -1) if y.dim() <= 2 else y[0]
            ).max()
            assert tuple(z.shape) == tuple(want.shape)
            assert_close(z.reveal(), want, tol)
        assert tuple(z3.shape) == tuple((x1 @ y1).shape)
    if truncation == "probabilistic":
        assert rounds == 3  # two products in two rounds, the public one truncated in one


def test_matmuls_errors() -> None:
    from smpc import ops
    from smpc.errors import SessionMismatchError, ShapeError

    with smpc.Session(parties=2) as a, smpc.Session(parties=2) as b:
        x = a.share(torch.ones(2, 3))
        assert ops.matmuls([]) == []
        with pytest.raises(TypeError, match="at least one operand must be a SharedTensor"):
            ops.matmuls([(torch.ones(2, 3), torch.ones(3, 2))])
        with pytest.raises(SessionMismatchError):
            ops.matmuls([(x, x.t()), (b.share(torch.ones(2, 3)), x.t())])
        with pytest.raises(ShapeError, match="inner dimensions must match"):
            ops.matmuls([(x, x.t()), (x, x)])
        from smpc import ring

        assert ops.bilinears([]) == []
        with pytest.raises(TypeError, match="item 0 needs two SharedTensors"):
            ops.bilinears([(ring.MatmulOp(), x, torch.ones(3, 2))])  # type: ignore[list-item]
        with pytest.raises(ShapeError, match="item 1 .MatmulOp. cannot take shapes"):
            ops.bilinears([(ring.MatmulOp(), x, x.t()), (ring.MatmulOp(), x, x)])
        with pytest.raises(SessionMismatchError):
            ops.bilinears([(ring.MatmulOp(), x, b.share(torch.ones(3, 2)))])


def test_matmul_large_shape_exact_within_tolerance() -> None:
    x, y = torch.randn(64, 784), torch.randn(784, 128)
    with smpc.Session(parties=2) as sess:
        got = (sess.share(x) @ sess.share(y)).reveal()
    assert_close(got, x @ y, matmul_tolerance(x, y))


@given(
    party_counts,
    st.integers(1, 3),
    st.integers(1, 4),
    st.sampled_from([1, 2]),
    st.sampled_from([0, 1]),
    st.sampled_from(["ss", "sp", "ps"]),
    seeds,
)
def test_conv2d(n: int, c: int, o: int, stride: int, padding: int, mode: str, seed: int) -> None:
    x, w = tensors((2, c, 6, 7), 4.0, seed), tensors((o, c, 3, 3), 1.0, seed + 1)
    b = tensors((o,), 1.0, seed + 2)
    want = torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding)
    tol = 9 * c * (4.0 * E + E) + 3 * E
    with smpc.Session(parties=n) as sess:
        xi = sess.share(x) if mode[0] == "s" else x
        wi = sess.share(w) if mode[1] == "s" else w
        got = F.conv2d(xi, wi, sess.share(b), stride=stride, padding=padding).reveal()
    assert_close(got, want, tol)


@given(party_counts, shapes(min_dims=1, max_dims=3), seeds, st.data())
def test_sum_mean(n: int, shape: tuple[int, ...], seed: int, data: st.DataObject) -> None:
    x = tensors(shape, 50.0, seed)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        assert_close(xs.sum().reveal(), x.sum(), x.numel() * E)
        assert_close(xs.sum(dim).reveal(), x.sum(dim), x.numel() * E)
        assert_close(xs.mean(dim, keepdim=True).reveal(), x.mean(dim, keepdim=True), 60 * E)


@given(party_counts, seeds)
def test_shape_ops(n: int, seed: int) -> None:
    x = tensors((2, 3, 4), 10.0, seed)
    y = tensors((2, 3, 4), 10.0, seed + 1)
    with smpc.Session(parties=n) as sess:
        xs, ys = sess.share(x), sess.share(y)
        cases = [
            (xs.reshape(6, 4), x.reshape(6, 4)),
            (xs.view(-1), x.view(-1)),
            (xs.flatten(1), x.flatten(1)),
            (xs.transpose(0, 2), x.transpose(0, 2)),
            (xs[0].t(), x[0].t()),
            (xs.permute(2, 0, 1), x.permute(2, 0, 1)),
            (xs[1, :, 1:3], x[1, :, 1:3]),
            (xs[..., -1], x[..., -1]),
            (xs[:, torch.tensor([0, 2])], x[:, torch.tensor([0, 2])]),
            (smpc.cat([xs, ys], dim=1), torch.cat([x, y], dim=1)),
            (smpc.stack([xs, ys], dim=-1), torch.stack([x, y], dim=-1)),
            (xs[:, :1].expand(2, 3, 4), x[:, :1].expand(2, 3, 4)),
            (xs.unsqueeze(1).squeeze(1), x),
            (xs.T, x.permute(2, 1, 0)),
        ]
        for got, want in cases:
            assert got.shape == want.shape
            assert_close(got.reveal(), want, E)


@given(party_counts, st.integers(1, 2), st.integers(0, 1), seeds)
def test_conv_transpose2d(n: int, stride: int, padding: int, seed: int) -> None:
    """``ops.conv_transpose2d`` against torch: shared/shared, shared/public, public/shared."""
    from smpc import ops
    from smpc.errors import ShapeError

    x, w = tensors((2, 3, 4, 5), 2.0, seed), tensors((3, 2, 3, 3), 2.0, seed + 1)
    kw = {"stride": stride, "padding": padding, "output_padding": stride - 1}
    want = torch.nn.functional.conv_transpose2d(x, w, **kw)
    tol = 27 * 2.0 * 2.0 * E * 4 + 4 * E
    with smpc.Session(parties=n) as sess:
        xs, ws = sess.share(x), sess.share(w)
        for a, b in ((xs, ws), (xs, w), (x, ws)):
            assert_close(ops.conv_transpose2d(a, b, **kw).reveal(), want, tol)
        with pytest.raises(ShapeError, match="conv_transpose2d: expected input"):
            ops.conv_transpose2d(xs, ws.reshape(2, 3, 3, 3))


@given(party_counts, st.integers(0, 4), seeds)
def test_pow_and_square(n: int, k: int, seed: int) -> None:
    x = tensors((5,), 3.0, seed)
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        assert_close(xs.square().reveal(), x * x, product_tolerance(x, x))
        assert_close(xs.pow(k).reveal(), x**k, 1e-3 * 3.0**k + 1e-3)


def test_integer_inputs_and_float_output() -> None:
    # Integers shared reveal as int64 (the dtype shared); dtype= asks for floats.
    with smpc.Session(parties=2) as sess:
        prod = sess.share(torch.tensor([3, -4])) * sess.share(torch.tensor([2, 5]))
        out = prod.reveal()
        as_float = prod.reveal(dtype=torch.float32)
    assert out.dtype == torch.int64
    assert out.tolist() == [6, -20]
    assert as_float.dtype == torch.float32
    assert as_float.tolist() == [6.0, -20.0]


def test_reveal_to_one_party() -> None:
    with smpc.Session(parties=("alice", "bob", "bill")) as sess:
        x = sess.share(torch.tensor([1.5]))
        before = sess.stats.snapshot()
        assert x.reveal(to="bob").tolist() == [1.5]
        d = sess.stats - before
        assert d.rounds == 1
        assert d.bytes_per_party == [8, 0, 8]  # bob receives, sends nothing


def test_tutorial_values() -> None:
    with smpc.Session(parties=("alice", "bob"), frac_bits=16) as sess:
        x = sess.share(torch.tensor([25.0, -1.5]))
        y = sess.share(torch.tensor([5.0, 2.0]))
        assert (x * y + 3).reveal().tolist() == [128.0, 0.0]


# ----------------------------------------------------------------- bad input
def test_repr_hides_value_and_bool_raises() -> None:
    with smpc.Session(parties=2) as sess:
        x = sess.share(torch.tensor([123.456]))
        assert "123" not in repr(x) and "123" not in str(x)
        with pytest.raises(smpc.SecretBranchError, match="reveal"):
            bool(x)
        with pytest.raises(smpc.SecretBranchError):
            if x:  # noqa: SIM108
                pass


def test_nan_inf_and_range() -> None:
    with smpc.Session(parties=2) as sess:
        with pytest.raises(smpc.EncodingOverflowError, match="finite"):
            sess.share(torch.tensor([float("nan")]))
        with pytest.raises(smpc.EncodingOverflowError, match="32768"):
            sess.share(torch.tensor([1e6]))
        x = sess.share(torch.tensor([1.0]))
        with pytest.raises(smpc.EncodingOverflowError, match="other"):
            x + float("inf")


def test_shape_mismatch() -> None:
    with smpc.Session(parties=2) as sess:
        x, y = sess.share(torch.ones(3)), sess.share(torch.ones(4))
        with pytest.raises(smpc.ShapeError, match=r"\(3,\) and \(4,\)"):
            x * y
        with pytest.raises(smpc.ShapeError, match="inner dimensions"):
            sess.share(torch.ones(2, 3)) @ sess.share(torch.ones(2, 3))
        with pytest.raises(smpc.ShapeError, match="channels"):
            F.conv2d(sess.share(torch.ones(1, 2, 5, 5)), torch.ones(1, 3, 3, 3))


def test_two_sessions_do_not_mix() -> None:
    with (
        smpc.Session(parties=2) as a,
        smpc.Session(parties=2) as b,
        pytest.raises(smpc.SessionMismatchError, match="different sessions"),
    ):
        a.share(torch.ones(2)) + b.share(torch.ones(2))


def test_parties_validation() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        smpc.Session(parties=1)
    with pytest.raises(ValueError, match="distinct"):
        smpc.Session(parties=("a", "a"))
    with pytest.raises(TypeError, match="parties"):
        smpc.Session(parties="ab")
    with smpc.Session(parties=2) as sess, pytest.raises(ValueError, match="src"):
        sess.share(torch.ones(1), src="carol")


def test_use_after_close() -> None:
    sess = smpc.Session(parties=2)
    x = sess.share(torch.ones(2))
    sess.close()
    with pytest.raises(smpc.SessionClosedError, match="closed"):
        x.reveal()
    with pytest.raises(smpc.SessionClosedError):
        sess.share(torch.ones(1))


@given(
    party_counts,
    st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**31, -(2**31) - 1, 7]),
    seeds,
)
def test_public_int_operands_are_exact_or_a_range_error(n: int, k: int, seed: int) -> None:
    # Prepare: small shared values; a public int anywhere in int64 (its minimum included)
    x = torch.randint(-8, 9, (3,), generator=torch.Generator().manual_seed(seed)).double()
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x)
        # Execute / Assert: + and * against Python ints, or EncodingOverflowError naming `other`
        for op, limit in (
            (lambda a, b: a + b, sess.encoding.max_value),
            (lambda a, b: a * b, 2**31),
        ):
            if abs(k) > limit:
                with pytest.raises(smpc.EncodingOverflowError, match="`other`"):
                    op(xs, k)
                with pytest.raises(smpc.EncodingOverflowError, match="`other`"):
                    op(xs, torch.tensor(k))
            else:
                got = op(xs, k).reveal()
                assert got is not None
                want = [float(op(int(v), k)) for v in x.tolist()]
                torch.testing.assert_close(
                    got.double(), torch.tensor(want, dtype=torch.float64), rtol=2.0**-23, atol=0
                )


def test_public_operand_beyond_64_bits_is_a_range_error() -> None:
    with smpc.Session(parties=2) as sess:
        xs = sess.share(torch.ones(2))
        for k in (2**63, -(2**63) - 1, 2**70):
            with pytest.raises(smpc.EncodingOverflowError, match="`other`"):
                xs * k
            with pytest.raises(smpc.EncodingOverflowError, match="`other`"):
                xs + k


@st.composite
def _reductions(draw: st.DrawFn) -> tuple[tuple[int, ...], object, bool]:
    """A shape (0-d and zero-length dims included), a dim as torch takes it (or out of range)."""
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    nd = len(shape)
    one = st.integers(-max(nd, 1) - 1, max(nd, 1))
    dim = draw(st.none() | one | st.lists(one, max_size=2, unique=True).map(tuple))
    return shape, dim, draw(st.booleans())


@given(party_counts, _reductions(), seeds)
def test_sum_and_mean_follow_torch_on_any_shape_and_dim(
    n: int, case: tuple[tuple[int, ...], object, bool], seed: int
) -> None:
    # Prepare: torch's answer is the oracle: a value, an IndexError, or NaN (empty mean)
    shape, dim, keepdim = case
    x = tensors(shape, 10.0, seed)
    for name in ("sum", "mean"):
        try:
            want = getattr(x, name)() if dim is None else getattr(x, name)(dim, keepdim)
        except (IndexError, RuntimeError) as err:
            want = err
        with smpc.Session(parties=n) as sess:
            xs = sess.share(x)
            # Execute / Assert
            if isinstance(want, Exception):
                with pytest.raises((IndexError, ValueError), match="`dim`"):
                    getattr(xs, name)(dim, keepdim)
            elif bool(want.isnan().any()):
                with pytest.raises(smpc.ShapeError, match="NaN"):
                    getattr(xs, name)(dim, keepdim)
            else:
                got = getattr(xs, name)() if dim is None else getattr(xs, name)(dim, keepdim)
                assert got.shape == want.shape
                assert_close(got.reveal(), want, E * max(x.numel(), 1))


def test_sum_of_a_0d_tensor_over_dim_0_is_itself_with_grad() -> None:
    with smpc.Session(parties=2) as sess:
        x = sess.share(torch.tensor(2.5), requires_grad=True)
        y = x.mean(0) + x.sum(-1)
        y.backward()
        assert_close(y.reveal(), torch.tensor(5.0), E)
        assert x.grad is not None
        assert_close(x.grad.reveal(), torch.tensor(2.0), E)
        with pytest.raises(IndexError, match=r"`dim` must be in \[-1, 0\] for a 0-d tensor; got 1"):
            x.sum(1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stride": 0}, ValueError, "`stride` must be an int >= 1"),
        ({"stride": (1, 0)}, ValueError, "`stride`"),
        ({"stride": 1.5}, TypeError, "`stride`"),
        ({"padding": -1}, ValueError, "`padding` must be an int >= 0"),
        ({"dilation": 0}, ValueError, "`dilation` must be an int >= 1"),
        ({"groups": 0}, ValueError, "`groups` must be an int >= 1"),
        ({"groups": True}, TypeError, "`groups`"),
        ({"stride": (1, 1, 1)}, ValueError, "`stride`"),
    ],
)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_conv2d_bad_arguments_are_named(
    kwargs: dict[str, object], error: type[Exception], match: str, requires_grad: bool
) -> None:
    with smpc.Session(parties=2) as sess:
        img = sess.share(torch.zeros(1, 1, 4, 4), requires_grad=requires_grad)
        w = sess.share(torch.ones(1, 1, 2, 2))
        with pytest.raises(error, match=match):
            F.conv2d(img, w, **kwargs)  # type: ignore[arg-type]
        if "stride" in kwargs:  # the pools check their stride the same way
            for pool in (F.avg_pool2d, F.max_pool2d):
                with pytest.raises(error, match="`stride`"):
                    pool(img, 2, stride=kwargs["stride"])  # type: ignore[arg-type]


# ----------------------------------------------------------------- reveal dtypes
_F = 16


@given(
    party_counts,
    shapes(min_dims=1),
    st.lists(
        st.floats(-(2.0 ** (31 - _F)), 2.0 ** (31 - _F), allow_nan=False), min_size=1, max_size=4
    ),
)
def test_float64_reveal_is_the_encoded_value_exactly(
    n: int, shape: tuple[int, ...], values: list[float]
) -> None:
    # Prepare: in-range float64 values (hypothesis picks edges: 0, subnormals, the limit)
    x = torch.tensor(values, dtype=torch.float64).repeat(64)[: torch.Size(shape).numel()]
    x = x.reshape(shape)
    encoded = torch.round(x * 2.0**_F) / 2.0**_F
    with smpc.Session(parties=n, frac_bits=_F) as sess:
        out = sess.share(x).reveal()
        out32 = sess.share(x.float()).reveal()
    # Assert: float64 in, float64 out, no bit lost; float32 as before
    assert out.dtype == torch.float64
    assert torch.equal(out - encoded, torch.zeros_like(encoded))
    assert out32.dtype == torch.float32
    assert torch.equal(out32, (torch.round(x.float().double() * 2.0**_F) / 2.0**_F).float())


def test_reveal_dtype_of_inputs_and_override() -> None:
    import numpy as np

    with smpc.Session(parties=3) as sess:
        cases = {
            "list": (sess.share([1.5, -2.25]), torch.float32),
            "float": (sess.share(0.5), torch.float32),
            "numpy64": (sess.share(np.array([4916.2243576])), torch.float64),
            "numpy32": (sess.share(np.array([1.5], dtype=np.float32)), torch.float32),
            "int": (sess.share(torch.tensor([3, -4], dtype=torch.int32)), torch.int64),
            "bool": (sess.share(torch.tensor([True, False])), torch.int64),
            "half": (sess.share(torch.tensor([1.5], dtype=torch.float16)), torch.float16),
        }
        got = {k: (v.dtype, v.reveal().dtype) for k, (v, _) in cases.items()}
        big = cases["numpy64"][0]
        assert big.reveal().item() == round(4916.2243576 * 2**16) / 2**16  # all 32 ring bits
        assert big.reveal(dtype=torch.float32).dtype == torch.float32
        assert big.reveal(dtype=torch.int64).tolist() == [4916]
        assert cases["int"][0].reveal().tolist() == [3, -4]
        with pytest.raises(TypeError, match="`dtype` must be a torch.dtype"):
            big.reveal(dtype="float64")  # type: ignore[arg-type]
    assert got == {k: (dt, dt) for k, (_, dt) in cases.items()}


_DTYPES = [torch.float32, torch.float64, torch.int64]


@pytest.mark.parametrize("da", _DTYPES)
@pytest.mark.parametrize("db", _DTYPES)
def test_result_dtypes_follow_torch_promotion(da: torch.dtype, db: torch.dtype) -> None:
    a, b = torch.tensor([3, -2]).to(da), torch.tensor([2, 5]).to(db)
    pt = torch.promote_types(da, db)
    with smpc.Session(parties=2) as sess:
        sa, sb = sess.share(a), sess.share(b)
        pairs = {
            "add": (sa + sb, a + b),
            "mul": (sa * sb, a * b),
            "mul_public": (sa * b, a * b),
            "rmul_public": (a * sb, a * b),
            "mul_float_scalar": (sa * 0.5, a * 0.5),
            "mul_int_scalar": (sa * 3, a * 3),
            "matmul": (sa @ sb, a.to(pt) @ b.to(pt)),  # torch.matmul itself does not promote
            "cat": (smpc.cat([sa, sb]), torch.cat([a, b])),
            "gt": (sa > sb, (a > b).to(pt)),  # shared 0/1 in the operands' dtype
            "relu": (sa.relu(), a.relu()),
            "sum": (sa.sum(), a.sum()),
            "index": (sa[0], a[0]),
            "reshape": (sa.reshape(2, 1), a.reshape(2, 1)),
            "div": (sa / 2, a / 2),
            "exp": (sb.exp(), b.exp()),
            "mean": (sb.mean(), b.double().mean().to(b.exp().dtype)),
        }
        got = {k: (s.dtype, s.reveal().dtype) for k, (s, _) in pairs.items()}
        values = {k: s.reveal() for k, (s, _) in pairs.items() if k != "exp"}
    assert got == {k: (t.dtype, t.dtype) for k, (_, t) in pairs.items()}
    for k, v in values.items():  # exact on these small values (exp is approximate)
        assert torch.equal(v, pairs[k][1]), k


def test_gradients_have_their_tensors_dtype() -> None:
    with smpc.Session(parties=2) as sess:
        w = sess.share(torch.tensor([1.5, -2.0], dtype=torch.float64), requires_grad=True)
        v = sess.share(torch.tensor([0.5, 0.25]), requires_grad=True)
        (w * v).sum().backward()
        assert w.grad is not None and v.grad is not None
        gw, gv = w.grad.reveal(), v.grad.reveal()
    assert gw.dtype == torch.float64 and gv.dtype == torch.float32
    assert gw.tolist() == [0.5, 0.25] and gv.tolist() == [1.5, -2.0]

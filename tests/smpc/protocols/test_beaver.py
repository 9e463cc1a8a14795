"""Beaver protocols at ring level: exact modulo 2^64, and their communication cost."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smpc
from smpc import ring
from smpc.protocols import beaver
from tests.strategies import broadcastable_pair, matmul_shapes, party_counts, seeds


def _ring(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=g)


def _share(sess: smpc.Session, x: torch.Tensor) -> torch.Tensor:
    from smpc.sharing import additive_shares

    return additive_shares(x, sess.world_size, sess.prg)


@given(party_counts, broadcastable_pair(), seeds)
def test_mul_exact(n: int, sh: tuple[tuple[int, ...], tuple[int, ...]], seed: int) -> None:
    x, y = _ring(sh[0], seed), _ring(sh[1], seed + 1)
    nd = max(len(sh[0]), len(sh[1]))
    x = x.reshape((1,) * (nd - x.dim()) + tuple(x.shape))
    y = y.reshape((1,) * (nd - y.dim()) + tuple(y.shape))
    with smpc.Session(parties=n) as sess:
        z = beaver.mul(sess.comm, sess.dealer, _share(sess, x), _share(sess, y))
        assert torch.equal(z.sum(0), x * y)


@given(party_counts, seeds)
def test_square_exact(n: int, seed: int) -> None:
    x = _ring((3, 4), seed)
    with smpc.Session(parties=n) as sess:
        z = beaver.square(sess.comm, sess.dealer, _share(sess, x))
        assert torch.equal(z.sum(0), x * x)


@given(party_counts, matmul_shapes(), seeds)
def test_matmul_exact(n: int, sh: tuple[tuple[int, ...], tuple[int, ...]], seed: int) -> None:
    if len(sh[0]) < 2 or len(sh[1]) < 2:
        sh = ((2, sh[0][-1]), (sh[0][-1], 3))
    x, y = _ring(sh[0], seed), _ring(sh[1], seed + 1)
    nd = max(x.dim(), y.dim())
    x = x.reshape((1,) * (nd - x.dim()) + tuple(x.shape))
    y = y.reshape((1,) * (nd - y.dim()) + tuple(y.shape))
    with smpc.Session(parties=n) as sess:
        z = beaver.matmul(sess.comm, sess.dealer, _share(sess, x), _share(sess, y))
        assert torch.equal(z.sum(0), torch.matmul(x, y))


@given(party_counts, seeds)
def test_conv2d_exact(n: int, seed: int) -> None:
    x, w = _ring((2, 3, 6, 6), seed), _ring((4, 3, 3, 3), seed + 1)
    with smpc.Session(parties=n) as sess:
        z = beaver.conv2d(sess.comm, sess.dealer, _share(sess, x), _share(sess, w), padding=(1, 1))
        assert torch.equal(z.sum(0), ring.conv2d(x, w, padding=1))


@given(
    party_counts,
    st.integers(1, 3),
    st.integers(0, 1),
    st.integers(1, 2),
    st.sampled_from([1, 2]),
    seeds,
)
def test_conv_transpose2d_exact(
    n: int, stride: int, padding: int, dilation: int, groups: int, seed: int
) -> None:
    """The transposed convolution (a convolution's input gradient) as a Beaver product."""
    x, w = _ring((2, 4, 5, 4), seed), _ring((4, 6 // groups, 3, 2), seed + 1)
    op = ring.ConvTranspose2dOp(
        stride=(stride, stride),
        padding=(padding, padding),
        output_padding=(stride - 1, 0),
        dilation=(dilation, dilation),
        groups=groups,
    )
    want = ring.conv_transpose2d(
        x, w, stride=stride, padding=padding, output_padding=(stride - 1, 0),
        dilation=dilation, groups=groups,
    )  # fmt: skip
    with smpc.Session(parties=n) as sess:
        z = beaver.bilinear(sess.comm, sess.dealer, op, _share(sess, x), _share(sess, w))
        assert torch.equal(z.sum(0), want)
        assert tuple(op.out_shape(x.shape, w.shape)) == tuple(want.shape)


def test_mul_cost_one_round_two_elements() -> None:
    """Online cost of a Beaver product: 1 round, 2 ring elements per element per party (n=2);
    (n-1) x 2 in general; one correction share from the dealer."""
    for n in (2, 3, 4):
        with smpc.Session(parties=n) as sess:
            x, y = _share(sess, _ring((100,), 1)), _share(sess, _ring((100,), 2))
            before = sess.stats.snapshot()
            beaver.mul(sess.comm, sess.dealer, x, y)
            d = sess.stats - before
            assert d.rounds == 1
            assert d.bytes_per_party == [2 * 8 * 100 * (n - 1)] * n
            assert d.dealer_bytes == 8 * 100
            assert d.by_op["mul"].calls == 1


def test_fixed_point_mul_cost() -> None:
    """A fixed-point product = Beaver (1 round, 2 elements) + truncation (1 round, 1 element)."""
    with smpc.Session(parties=2) as sess:
        x, y = sess.share(torch.randn(50)), sess.share(torch.randn(50))
        before = sess.stats.snapshot()
        x * y
        d = sess.stats - before
        assert d.rounds == 2
        assert d.by_op["mul"].bytes == 2 * 2 * 8 * 50
        assert d.by_op["trunc"].bytes == 2 * 8 * 50


def test_pooled_small_triples_are_valid_and_fresh() -> None:
    """Small elementwise requests come from a vectorised pool: each is a valid, fresh triple."""
    from smpc.protocols.beaver import MulTriple

    with smpc.Session(parties=3) as sess:
        seen = []
        for _ in range(300):  # crosses a pool refill
            t = sess.dealer.request(MulTriple((2,), (2,)))
            a, b, c = (t[k].sum(0) for k in ("a", "b", "c"))
            assert torch.equal(a * b, c)
            seen.append(a)
        assert len({tuple(v.tolist()) for v in seen}) == len(seen)


@given(party_counts, st.integers(1, 40), st.integers(1, 300), st.integers(1, 40), seeds)
def test_kept_operand_products_match_plaintext_and_send_only_the_left_operand(
    n: int, m: int, k: int, p: int, seed: int
) -> None:
    """A right operand opened once under a kept mask: fixed-point products stay within 1 ulp."""
    from smpc import encoding
    from smpc.protocols import truncation

    g = torch.Generator().manual_seed(seed)
    fx = encoding.FixedPoint(16)
    yp = torch.randn(k, p, generator=g, dtype=torch.float64)
    with smpc.Session(parties=n, seed=seed) as sess:
        y = _share(sess, fx.encode(yp))
        before = sess.stats.snapshot()
        kept = beaver.mask_operand(sess.comm, sess.dealer, y, key=7)
        assert (sess.stats - before).bytes_per_party[0] == k * p * 8 * (n - 1)
        for _ in range(2):
            xp = torch.randn(m, k, generator=g, dtype=torch.float64)
            x = _share(sess, fx.encode(xp))
            before = sess.stats.snapshot()
            z = beaver.bilinear_trunc_kept(sess.comm, sess.dealer, ring.MatmulOp(), x, kept, 16)
            cost = sess.stats - before
            exact = ring.matmul(fx.encode(xp), fx.encode(yp))  # ring product, then floor
            assert cost.rounds == 2
            assert cost.bytes_per_party[0] == (m * k + m * p) * 8 * (n - 1)
            diff = z.sum(0) - (exact >> 16)
            assert int(diff.min()) >= 0 and int(diff.max()) <= 1
        assert truncation.TRUNC_BOUND_BITS == 62


def test_kept_mask_unknown_key_is_a_clear_error() -> None:
    from smpc.errors import DealerError
    from smpc.protocols.beaver import KeptBilinearTruncTriple

    with smpc.Session(parties=2) as sess:
        req = KeptBilinearTruncTriple(ring.MatmulOp(), (2, 3), (3, 4), 16, key=99)
        with pytest.raises(DealerError, match="no kept mask with key 99"):
            sess.dealer.request(req)


@given(
    party_counts,
    st.integers(17, 70),
    st.integers(1, 1100),
    st.integers(1, 20),
    st.sampled_from(["2d", "left_batch", "right_batch"]),
    seeds,
)
def test_matmul_many_rows_exact_and_truncated(
    n: int, m: int, k: int, p: int, layout: str, seed: int
) -> None:
    """Products with more than 16 rows take the fused limb-GEMM local step (2-5 parties)."""
    from smpc import encoding

    # Protocol operands have equal ranks (the tensor layer aligns them below the party axis).
    xs = (2, m, k) if layout == "left_batch" else (1, m, k) if layout == "right_batch" else (m, k)
    ys = (2, k, p) if layout == "right_batch" else (1, k, p) if layout == "left_batch" else (k, p)
    x, y = _ring(xs, seed), _ring(ys, seed + 1)
    with smpc.Session(parties=n) as sess:
        z = beaver.matmul(sess.comm, sess.dealer, _share(sess, x), _share(sess, y))
        assert torch.equal(z.sum(0), torch.matmul(x, y))
        fx = encoding.FixedPoint(16)
        g = torch.Generator().manual_seed(seed)
        xp = torch.randn(xs, generator=g, dtype=torch.float64)
        yp = torch.randn(ys, generator=g, dtype=torch.float64)
        xe, ye = fx.encode(xp), fx.encode(yp)
        zt = beaver.bilinear_trunc(
            sess.comm, sess.dealer, ring.MatmulOp(), _share(sess, xe), _share(sess, ye), 16
        )
        diff = zt.sum(0) - (torch.matmul(xe, ye) >> 16)
        assert int(diff.min()) >= 0 and int(diff.max()) <= 1


@given(
    party_counts,
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(1, 60), st.integers(1, 30)),
        min_size=1,
        max_size=3,
    ),
    seeds,
)
def test_bilinear_trunc_many_matches_plaintext_in_two_rounds(
    n: int, dims: list[tuple[int, int, int]], seed: int
) -> None:
    """Several fixed-point products share two rounds, send what they would one by one,
    and each stays within 1 ulp of the floored plaintext product."""
    from smpc import encoding

    fx = encoding.FixedPoint(16)
    g = torch.Generator().manual_seed(seed)
    plain = [
        (
            fx.encode(torch.randn(m, k, generator=g, dtype=torch.float64)),
            fx.encode(torch.randn(k, p, generator=g, dtype=torch.float64)),
        )
        for m, k, p in dims
    ]
    with smpc.Session(parties=n, seed=seed) as sess:
        items = [(ring.MatmulOp(), _share(sess, x), _share(sess, y)) for x, y in plain]
        before = sess.stats.snapshot()
        zs = beaver.bilinear_trunc_many(sess.comm, sess.dealer, items, 16)
        cost = sess.stats - before
        assert cost.rounds == 2
        sent = sum(m * k + k * p + m * p for m, k, p in dims) * 8 * (n - 1)
        assert cost.bytes_per_party == [sent] * n
        for z, (x, y) in zip(zs, plain, strict=True):
            diff = z.sum(0) - (torch.matmul(x, y) >> 16)
            assert int(diff.min()) >= 0 and int(diff.max()) <= 1
        assert beaver.bilinear_trunc_many(sess.comm, sess.dealer, [], 16) == []


@given(
    party_counts,
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 40), st.integers(1, 6), st.booleans()),
        min_size=1,
        max_size=3,
    ),
    seeds,
)
def test_bilinear_trunc_many_keeps_untruncated_products_exact(
    n: int, dims: list[tuple[int, int, int, bool]], seed: int
) -> None:
    """``truncate=False`` products come back exact at the doubled scale (a plain triple,
    nothing sent in the second round); the others as before; 1 round if none truncates."""
    from smpc import encoding

    fx = encoding.FixedPoint(16)
    g = torch.Generator().manual_seed(seed)
    plain = [
        (
            fx.encode(torch.randn(m, k, generator=g, dtype=torch.float64)),
            fx.encode(torch.randn(k, p, generator=g, dtype=torch.float64)),
        )
        for m, k, p, _ in dims
    ]
    cut = [c for *_, c in dims]
    with smpc.Session(parties=n, seed=seed) as sess:
        items = [(ring.MatmulOp(), _share(sess, x), _share(sess, y)) for x, y in plain]
        before = sess.stats.snapshot()
        zs = beaver.bilinear_trunc_many(sess.comm, sess.dealer, items, 16, truncate=cut)
        cost = sess.stats - before
        assert cost.rounds == (2 if any(cut) else 1)
        sent = sum(m * k + k * p + (m * p if c else 0) for m, k, p, c in dims) * 8 * (n - 1)
        assert cost.bytes_per_party == [sent] * n
        for z, (x, y), c in zip(zs, plain, cut, strict=True):
            exact = torch.matmul(x, y)
            if c:
                diff = z.sum(0) - (exact >> 16)
                assert int(diff.min()) >= 0 and int(diff.max()) <= 1
            else:
                assert torch.equal(z.sum(0), exact)
        with pytest.raises(ValueError, match="`truncate` must have 1 flags; got 2"):
            beaver.bilinear_trunc_many(
                sess.comm, sess.dealer, items[:1], 16, truncate=[True, False]
            )


@given(
    party_counts,
    st.tuples(st.integers(1, 40), st.integers(1, 30), st.integers(1, 20)),
    st.tuples(st.booleans(), st.booleans(), st.booleans()).filter(lambda t: t[0] or t[1]),
    seeds,
)
def test_linear_backward_reuses_the_forward_masks(
    n: int, dims: tuple[int, int, int], flags: tuple[bool, bool, bool], seed: int
) -> None:
    """A linear layer's forward keeps its masks; the backward opens only the output
    gradient, and gives ``g @ W`` and ``g^T @ x`` (exact, or within one ulp when
    truncated); the provider then holds no mask."""
    from smpc import encoding

    m, k, p = dims
    grad_input, grad_weight, truncate_weight = flags
    fx = encoding.FixedPoint(16)
    gen = torch.Generator().manual_seed(seed)
    x, wt, g = (
        fx.encode(torch.randn(*shape, generator=gen, dtype=torch.float64))
        for shape in ((m, k), (k, p), (m, p))
    )
    with smpc.Session(parties=n, seed=seed) as sess:
        comm, dealer = sess.comm, sess.dealer
        z, masks = beaver.linear_forward(comm, dealer, _share(sess, x), _share(sess, wt), 16, -2)
        diff = z.sum(0) - (torch.matmul(x, wt) >> 16)
        assert int(diff.min()) >= 0 and int(diff.max()) <= 1
        assert dealer.kept_masks == 2
        before = sess.stats.snapshot()
        gx, gw = beaver.linear_backward(
            comm, dealer, _share(sess, g), masks, 16,
            grad_input=grad_input, grad_weight=grad_weight, truncate_weight=truncate_weight,
        )  # fmt: skip
        cost = sess.stats - before
        assert dealer.kept_masks == 0  # released with the backward's request
    # Assert: one new opening (g), then the truncated outputs
    truncated = (m * k if grad_input else 0) + (p * k if grad_weight and truncate_weight else 0)
    assert cost.rounds == (2 if truncated else 1)
    assert cost.bytes_per_party == [(m * p + truncated) * 8 * (n - 1)] * n
    assert (gx is None) != grad_input and (gw is None) != grad_weight
    if gx is not None:
        diff = gx.sum(0) - (torch.matmul(g, wt.t()) >> 16)
        assert int(diff.min()) >= 0 and int(diff.max()) <= 1
    if gw is not None:
        exact = torch.matmul(g.t(), x)
        if truncate_weight:
            diff = gw.sum(0) - (exact >> 16)
            assert int(diff.min()) >= 0 and int(diff.max()) <= 1
        else:
            assert torch.equal(gw.sum(0), exact)


def test_linear_backward_checks_the_gradient_shape() -> None:
    from smpc.errors import ShapeError

    with smpc.Session(parties=2, seed=0) as sess:
        x, wt = (
            _share(sess, torch.ones(4, 3, dtype=torch.int64)),
            _share(sess, torch.ones(3, 2, dtype=torch.int64)),
        )
        _, masks = beaver.linear_forward(sess.comm, sess.dealer, x, wt, 16, -2)
        g = _share(sess, torch.ones(4, 5, dtype=torch.int64))
        with pytest.raises(ShapeError, match=r"forward output's shape \(4, 2\); got \(4, 5\)"):
            beaver.linear_backward(
                sess.comm, sess.dealer, g, masks, 16,
                grad_input=True, grad_weight=True, truncate_weight=True,
            )  # fmt: skip

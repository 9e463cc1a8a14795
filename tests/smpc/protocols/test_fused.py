"""Tests of the fused linear -> ReLU protocols against plaintext torch, and their costs."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import smpc
from smpc import ring
from smpc.protocols import compare, fused
from smpc.protocols.truncation import TruncPair
from smpc.sharing import additive_shares

from ...strategies import party_counts

F = 16


def _shares(sess: smpc.Session, plain: torch.Tensor) -> torch.Tensor:
    return additive_shares(plain, sess.world_size, sess.prg)


def _fixed(t: torch.Tensor, f: int = F) -> torch.Tensor:
    return torch.round(t.to(torch.float64) * (1 << f)).to(torch.int64)


def _within_ulp(got: torch.Tensor, plain: torch.Tensor, f: int = F) -> bool:
    """``got`` is ``floor(plain / 2^f)`` or one more (the truncation's error)."""
    floor = plain >> f
    return bool(((got - floor) >= 0).all() and ((got - floor) <= 1).all())


# ----------------------------------------------------------------- requests
@pytest.mark.parametrize("key", [None, 5])
def test_relu_trunc_material_derives_products_with_the_bit(key: int | None) -> None:
    # Arrange: plain random components
    req = fused.ReluTruncMaterial((3, 4), F, key)
    g = torch.Generator().manual_seed(0)
    values = {
        c.name: torch.randint(-(2**63), 2**63 - 1, c.shape, dtype=torch.int64, generator=g)
        for c in req.components()
        if not c.kind.derived
    }
    # Act
    out = req.derive(values)
    # Assert: the comparison's values unchanged; truncation material as TruncPair's
    assert out["s"].max() <= 1 and out["s"].min() >= 0
    inner = compare.LtzMaterial((3, 4)).derive(values)
    assert all(torch.equal(out[k], v) for k, v in inner.items())
    names = [("rt", "neg_rt_hi", "st", "rts", "sts")]
    if key is not None:
        names.append(("rb", "neg_rb_hi", "sb", "rbs", "sbs"))
    for r, nh, s, rs, ss in names:
        pair = TruncPair((3, 4), F).derive({"r": values[r]})
        assert torch.equal(out[nh], pair["neg_r_hi"]) and torch.equal(out[s], pair["s"])
        assert torch.equal(out[rs], pair["neg_r_hi"] * out["s"])
        assert torch.equal(out[ss], pair["s"] * out["s"])
    assert req.keeps() == (() if key is None else (("rb", key),))
    derived = [c.name for c in req.components() if c.kind.derived]
    assert set(derived) == set(out)


def _reduce(rows: torch.Tensor, xor: bool) -> torch.Tensor:
    return functools.reduce(torch.bitwise_xor, rows) if xor else rows.sum(0)


_REQUESTS = {
    "relu_trunc": (fused.ReluTruncMaterial((5, 7), F, None), {}),
    "relu_trunc_keeping": (fused.ReluTruncMaterial((5, 7), F, 5), {}),
    "keeping_matmul": (fused.KeepingMatmulTriple((5, 7), (7, 3), 9), {}),
    "backward_bit": (
        fused.LinearBackwardBitTriple((5, 3), (5, 7), F, 9, 11, True, True),
        {"xa": (5, 7), "wb": (7, 3), "rb": (5, 7)},
    ),
    "backward_bit_wide": (
        fused.LinearBackwardBitTriple((5, 3), (5, 7), F, 9, 11, True, False),
        {"xa": (5, 7), "wb": (7, 3), "rb": (5, 7)},
    ),
    "backward_bit_input_only": (
        fused.LinearBackwardBitTriple((5, 3), (5, 7), F, 9, 11, False, False),
        {"xa": (5, 7), "wb": (7, 3), "rb": (5, 7)},
    ),
}


@pytest.mark.parametrize("name", list(_REQUESTS))
@pytest.mark.parametrize("n", [2, 3])
def test_fused_corrections_agree_with_derive(name: str, n: int) -> None:
    # Arrange: parties' random rows, kept values (one row each) and the first n - 1 rows
    # of every derived component
    req, kept = _REQUESTS[name]
    g = torch.Generator().manual_seed(n)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=g)

    comps = req.components()
    shared = {c.name: rand(n, *c.shape) for c in comps if c.kind.shared and not c.kind.derived}
    shared |= {k: rand(1, *shape) for k, shape in kept.items()}
    private = {c.name: rand(*c.shape) for c in comps if not c.kind.shared}
    partial = {c.name: rand(n - 1, *c.shape) for c in comps if c.kind.derived}
    out = {c.name: torch.empty(c.shape, dtype=torch.int64) for c in comps if c.kind.derived}
    # Act
    if not req.fused_correction(shared, private, partial, out):
        pytest.skip("no C kernels: the dealer derives instead")
    # Assert: partial rows + correction = derive() of the plain values
    plain = {c.name: _reduce(shared[c.name], c.kind.xor) for c in comps if c.name in shared}
    want = req.derive(plain | private | {k: shared[k][0] for k in kept})
    assert set(want) == set(out)
    for c in comps:
        if c.kind.derived:
            rows = torch.cat([partial[c.name], out[c.name].unsqueeze(0)])
            assert torch.equal(_reduce(rows, c.kind.xor), want[c.name]), c.name


# ----------------------------------------------------------------- relu_trunc
@given(
    n=party_counts,
    seed=st.integers(0, 2**31),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 7)),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_relu_trunc_is_relu_of_the_truncation(
    n: int, seed: int, shape: tuple[int, int], scale: float
) -> None:
    # Arrange: values at scale 2^(2f), as after a fixed-point product
    g = torch.Generator().manual_seed(seed)
    plain = _fixed(torch.randn(shape, generator=g, dtype=torch.float64) * scale, 2 * F)
    plain.view(-1)[0] = 0
    with smpc.Session(parties=n, seed=seed) as sess:
        # Act
        before = sess.stats.snapshot()
        out, bit = fused.relu_trunc(sess.comm, sess.dealer, _shares(sess, plain), F)
        used = sess.stats - before
        bit_plain = fused.bit_shares(sess.comm, bit).sum(0)
        before = sess.stats.snapshot()
        compare.ltz(sess.comm, sess.dealer, _shares(sess, plain))
        ltz = sess.stats - before
    # Assert: relu of a truncation (within one ulp), the bit [u >= 0]
    assert _within_ulp(out.sum(0), plain.clamp(min=0))
    assert torch.equal(bit_plain, (plain >= 0).to(torch.int64))
    # Assert: the comparison's rounds, its bytes plus 8 per element (the truncation's opening)
    assert used.rounds == fused.relu_trunc_rounds(n) == compare.cost(n)[0]
    extra = 8 * (n - 1) * plain.numel()
    assert used.bytes_per_party[0] == ltz.bytes_per_party[0] + extra


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_relu_trunc_cost_matches_docstring(n: int) -> None:
    size = 1000
    with smpc.Session(parties=n, seed=1) as sess:
        x = _shares(sess, torch.arange(-size // 2, size // 2, dtype=torch.int64) << 20)
        before = sess.stats.snapshot()
        fused.relu_trunc(sess.comm, sess.dealer, x, F, key=3)
        used = sess.stats - before
    rounds, nbytes = compare.cost(n)
    assert used.rounds == rounds
    assert used.bytes_per_party == [(nbytes + 8) * (n - 1) * size] * n
    if n == 2:  # the same as compare.relu, 8 fewer than compare.relu + a truncation
        assert nbytes + 8 == compare.cost(2, mul=True)[1]


@given(n=party_counts, seed=st.integers(0, 2**31))
def test_relu_trunc_near_zero_and_large(n: int, seed: int) -> None:
    # Arrange: the sign boundary and values near the truncation's bound 2^62
    edges = [0, 1, -1, (1 << F) - 1, -(1 << F) + 1, 1 << 61, -(1 << 61), (1 << 62) - 1]
    plain = torch.tensor(edges, dtype=torch.int64)
    with smpc.Session(parties=n, seed=seed) as sess:
        # Act
        out, bit = fused.relu_trunc(sess.comm, sess.dealer, _shares(sess, plain), F)
        bit_plain = fused.bit_shares(sess.comm, bit).sum(0)
    # Assert
    assert _within_ulp(out.sum(0), plain.clamp(min=0))
    assert torch.equal(bit_plain, (plain >= 0).to(torch.int64))


# ----------------------------------------------------------------- linear layers
def _linear_case(seed: int, m: int, k: int, n_out: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(m, k, generator=g, dtype=torch.float64),
        "w": torch.randn(n_out, k, generator=g, dtype=torch.float64) / k**0.5,
        "b": torch.randn(n_out, generator=g, dtype=torch.float64),
        "g": torch.randn(m, n_out, generator=g, dtype=torch.float64),
    }


@given(
    n=party_counts,
    seed=st.integers(0, 2**31),
    m=st.integers(1, 6),
    k=st.integers(1, 9),
    n_out=st.integers(1, 7),
    truncate_weight=st.booleans(),
)
def test_linear_relu_forward_and_fused_backward_match_torch(
    n: int, seed: int, m: int, k: int, n_out: int, truncate_weight: bool
) -> None:
    # Arrange: layer 1 = linear + relu (fused), layer 2 = linear whose backward multiplies by
    # layer 1's ReLU bit inside its truncation
    c = _linear_case(seed, m, k, n_out)
    w2 = torch.randn(3, n_out, generator=torch.Generator().manual_seed(seed + 1)) / n_out**0.5
    g2 = torch.randn(m, 3, generator=torch.Generator().manual_seed(seed + 2))
    x = c["x"].clone().requires_grad_(True)
    w = c["w"].clone().requires_grad_(True)
    h = torch.relu(x @ w.T + c["b"])
    w2d = w2.to(torch.float64).requires_grad_(True)
    (h @ w2d.T).backward(g2.to(torch.float64))
    with smpc.Session(parties=n, seed=seed) as sess:
        comm, dealer = sess.comm, sess.dealer
        xs = _shares(sess, _fixed(c["x"]))
        wts = _shares(sess, _fixed(c["w"].T.contiguous()))
        bs = _shares(sess, _fixed(c["b"]))
        # Act: forward of both layers
        before = sess.stats.snapshot()
        out, masks1, bit = fused.linear_relu_forward(comm, dealer, xs, wts, bs, F, 10, 20)
        fwd = sess.stats - before
        w2s = _shares(sess, _fixed(w2.T.contiguous()))
        _, masks2 = fused.linear_forward_raw(comm, dealer, out, w2s, None, F, 30)
        # Act: layer 2's backward with layer 1's ReLU derivative fused
        before = sess.stats.snapshot()
        gx, gw = fused.linear_backward(
            comm,
            dealer,
            _shares(sess, _fixed(g2)),
            masks2,
            F,
            bit,
            grad_weight=True,
            truncate_weight=truncate_weight,
        )
        bwd = sess.stats - before
        assert sess.dealer.kept_masks == 2  # layer 1's masks; layer 2's and rb released
    # Assert: values against torch (fixed-point error)
    scale = float(1 << F)
    torch.testing.assert_close(out.sum(0).double() / scale, h.detach(), atol=2e-4, rtol=0)
    assert gx is not None and gw is not None
    want_gx = (g2.double() @ w2.double()) * (h > 0)
    torch.testing.assert_close(gx.sum(0).double() / scale, want_gx, atol=1e-3, rtol=0)
    gw_scale = scale if truncate_weight else scale * scale
    torch.testing.assert_close(gw.sum(0).double() / gw_scale, w2d.grad, atol=1e-3, rtol=0)
    # Assert: documented costs
    assert fwd.rounds == 1 + fused.relu_trunc_rounds(n)
    assert fwd.by_op.get("trunc") is None  # no truncation round of its own
    assert bwd.rounds == 2
    assert bwd.by_op["matmul"].bytes == 8 * (n - 1) * n * m * 3  # eg only
    trunc_elems = m * n_out + (3 * n_out if truncate_weight else 0)
    assert bwd.by_op["trunc"].bytes == 8 * (n - 1) * n * trunc_elems


def test_linear_backward_without_a_kept_bit_is_refused() -> None:
    with smpc.Session(parties=2, seed=1) as sess:
        comm, dealer = sess.comm, sess.dealer
        xs = _shares(sess, _fixed(torch.ones(2, 3)))
        wts = _shares(sess, _fixed(torch.ones(3, 4)))
        out, masks, bit = fused.linear_relu_forward(comm, dealer, xs, wts, None, F, 10, None)
        with pytest.raises(ValueError, match="`bit`"):
            fused.linear_backward(
                comm, dealer, out, masks, F, bit, grad_weight=False, truncate_weight=False
            )
        assert "ReluBit(shape=(2, 4)" in repr(bit)


def test_keeping_matmul_triple_is_a_matmul_triple() -> None:
    req = fused.KeepingMatmulTriple((2, 3), (3, 4), 7)
    a = torch.randint(-100, 100, (2, 3))
    b = torch.randint(-100, 100, (3, 4))
    assert torch.equal(req.derive({"a": a, "b": b})["c"], ring.matmul(a, b))
    assert req.keeps() == (("a", 7), ("b", 8))

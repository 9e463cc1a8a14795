"""The op API's dispatch (``smpc.functional``): tape or kernel, shape kernels, pow, errors.

The arithmetic and nonlinear kernels have their own modules' tests; here each
public function is checked to record a node exactly when grad mode is on and an
input requires grad, to give the same value either way, and its local shape
kernels are checked exactly (values on the fixed-point grid) against torch, in
value and gradient, for 2-5 parties.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import functional as F
from smpc.errors import ShapeError
from smpc.testing import assert_close, ulp
from tests.strategies import party_counts, seeds, shapes

E = ulp(16)


def _grid(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values on the 2^-16 grid, so encoding and shape ops are exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << 20), 1 << 20, shape, generator=g).double() / (1 << 16)


# (name, shape op on a SharedTensor or torch tensor, input shape it accepts)
_SHAPE_OPS: list[tuple[str, Callable[[Any, Any], Any], tuple[int, ...]]] = [
    ("reshape", lambda m, x: m.reshape(x, (6, -1)) if m is F else x.reshape(6, -1), (2, 3, 4)),
    ("transpose", lambda m, x: m.transpose(x, 0, -1), (2, 3, 4)),
    ("permute", lambda m, x: m.permute(x, (2, 0, 1)), (2, 3, 4)),
    ("expand", lambda m, x: F.expand(x, (2, 3, 4)) if m is F else x.expand(2, 3, 4), (2, 3, 1)),
    (
        "getitem",
        lambda m, x: F.getitem(x, (1, slice(0, 3, 2))) if m is F else x[1, 0:3:2],
        (2, 3, 4),
    ),
    ("cat", lambda m, x: m.cat([x, x * 1], 1) if m is F else torch.cat([x, x * 1], 1), (2, 3)),
    (
        "stack",
        lambda m, x: m.stack([x, x * 1], -1) if m is F else torch.stack([x, x * 1], -1),
        (2, 3),
    ),
]


@pytest.mark.parametrize(("name", "op", "shape"), _SHAPE_OPS, ids=[o[0] for o in _SHAPE_OPS])
@settings(max_examples=6, deadline=None)
@given(n=party_counts, seed=seeds)
def test_shape_ops_are_exact_in_value_and_gradient(
    name: str, op: Callable[[Any, Any], Any], shape: tuple[int, ...], n: int, seed: int
) -> None:
    x = _grid(shape, seed)
    xt = x.clone().requires_grad_()
    ref = op(torch, xt)
    g = _grid(tuple(ref.shape), seed + 1)
    ref.backward(g)
    assert xt.grad is not None
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x, requires_grad=True)
        out = op(F, xs)
        assert out.grad_fn is not None  # recorded: an input requires grad
        assert torch.equal(out.reveal().double(), ref.detach())
        out.backward(sess.share(g))
        assert xs.grad is not None
        assert torch.equal(xs.grad.reveal().double(), xt.grad)  # local: exact


@settings(max_examples=15, deadline=None)
@given(n=party_counts, shape=shapes(min_dims=1, max_dims=3), seed=seeds)
def test_records_only_with_grad_mode_and_a_grad_input(
    n: int, shape: tuple[int, ...], seed: int
) -> None:
    x = _grid(shape, seed)
    with smpc.Session(parties=n) as sess:
        plain = sess.share(x)
        tracked = sess.share(x, requires_grad=True)
        assert F.add(plain, plain).grad_fn is None  # nothing requires grad: the kernel
        assert F.mul(tracked, 2).grad_fn is not None
        with smpc.no_grad():
            untaped = F.mul(tracked, plain)
            assert untaped.grad_fn is None and not untaped.requires_grad
        taped = F.mul(tracked, plain)
        assert taped.grad_fn is not None
        # Same value whether or not the tape records it (both within a product's error).
        assert_close(untaped.reveal(), (x * x).float(), 2 * E + float(x.abs().max()) * E)
        assert_close(taped.reveal(), (x * x).float(), 2 * E + float(x.abs().max()) * E)


@settings(max_examples=15, deadline=None)
@given(n=party_counts, exponent=st.integers(0, 5), seed=seeds)
def test_pow_by_square_and_multiply(n: int, exponent: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(7, generator=g, dtype=torch.float64) + 0.5  # [0.5, 1.5): no overflow
    with smpc.Session(parties=n) as sess:
        got = F.pow(sess.share(x), exponent).reveal()
    assert_close(got, x.pow(exponent).float(), 40 * E)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_pow_rejects_a_bad_exponent(bad: Any) -> None:
    with (
        smpc.Session(parties=2) as sess,
        pytest.raises(ValueError, match="`exponent` must be a non-negative int"),
    ):
        F.pow(sess.share(torch.ones(2)), bad)


def test_shape_kernels_raise_typed_errors() -> None:
    with smpc.Session(parties=3) as sess:
        x = sess.share(torch.zeros(2, 3))
        with pytest.raises(ShapeError, match=r"reshape: cannot view \(2, 3\) as \(4, 2\)"):
            F.reshape(x, (4, 2))
        with pytest.raises(ShapeError, match="permute: `dims` must be a permutation of 2 dims"):
            F.permute(x, (0, 0))
        with pytest.raises(ShapeError, match=r"expand: cannot expand \(2, 3\) to \(4, 3\)"):
            F.expand(x, (4, 3))
        with pytest.raises(IndexError, match=r"invalid for shape \(2, 3\)"):
            F.getitem(x, (5,))
        with pytest.raises(TypeError, match="would leak it"):
            F.getitem(x, sess.share(torch.zeros(1)))
        with pytest.raises(ValueError, match="conv1d: `stride` must be an int or a 1-tuple"):
            F.conv1d(sess.share(torch.zeros(1, 1, 4)), torch.zeros(1, 1, 2), stride=(1, 1))
        with pytest.raises(ShapeError, match="conv1d: expected input"):
            F.conv1d(x, torch.zeros(1, 2))
        with pytest.raises(ShapeError, match="must divide the input size"):
            F.adaptive_avg_pool2d(sess.share(torch.zeros(1, 5, 5)), 2)


@pytest.mark.parametrize("n", [2, 3])
def test_expand_adds_leading_dims_like_torch(n: int) -> None:
    # Prepare: torch adds new dims in front; the party axis must stay where it is
    x = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    w = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 8
    with smpc.Session(parties=n) as sess:
        xs = sess.share(x.detach(), requires_grad=True)
        # Execute: values, and the gradient through the new dims
        ys = F.expand(xs, (2, 3, 4))
        got = ys.reveal()
        (ys * w).sum().backward()
        assert xs.grad is not None
        grad = xs.grad.reveal()
    (x.expand(2, 3, 4) * w).sum().backward()
    # Assert
    assert torch.equal(got, x.detach().expand(2, 3, 4))
    assert x.grad is not None
    torch.testing.assert_close(grad, x.grad, atol=2**-14, rtol=0)

"""smpc.ops.shape: local shape kernels on every party's share, against torch (exact)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import smpc
from smpc import ops
from smpc.errors import ShapeError

from ...strategies import party_counts, seeds, shapes, tensors


def _plain(x: smpc.SharedTensor) -> torch.Tensor:
    return x.reveal().float()


@settings(max_examples=30, deadline=None)
@given(n=party_counts, shape=shapes(min_dims=1, max_dims=4, max_side=4), seed=seeds)
def test_shape_kernels_equal_torch_and_cost_nothing(
    n: int, shape: tuple[int, ...], seed: int
) -> None:
    x = tensors(shape, 100.0, seed)
    g = torch.Generator().manual_seed(seed)
    nd = len(shape)
    perm = torch.randperm(nd, generator=g).tolist()
    d0, d1 = int(torch.randint(nd, (1,), generator=g)), int(torch.randint(nd, (1,), generator=g))
    big = (2, *shape)
    with smpc.Session(parties=n, seed=seed) as sess:
        sx = sess.share(x)
        x = _plain(sx)  # the encoded values: the kernels must move them exactly
        before = sess.stats.snapshot()
        outs = {
            "reshape": (ops.reshape(sx, (-1,)), x.reshape(-1)),
            "transpose": (ops.transpose(sx, d0, d1 - nd), x.transpose(d0, d1 - nd)),
            "permute": (ops.permute(sx, perm), x.permute(*perm)),
            "expand": (ops.expand(sx, big), x.expand(*big)),
            "getitem": (ops.getitem(sx, (..., slice(None, None, 2))), x[..., ::2]),
            "cat": (ops.cat([sx, sx], dim=-1), torch.cat([x, x], dim=-1)),
            "stack": (ops.stack([sx, sx], dim=d0), torch.stack([x, x], dim=d0)),
        }
        assert (sess.stats - before).rounds == 0
        assert (sess.stats - before).bytes == 0
        for name, (got, want) in outs.items():
            assert torch.equal(_plain(got), want), name


@settings(max_examples=30, deadline=None)
@given(n=party_counts, shape=shapes(min_dims=1, max_dims=3, max_side=5), seed=seeds)
def test_index_into_zeros_is_the_adjoint_of_getitem(
    n: int, shape: tuple[int, ...], seed: int
) -> None:
    """``index_into_zeros(g, shape, idx)`` equals torch's gradient of ``x[idx]`` (repeats add)."""
    idx = (torch.tensor([0, 0, shape[0] - 1]),)  # a repeated index
    x = tensors(shape, 10.0, seed).requires_grad_()
    g = tensors(tuple(x[idx].shape), 10.0, seed + 1)
    x[idx].backward(g)
    with smpc.Session(parties=n, seed=seed) as sess:
        got = ops.index_into_zeros(sess.share(g), shape, idx)
        torch.testing.assert_close(_plain(got), x.grad, atol=2**-15, rtol=0)


def test_bad_shapes_raise_typed_errors() -> None:
    with smpc.Session(parties=2, seed=0) as sess:
        x = sess.share(torch.zeros(2, 3))
        with pytest.raises(ShapeError, match="reshape"):
            ops.reshape(x, (4,))
        with pytest.raises(ShapeError, match="permute"):
            ops.permute(x, (0, 0))
        with pytest.raises(ShapeError, match="expand"):
            ops.expand(x, (3, 3))
        with pytest.raises(IndexError):
            ops.getitem(x, (5,))
        with pytest.raises(TypeError, match="leak"):
            ops.getitem(x, x)
        with pytest.raises(ValueError, match="tensors"):
            ops.cat([], 0)
        with pytest.raises(IndexError, match="dim"):
            ops.stack([x], 3)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_stack_tag_the_plaintext_dtype(dim: int) -> None:
    with smpc.Session(parties=3, seed=0) as sess:
        a = sess.share(torch.arange(6).reshape(2, 3))
        assert ops.cat([a, a], dim).reveal().dtype == torch.int64
        assert ops.stack([a, a], dim).reveal().dtype == torch.int64

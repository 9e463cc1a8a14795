"""Hypothesis strategies: shapes, broadcastable pairs, matmul shapes, in-range floats."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

party_counts = st.integers(min_value=2, max_value=5)


@st.composite
def shapes(
    draw: st.DrawFn, min_dims: int = 0, max_dims: int = 3, max_side: int = 5
) -> tuple[int, ...]:
    """A tensor shape."""
    nd = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(1, max_side)) for _ in range(nd))


@st.composite
def broadcastable_pair(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast together (some dims set to 1, some dropped)."""
    base = draw(shapes(min_dims=1, max_dims=3))
    other = list(base)
    for i in range(len(other)):
        if draw(st.booleans()):
            other[i] = 1
    drop = draw(st.integers(0, len(other)))
    other = other[drop:]
    if draw(st.booleans()):
        return base, tuple(other)
    return tuple(other), base


@st.composite
def matmul_shapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes (x, y) valid for torch.matmul, including 1-D and broadcast batches."""
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["mm", "vec_left", "vec_right", "batch", "batch_bcast"]))
    if kind == "mm":
        return (m, k), (k, n)
    if kind == "vec_left":
        return (k,), (k, n)
    if kind == "vec_right":
        return (m, k), (k,)
    b = draw(st.integers(1, 3))
    if kind == "batch":
        return (b, m, k), (b, k, n)
    return (b, 1, m, k), (2, k, n)


def tensors(shape: tuple[int, ...], bound: float, seed: int) -> torch.Tensor:
    """Uniform floats in [-bound, bound] (drawn in the main thread from a seed)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).mul(bound).float()


seeds = st.integers(0, 2**31 - 1)
bounds = st.sampled_from([1e-3, 1.0, 10.0, 100.0, 1000.0])

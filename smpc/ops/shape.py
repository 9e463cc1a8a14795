"""Shape kernels on SharedTensor: reshape, transpose, permute, expand, indexing, cat, stack.

Each works on every party's share at once (the data dims follow the party axis
of the simulation) and costs nothing: no communication, no dealer material.
:func:`index_into_zeros` is the adjoint of :func:`getitem` (the gradient of an
indexing).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ShapeError
from ..sharing import lead
from ..tensor import SharedTensor, tag_results
from .arith import _session, _wrap

__all__ = [
    "reshape",
    "transpose",
    "permute",
    "expand",
    "getitem",
    "index_into_zeros",
    "cat",
    "stack",
]


def reshape(x: SharedTensor, shape: Sequence[int]) -> SharedTensor:
    """Reshape to ``shape`` (data dims; ``-1`` allowed). Cost: local."""
    s = x.share
    ld = lead(x.session.comm)
    try:
        return SharedTensor(s.reshape(*s.shape[:ld], *shape), x.session)
    except RuntimeError as err:
        raise ShapeError(f"reshape: cannot view {tuple(x.shape)} as {tuple(shape)}") from err


def transpose(x: SharedTensor, dim0: int, dim1: int) -> SharedTensor:
    """Swap dims ``dim0`` and ``dim1``. Cost: local."""
    return SharedTensor(x.share.transpose(x._dim(dim0), x._dim(dim1)), x.session)


def permute(x: SharedTensor, dims: Sequence[int]) -> SharedTensor:
    """Permute the data dims to ``dims``. Cost: local."""
    if sorted(d % builtins.max(x.dim(), 1) for d in dims) != list(range(x.dim())):
        raise ShapeError(f"permute: `dims` must be a permutation of {x.dim()} dims; got {dims}")
    ld = lead(x.session.comm)
    return SharedTensor(x.share.permute(*range(ld), *(x._dim(d) for d in dims)), x.session)


def expand(x: SharedTensor, sizes: Sequence[int]) -> SharedTensor:
    """Broadcast to ``sizes`` (a materialised copy; new dims in front, like torch). Cost: local."""
    s = x.share
    ld = lead(x.session.comm)
    extra = len(sizes) - x.dim()
    if extra > 0:  # new leading dims go after the party axis, as torch adds them in front
        s = s.reshape(*s.shape[:ld], *([1] * extra), *s.shape[ld:])
    try:
        return SharedTensor(s.expand(*s.shape[:ld], *sizes).contiguous(), x.session)
    except RuntimeError as err:
        raise ShapeError(f"expand: cannot expand {tuple(x.shape)} to {tuple(sizes)}") from err


def getitem(x: SharedTensor, index: Any) -> SharedTensor:
    """Index or slice with public indices (a SharedTensor index raises). Cost: local."""
    if isinstance(index, SharedTensor) or (
        isinstance(index, tuple) and any(isinstance(i, SharedTensor) for i in index)
    ):
        raise TypeError("indexing with a SharedTensor would leak it; use smpc.where or reveal()")
    ld = lead(x.session.comm)
    idx = index if isinstance(index, tuple) else (index,)
    full = (slice(None),) * ld + idx
    try:
        return SharedTensor(x.share[full], x.session)
    except (IndexError, RuntimeError) as err:
        raise IndexError(f"index {index!r} is invalid for shape {tuple(x.shape)}: {err}") from err


def index_into_zeros(g: SharedTensor, shape: Sequence[int], index: Any) -> SharedTensor:
    """Zeros of ``shape`` with ``g`` added at ``index`` (repeated indices add up). Cost: local.

    The adjoint of :func:`getitem`: what torch's gradient of ``x[index]`` is.
    """
    ld = lead(g.session.comm)
    s = g.share
    pos = flat_positions(shape, index)
    out = torch.zeros((*s.shape[:ld], math.prod(shape)), dtype=s.dtype)
    out.index_add_(ld, pos.reshape(-1), s.reshape(*s.shape[:ld], -1))
    return SharedTensor(out.reshape(*s.shape[:ld], *shape), g.session)


def flat_positions(shape: Sequence[int], index: Any) -> torch.Tensor:
    """The row-major positions in ``shape`` that ``x[index]`` reads, in its order (public)."""
    return torch.arange(math.prod(shape), dtype=torch.int64).reshape(tuple(shape))[index]


def cat(tensors: Sequence[SharedTensor], dim: int = 0) -> SharedTensor:
    """Concatenate shared tensors along ``dim`` (like ``torch.cat``). Cost: local."""
    if not tensors:
        raise ValueError("`tensors` must not be empty")
    sess = _session(*tensors)
    for t in tensors:
        if not isinstance(t, SharedTensor):
            raise TypeError(f"`tensors` must all be SharedTensor; got {type(t).__name__}")
    d = tensors[0]._dim(dim)
    try:
        return _wrap(sess, torch.cat([t.share for t in tensors], dim=d))
    except RuntimeError as err:
        raise ShapeError(f"cat: {err}") from err


def stack(tensors: Sequence[SharedTensor], dim: int = 0) -> SharedTensor:
    """Stack shared tensors along a new ``dim`` (like ``torch.stack``). Cost: local."""
    if not tensors:
        raise ValueError("`tensors` must not be empty")
    sess = _session(*tensors)
    nd = tensors[0].dim() + 1
    if not -nd <= dim < nd:
        raise IndexError(f"`dim` must be in [{-nd}, {nd}); got {dim}")
    d = dim % nd + lead(sess.comm)
    try:
        return _wrap(sess, torch.stack([t.share for t in tensors], dim=d))
    except RuntimeError as err:
        raise ShapeError(f"stack: {err}") from err


# cat and stack tag their result with the plaintext dtype reveal() returns (as
# they did in smpc.ops.arith); the other shape kernels leave that to smpc.functional.
tag_results(globals(), ["cat", "stack"])

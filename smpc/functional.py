"""Public op API on shared tensors, mirroring ``torch`` / ``torch.nn.functional`` names.

These are the functions the SharedTensor operators call. Shape ops are local;
arithmetic dispatches to :mod:`smpc.ops` (products, truncation) and
:mod:`smpc.nonlinear` (comparison, approximations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import nonlinear as _nl
from . import ops as _ops
from .errors import ShapeError
from .sharing import lead
from .tensor import SharedTensor

__all__ = [
    "add", "sub", "neg", "mul", "matmul", "square", "pow", "div", "sum", "mean",
    "reshape", "transpose", "permute", "expand", "getitem", "cat", "stack",
    "linear", "conv2d", "avg_pool2d", "max_pool2d", "mse_loss", "cross_entropy",
    "lt", "le", "gt", "ge", "eq", "ne", "relu", "sign", "abs", "where",
    "max", "min", "argmax", "argmin", "reciprocal", "exp", "log", "sqrt", "rsqrt",
    "sigmoid", "tanh", "softmax", "log_softmax", "backward",
]

add = _ops.add
sub = _ops.sub
neg = _ops.neg
mul = _ops.mul
matmul = _ops.matmul
square = _ops.square
sum = _ops.sum
mean = _ops.mean
cat = _ops.cat
stack = _ops.stack
conv2d = _ops.conv2d


def pow(x: SharedTensor, exponent: int) -> SharedTensor:
    """``x ** exponent`` for a non-negative int, by square-and-multiply."""
    if isinstance(exponent, bool) or not isinstance(exponent, int) or exponent < 0:
        raise ValueError(f"`exponent` must be a non-negative int; got {exponent!r}")
    if exponent == 0:
        return _ops.add(_ops.mul(x, 0), 1.0)
    result: SharedTensor | None = None
    base = x
    e = exponent
    while e:
        if e & 1:
            result = base if result is None else _ops.mul(result, base)
        e >>= 1
        if e:
            base = _ops.square(base)
    assert result is not None
    return result


def reshape(x: SharedTensor, shape: Sequence[int]) -> SharedTensor:
    """Reshape (local)."""
    s = x.share
    ld = lead(x.session.comm)
    try:
        return SharedTensor(s.reshape(*s.shape[:ld], *shape), x.session)
    except RuntimeError as err:
        raise ShapeError(f"reshape: cannot view {tuple(x.shape)} as {tuple(shape)}") from err


def transpose(x: SharedTensor, dim0: int, dim1: int) -> SharedTensor:
    """Swap two dims (local)."""
    return SharedTensor(x.share.transpose(x._dim(dim0), x._dim(dim1)), x.session)


def permute(x: SharedTensor, dims: Sequence[int]) -> SharedTensor:
    """Permute dims (local)."""
    if sorted(d % max(x.dim(), 1) for d in dims) != list(range(x.dim())):
        raise ShapeError(f"permute: `dims` must be a permutation of {x.dim()} dims; got {dims}")
    ld = lead(x.session.comm)
    return SharedTensor(
        x.share.permute(*range(ld), *(x._dim(d) for d in dims)), x.session
    )


def expand(x: SharedTensor, sizes: Sequence[int]) -> SharedTensor:
    """Broadcast to ``sizes`` (materialised copy, local)."""
    s = x.share
    ld = lead(x.session.comm)
    try:
        return SharedTensor(s.expand(*s.shape[:ld], *sizes).contiguous(), x.session)
    except RuntimeError as err:
        raise ShapeError(f"expand: cannot expand {tuple(x.shape)} to {tuple(sizes)}") from err


def getitem(x: SharedTensor, index: Any) -> SharedTensor:
    """Index or slice with public indices (local)."""
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


def linear(
    input: SharedTensor | torch.Tensor,
    weight: SharedTensor | torch.Tensor,
    bias: SharedTensor | torch.Tensor | None = None,
) -> SharedTensor:
    """``input @ weight.T + bias`` like ``torch.nn.functional.linear``."""
    wt = weight.t() if isinstance(weight, SharedTensor) else weight.t()
    out = _ops.matmul(input, wt)
    return out if bias is None else _ops.add(out, bias)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def avg_pool2d(
    input: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> SharedTensor:
    """Average pooling (``count_include_pad=True``): a public depthwise convolution, 1 round."""
    kh, kw = _pair(kernel_size)
    st = _pair(stride) if stride is not None else (kh, kw)
    if input.dim() not in (3, 4):
        raise ShapeError(f"avg_pool2d: expected (N,C,H,W) or (C,H,W); got {tuple(input.shape)}")
    c = input.shape[-3]
    weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw))
    return _ops.conv2d(input, weight, stride=st, padding=padding, groups=c)


def mse_loss(input: SharedTensor, target: SharedTensor | torch.Tensor, reduction: str = "mean") -> SharedTensor:
    """Mean squared error like ``torch.nn.functional.mse_loss``."""
    d = _ops.sub(input, target)
    sq = _ops.square(d)
    if reduction == "mean":
        return _ops.mean(sq)
    if reduction == "sum":
        return _ops.sum(sq)
    if reduction == "none":
        return sq
    raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none'; got {reduction!r}")


def cross_entropy(input: SharedTensor, target: Any, reduction: str = "mean") -> SharedTensor:
    """Softmax cross-entropy (target: class indices or one-hot/probabilities)."""
    logp = log_softmax(input, 1 if input.dim() > 1 else 0)
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        onehot = torch.nn.functional.one_hot(target, input.shape[-1]).to(torch.float32)
        if input.dim() > 2:
            onehot = onehot.movedim(-1, 1)
        target = onehot
    nll = _ops.neg(_ops.mul(logp, target))
    per = _ops.sum(nll, 1 if input.dim() > 1 else 0)
    if reduction == "mean":
        return _ops.mean(per)
    if reduction == "sum":
        return _ops.sum(per)
    if reduction == "none":
        return per
    raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none'; got {reduction!r}")


def lt(x: Any, y: Any) -> SharedTensor:
    """``x < y`` as shared 0/1."""
    return _nl.lt(x, y)


def le(x: Any, y: Any) -> SharedTensor:
    """``x <= y`` as shared 0/1."""
    return _nl.le(x, y)


def gt(x: Any, y: Any) -> SharedTensor:
    """``x > y`` as shared 0/1."""
    return _nl.gt(x, y)


def ge(x: Any, y: Any) -> SharedTensor:
    """``x >= y`` as shared 0/1."""
    return _nl.ge(x, y)


def eq(x: Any, y: Any) -> SharedTensor:
    """``x == y`` as shared 0/1."""
    return _nl.eq(x, y)


def ne(x: Any, y: Any) -> SharedTensor:
    """``x != y`` as shared 0/1."""
    return _nl.ne(x, y)


def relu(x: SharedTensor) -> SharedTensor:
    """``max(x, 0)``."""
    return _nl.relu(x)


def sign(x: SharedTensor) -> SharedTensor:
    """Sign of x (-1, 0, 1)."""
    return _nl.sign(x)


def abs(x: SharedTensor) -> SharedTensor:
    """|x|."""
    return _nl.abs(x)


def where(cond: SharedTensor, a: Any, b: Any) -> SharedTensor:
    """``a`` where ``cond`` (shared 0/1) else ``b``."""
    return _nl.where(cond, a, b)


def max(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Max over ``dim`` (all elements when None)."""
    return _nl.max(x, dim, keepdim)


def min(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Min over ``dim`` (all elements when None)."""
    return _nl.min(x, dim, keepdim)


def argmax(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    """One-hot argmax."""
    return _nl.argmax(x, dim, keepdim)


def argmin(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    """One-hot argmin."""
    return _nl.argmin(x, dim, keepdim)


def max_pool2d(
    input: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> SharedTensor:
    """Max pooling like ``torch.nn.functional.max_pool2d``."""
    return _nl.max_pool2d(input, kernel_size, stride, padding)


def reciprocal(x: SharedTensor) -> SharedTensor:
    """1/x."""
    return _nl.reciprocal(x)


def div(x: SharedTensor, y: Any) -> SharedTensor:
    """x / y."""
    return _nl.div(x, y)


def exp(x: SharedTensor) -> SharedTensor:
    """e**x."""
    return _nl.exp(x)


def log(x: SharedTensor) -> SharedTensor:
    """ln x."""
    return _nl.log(x)


def sqrt(x: SharedTensor) -> SharedTensor:
    """sqrt x."""
    return _nl.sqrt(x)


def rsqrt(x: SharedTensor) -> SharedTensor:
    """1/sqrt x."""
    return _nl.rsqrt(x)


def sigmoid(x: SharedTensor) -> SharedTensor:
    """Logistic sigmoid."""
    return _nl.sigmoid(x)


def tanh(x: SharedTensor) -> SharedTensor:
    """tanh."""
    return _nl.tanh(x)


def softmax(x: SharedTensor, dim: int) -> SharedTensor:
    """Softmax over ``dim``."""
    return _nl.softmax(x, dim)


def log_softmax(x: SharedTensor, dim: int) -> SharedTensor:
    """Log-softmax over ``dim``."""
    return _nl.log_softmax(x, dim)


def backward(x: SharedTensor, grad: SharedTensor | torch.Tensor | None = None) -> None:
    """Back-propagate (autograd issue)."""
    raise NotImplementedError("autograd is not implemented yet")

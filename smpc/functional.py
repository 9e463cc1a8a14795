"""Public op API on shared tensors, mirroring ``torch`` / ``torch.nn.functional`` names.

These are the functions the SharedTensor operators call. Every op dispatches
to a kernel of :mod:`smpc.ops` (shape, products and truncation, comparison,
approximations).

Every differentiable op records a node on the autograd tape
(:mod:`smpc.autograd`) only when grad mode is on *and* an input requires grad;
otherwise it calls the kernel directly (one ContextVar read and an attribute
check: no tape, no overhead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from . import ops as _ops
from . import ring as _ring
from .autograd import functions as _fn
from .autograd.tape import _GRAD_ENABLED
from .autograd.tape import backward as _backward
from .autograd.tape import no_grad as _fn_no_grad
from .errors import ShapeError
from .tensor import SharedTensor, tag_results

__all__ = [
    "add",
    "sub",
    "neg",
    "mul",
    "matmul",
    "square",
    "pow",
    "div",
    "sum",
    "mean",
    "reshape",
    "transpose",
    "permute",
    "expand",
    "getitem",
    "cat",
    "stack",
    "linear",
    "conv1d",
    "conv2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "max_pool2d",
    "mse_loss",
    "cross_entropy",
    "lt",
    "le",
    "gt",
    "ge",
    "eq",
    "ne",
    "relu",
    "leaky_relu",
    "sign",
    "abs",
    "where",
    "max",
    "min",
    "argmax",
    "argmin",
    "reciprocal",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "rsqrt_wide",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "backward",
]


def _rec(*xs: Any) -> bool:
    """Whether this call must be recorded on the tape."""
    if not _GRAD_ENABLED.get():
        return False
    return any(isinstance(x, SharedTensor) and x.requires_grad for x in xs)


def add(x: Any, y: Any) -> SharedTensor:
    """``x + y`` (at least one shared). Cost: local."""
    if _rec(x, y):
        return _fn.Add.apply(x, y)
    return _ops.add(x, y)


def sub(x: Any, y: Any) -> SharedTensor:
    """``x - y`` (at least one shared). Cost: local."""
    if _rec(x, y):
        return _fn.Sub.apply(x, y)
    return _ops.sub(x, y)


def neg(x: SharedTensor) -> SharedTensor:
    """``-x``. Cost: local."""
    if _rec(x):
        return _fn.Neg.apply(x)
    return _ops.neg(x)


def mul(x: Any, y: Any) -> SharedTensor:
    """Elementwise ``x * y`` (see :func:`smpc.ops.mul` for the cost)."""
    if _rec(x, y):
        return _fn.Mul.apply(x, y)
    return _ops.mul(x, y)


def matmul(x: Any, y: Any) -> SharedTensor:
    """``x @ y`` with torch's semantics (see :func:`smpc.ops.matmul`)."""
    if _rec(x, y):
        return _fn.MatMul.apply(x, y)
    return _ops.matmul(x, y)


def square(x: SharedTensor) -> SharedTensor:
    """``x * x`` with a square pair (1 round) and a truncation."""
    if _rec(x):
        return _fn.Square.apply(x)
    return _ops.square(x)


def sum(
    x: SharedTensor, dim: int | Sequence[int] | None = None, keepdim: bool = False
) -> SharedTensor:
    """Sum over ``dim`` (all when ``None``). Cost: local."""
    if _rec(x):
        return _fn.Sum.apply(x, dim, keepdim)
    return _ops.sum(x, dim, keepdim)


def mean(
    x: SharedTensor, dim: int | Sequence[int] | None = None, keepdim: bool = False
) -> SharedTensor:
    """Mean over ``dim`` (a local sum and one public product)."""
    if _rec(x):
        return _fn.Mean.apply(x, dim, keepdim)
    return _ops.mean(x, dim, keepdim)


def cat(tensors: Sequence[SharedTensor], dim: int = 0) -> SharedTensor:
    """Concatenate along ``dim`` like ``torch.cat``. Cost: local."""
    if tensors and _rec(*tensors):
        return _fn.Cat.apply(dim, *tensors)
    return _ops.cat(tensors, dim)


def stack(tensors: Sequence[SharedTensor], dim: int = 0) -> SharedTensor:
    """Stack along a new ``dim`` like ``torch.stack``. Cost: local."""
    if tensors and _rec(*tensors):
        return _fn.Stack.apply(dim, *tensors)
    return _ops.stack(tensors, dim)


def conv2d(
    input: SharedTensor | torch.Tensor,
    weight: SharedTensor | torch.Tensor,
    bias: SharedTensor | torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> SharedTensor:
    """2-D convolution like ``torch.nn.functional.conv2d`` (see :func:`smpc.ops.conv2d`)."""
    if _rec(input, weight, bias):
        return _fn.Conv2d.apply(
            input,
            weight,
            bias,
            _ops.pair_arg(stride, "stride", 1),
            _ops.pair_arg(padding, "padding"),
            _ops.pair_arg(dilation, "dilation", 1),
            _ops.check_groups(groups),
        )
    return _ops.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _single(v: int | Sequence[int], name: str) -> int:
    """An int, or a one-element sequence of one (torch's 1-d argument forms)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, Sequence) and len(v) == 1 and isinstance(v[0], int):
        return int(v[0])
    raise ValueError(f"conv1d: `{name}` must be an int or a 1-tuple; got {v!r}")


def conv1d(
    input: SharedTensor | torch.Tensor,
    weight: SharedTensor | torch.Tensor,
    bias: SharedTensor | torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> SharedTensor:
    """1-D convolution like ``torch.nn.functional.conv1d``: :func:`conv2d` of height 1.

    ``input`` (N, C, L) or (C, L), ``weight`` (O, C/groups, k). The reshapes
    are local; the cost is that of the equivalent :func:`conv2d` (its Beaver
    convolution triple and truncation; gradients likewise).
    """
    if input.dim() not in (2, 3) or weight.dim() != 3:
        raise ShapeError(
            f"conv1d: expected input (N, C, L) or (C, L) and weight (O, C/groups, k); "
            f"got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    st, pd, dl = (
        _single(stride, "stride"),
        _single(padding, "padding"),
        _single(dilation, "dilation"),
    )
    out = conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, st), (0, pd), (1, dl), groups)
    return out.squeeze(-2)


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
            result = base if result is None else mul(result, base)
        e >>= 1
        if e:
            base = square(base)
    assert result is not None
    return result


def reshape(x: SharedTensor, shape: Sequence[int]) -> SharedTensor:
    """Reshape (local)."""
    if _rec(x):
        return _fn.Reshape.apply(x, tuple(shape))
    return _ops.reshape(x, shape)


def transpose(x: SharedTensor, dim0: int, dim1: int) -> SharedTensor:
    """Swap two dims (local)."""
    if _rec(x):
        return _fn.Transpose.apply(x, dim0, dim1)
    return _ops.transpose(x, dim0, dim1)


def permute(x: SharedTensor, dims: Sequence[int]) -> SharedTensor:
    """Permute dims (local)."""
    if _rec(x):
        return _fn.Permute.apply(x, tuple(dims))
    return _ops.permute(x, dims)


def expand(x: SharedTensor, sizes: Sequence[int]) -> SharedTensor:
    """Broadcast to ``sizes`` (materialised copy, local)."""
    if _rec(x):
        return _fn.Expand.apply(x, tuple(sizes))
    return _ops.expand(x, sizes)


def getitem(x: SharedTensor, index: Any) -> SharedTensor:
    """Index or slice with public indices (local)."""
    if _rec(x):
        return _fn.GetItem.apply(x, index)
    return _ops.getitem(x, index)


def linear(
    input: SharedTensor | torch.Tensor,
    weight: SharedTensor | torch.Tensor,
    bias: SharedTensor | torch.Tensor | None = None,
) -> SharedTensor:
    """``input @ weight.T + bias`` like ``torch.nn.functional.linear``."""
    if input.dim() == 0 or weight.dim() != 2:
        raise ShapeError(
            f"linear: expected input (..., in_features) and weight (out_features, in_features); "
            f"got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    if input.shape[-1] != weight.shape[1]:
        raise ShapeError(
            f"linear: input has {input.shape[-1]} features but weight expects {weight.shape[1]} "
            f"(input {tuple(input.shape)}, weight {tuple(weight.shape)})"
        )
    if _rec(input, weight, bias):
        return _fn.Linear.apply(input, weight, bias)
    out = _ops.matmul(input, weight.t())
    return out if bias is None else _ops.add(out, bias)


def _pair(v: int | Sequence[int], name: str, minimum: int = 0) -> tuple[int, int]:
    return _ops.pair_arg(v, name, minimum)


def avg_pool2d(
    input: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> SharedTensor:
    """Average pooling (``count_include_pad=True``): a public depthwise convolution, 1 round."""
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    st = _pair(stride, "stride", 1) if stride is not None else (kh, kw)
    if input.dim() not in (3, 4):
        raise ShapeError(f"avg_pool2d: expected (N,C,H,W) or (C,H,W); got {tuple(input.shape)}")
    if _rec(input):
        return _fn.AvgPool2d.apply(input, (kh, kw), st, _pair(padding, "padding"))
    c = input.shape[-3]
    weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw))
    return _ops.conv2d(input, weight, stride=st, padding=padding, groups=c)


def _adaptive_size(size: Any, h: int, w: int) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) or size is None else tuple(size)
    if len(pair) != 2:
        raise ValueError(
            f"adaptive_avg_pool2d: `output_size` must be an int or a pair; got {size!r}"
        )
    out = (h if pair[0] is None else pair[0], w if pair[1] is None else pair[1])
    for o in out:
        if isinstance(o, bool) or not isinstance(o, int) or o < 1:
            raise ValueError(
                f"adaptive_avg_pool2d: `output_size` must hold positive ints or None; got {size!r}"
            )
    return int(out[0]), int(out[1])


def adaptive_avg_pool2d(
    input: SharedTensor, output_size: int | Sequence[int | None]
) -> SharedTensor:
    """Adaptive average pooling like ``torch.nn.functional.adaptive_avg_pool2d``.

    Supported when each output size divides the input size (then the windows
    are disjoint and equal: :func:`avg_pool2d` with kernel = stride = input //
    output; one truncation); ``None`` keeps that input size.

    Raises:
        ShapeError: an output size does not divide the input size (the
            windows would overlap unevenly).
    """
    if input.dim() not in (3, 4):
        raise ShapeError(
            f"adaptive_avg_pool2d: expected (N,C,H,W) or (C,H,W); got {tuple(input.shape)}"
        )
    h, w = int(input.shape[-2]), int(input.shape[-1])
    oh, ow = _adaptive_size(output_size, h, w)
    if h % oh or w % ow:
        raise ShapeError(
            f"adaptive_avg_pool2d: output size {(oh, ow)} must divide the input size {(h, w)} "
            "(only equal, disjoint windows are supported)"
        )
    if (oh, ow) == (h, w):
        return input
    k = (h // oh, w // ow)
    return avg_pool2d(input, k, k)


def mse_loss(
    input: SharedTensor, target: SharedTensor | torch.Tensor, reduction: str = "mean"
) -> SharedTensor:
    """Mean squared error like ``torch.nn.functional.mse_loss``.

    With ``reduction`` 'mean' or 'sum' the squared error is computed lazily:
    ``backward()`` needs only ``input - target``.
    """
    _fn.check_reduction(reduction)
    try:
        _ring.broadcast_shapes(tuple(input.shape), tuple(target.shape))
    except RuntimeError as err:
        raise ShapeError(
            f"mse_loss: input {tuple(input.shape)} and target {tuple(target.shape)} "
            "do not broadcast"
        ) from err
    if _rec(input, target):
        return _fn.MSELoss.apply(input, target, reduction)
    d = _ops.sub(input, target)
    if reduction == "none":
        return _ops.square(d)
    return _fn.LazyValue(
        lambda: (_ops.mean if reduction == "mean" else _ops.sum)(_ops.square(d)).share,
        d.session,
        (),
    )


def cross_entropy(input: SharedTensor, target: Any, reduction: str = "mean") -> SharedTensor:
    """Softmax cross-entropy (target: class indices, or one-hot/probabilities, public or shared).

    Forward computes the softmax; the loss value (which needs a logarithm) is
    computed only if it is revealed or used, since ``backward()`` needs only
    ``softmax - target``.
    """
    _fn.check_reduction(reduction)
    if not isinstance(input, SharedTensor):
        raise TypeError(
            f"cross_entropy: `input` must be a SharedTensor; got {type(input).__name__}"
        )
    if input.dim() == 0:
        raise ShapeError("cross_entropy: `input` must have a class dim; got a 0-d tensor")
    target = _fn.onehot_target(input, target)
    if _rec(input, target):
        return _fn.CrossEntropy.apply(input, target, reduction)
    with _fn_no_grad():
        return _fn.CrossEntropy.apply(input, target, reduction)


def lt(x: Any, y: Any) -> SharedTensor:
    """``x < y`` as shared 0/1."""
    return _ops.lt(x, y)


def le(x: Any, y: Any) -> SharedTensor:
    """``x <= y`` as shared 0/1."""
    return _ops.le(x, y)


def gt(x: Any, y: Any) -> SharedTensor:
    """``x > y`` as shared 0/1."""
    return _ops.gt(x, y)


def ge(x: Any, y: Any) -> SharedTensor:
    """``x >= y`` as shared 0/1."""
    return _ops.ge(x, y)


def eq(x: Any, y: Any) -> SharedTensor:
    """``x == y`` as shared 0/1."""
    return _ops.eq(x, y)


def ne(x: Any, y: Any) -> SharedTensor:
    """``x != y`` as shared 0/1."""
    return _ops.ne(x, y)


def relu(x: SharedTensor) -> SharedTensor:
    """``max(x, 0)``; with autograd, the comparison bit is kept for backward."""
    if _rec(x):
        return _fn.ReLU.apply(x)
    return _ops.relu(x)


def leaky_relu(x: SharedTensor, negative_slope: float = 0.01) -> SharedTensor:
    """``max(x, 0) + negative_slope * min(x, 0)`` like ``torch.nn.functional.leaky_relu``.

    Computed as ``negative_slope * x + (1 - negative_slope) * relu(x)``: one
    comparison and the ReLU's product, plus two public products (truncations).
    With autograd, ReLU's comparison bit is kept: the gradient
    ``g * (negative_slope + (1 - negative_slope) * [x > 0])`` costs one product.
    """
    slope = float(negative_slope)
    if not math.isfinite(slope):
        raise ValueError(f"leaky_relu: `negative_slope` must be finite; got {negative_slope!r}")
    if slope == 0.0:
        return relu(x)
    return add(mul(x, slope), mul(relu(x), 1.0 - slope))


def sign(x: SharedTensor) -> SharedTensor:
    """Sign of x (-1, 0, 1)."""
    return _ops.sign(x)


def abs(x: SharedTensor) -> SharedTensor:
    """|x| (gradient ``g * sign(x)``)."""
    if _rec(x):
        return mul(x, _ops.sign(x.detach()))
    return _ops.abs(x)


def where(cond: SharedTensor, a: Any, b: Any) -> SharedTensor:
    """``a`` where ``cond`` (shared 0/1) else ``b``."""
    if _rec(a, b):
        return _fn.Where.apply(cond, a, b)
    return _ops.where(cond, a, b)


def max(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Max over ``dim`` (all elements when None). Not differentiable."""
    return _ops.max(x, dim, keepdim)


def min(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Min over ``dim`` (all elements when None). Not differentiable."""
    return _ops.min(x, dim, keepdim)


def argmax(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    """One-hot argmax."""
    return _ops.argmax(x, dim, keepdim)


def argmin(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    """One-hot argmin."""
    return _ops.argmin(x, dim, keepdim)


def max_pool2d(
    input: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> SharedTensor:
    """Max pooling like ``torch.nn.functional.max_pool2d``.

    With autograd, the one-hot argmax of every window is kept for backward.
    """
    if _rec(input):
        k = _pair(kernel_size, "kernel_size", 1)
        return _fn.MaxPool2d.apply(
            input,
            k,
            _pair(stride, "stride", 1) if stride is not None else k,
            _pair(padding, "padding"),
        )
    return _ops.max_pool2d(input, kernel_size, stride, padding)


def reciprocal(x: SharedTensor) -> SharedTensor:
    """1/x."""
    if _rec(x):
        return _fn.Reciprocal.apply(x)
    return _ops.reciprocal(x)


def div(x: SharedTensor, y: Any) -> SharedTensor:
    """X / y."""
    if _rec(x, y):
        if isinstance(y, SharedTensor):
            return mul(x, reciprocal(y))
        t = torch.as_tensor(y, dtype=torch.float64)
        if bool((t == 0).any()):
            raise ZeroDivisionError("div: public divisor contains zero")
        return mul(x, 1.0 / t)
    return _ops.div(x, y)


def exp(x: SharedTensor) -> SharedTensor:
    """e**x."""
    if _rec(x):
        return _fn.Exp.apply(x)
    return _ops.exp(x)


def log(x: SharedTensor) -> SharedTensor:
    """Ln x."""
    if _rec(x):
        return _fn.Log.apply(x)
    return _ops.log(x)


def sqrt(x: SharedTensor) -> SharedTensor:
    """Sqrt x."""
    if _rec(x):
        return _fn.Sqrt.apply(x)
    return _ops.sqrt(x)


def rsqrt(x: SharedTensor) -> SharedTensor:
    """1/sqrt x."""
    if _rec(x):
        return reciprocal(sqrt(x))
    return _ops.rsqrt(x)


def rsqrt_wide(x: SharedTensor) -> SharedTensor:
    """``1 / sqrt(x)`` for ``x`` in ``[2^-18, 2^14]``, 0 below (:func:`smpc.ops.rsqrt_wide`).

    Gradient ``-g / (2 x^1.5)`` from the saved output (two products).
    """
    if _rec(x):
        return _fn.RsqrtWide.apply(x)
    return _ops.rsqrt_wide(x)


def sigmoid(x: SharedTensor) -> SharedTensor:
    """Logistic sigmoid."""
    if _rec(x):
        return _fn.Sigmoid.apply(x)
    return _ops.sigmoid(x)


def tanh(x: SharedTensor) -> SharedTensor:
    """Tanh."""
    if _rec(x):
        return _fn.Tanh.apply(x)
    return _ops.tanh(x)


def softmax(x: SharedTensor, dim: int) -> SharedTensor:
    """Softmax over ``dim``."""
    if _rec(x):
        return _fn.Softmax.apply(x, dim)
    return _ops.softmax(x, dim)


def log_softmax(x: SharedTensor, dim: int) -> SharedTensor:
    """Log-softmax over ``dim``."""
    if _rec(x):
        return _fn.LogSoftmax.apply(x, dim)
    return _ops.log_softmax(x, dim)


def _rescale_share(sess: Any, share: torch.Tensor) -> torch.Tensor:
    """Truncate a raw share from scale 2^2f to 2^f (for SharedTensor.grad; 1 round)."""
    return _ops.rescale(sess, share)


def backward(x: SharedTensor, grad: SharedTensor | torch.Tensor | None = None) -> None:
    """Back-propagate from ``x`` into the ``.grad`` of every leaf that requires grad.

    See :func:`smpc.autograd.backward`. The graph is freed afterwards.
    """
    _backward(x, grad)


# Every public op tags its result with the plaintext dtype reveal() returns
# (torch's type promotion: see smpc.tensor.result_dtype).
tag_results(globals(), [n for n in __all__ if n != "backward"])

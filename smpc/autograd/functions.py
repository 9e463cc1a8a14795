"""Differentiable ops: one :class:`Function` per op of the public API (autograd layer).

Forward passes call the non-differentiable kernels of :mod:`smpc.ops`;
backward passes use them too (no differentiation through protocol internals,
no raw shares here). A gradient flowing backwards may be a *public* torch
tensor (the implicit ``1`` of ``loss.backward()``) until it first meets a shared
operand: that saves a Beaver product and a truncation at the top of the graph.

Costs that matter for training:

* ``mul``/``matmul``/``conv2d``: each needed input gradient is one Beaver
  product plus one truncation (one with a public operand: truncation only).
* ``relu``: forward saves the comparison bit; backward is ``grad * bit``, one
  product, no second comparison.
* ``cross_entropy``: forward computes only the softmax; the gradient is
  ``(softmax - onehot) * grad / batch``. The loss value (which needs a log) is
  computed lazily, only if it is revealed or used.
* ``mse_loss``: backward is ``2 (input - target) * grad / numel``; the squared
  error is likewise computed only when the loss is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import ops, ring
from ..errors import ShapeError
from ..tensor import SharedTensor
from .function import Context, Function
from .tape import WideGrad, wants_wide_grad

__all__ = [
    "Add",
    "Sub",
    "Neg",
    "Mul",
    "Square",
    "MatMul",
    "Linear",
    "Conv2d",
    "Sum",
    "Mean",
    "Reshape",
    "Transpose",
    "Permute",
    "Expand",
    "GetItem",
    "Cat",
    "Stack",
    "ReLU",
    "AvgPool2d",
    "MaxPool2d",
    "Softmax",
    "LogSoftmax",
    "MSELoss",
    "CrossEntropy",
    "Where",
    "Exp",
    "Reciprocal",
    "Sigmoid",
    "Tanh",
    "Log",
    "Sqrt",
    "RsqrtWide",
    "LazyValue",
    "sum_to",
]

Grad = SharedTensor | torch.Tensor


# ----------------------------------------------------------------- gradient helpers
def _gmul(g: Grad, y: Any) -> Grad:
    """``g * y`` for public or shared g and y."""
    if isinstance(g, SharedTensor) or isinstance(y, SharedTensor):
        return ops.mul(g, y)
    return g * torch.as_tensor(y)


def _gmatmul(a: Any, b: Any) -> Grad:
    if isinstance(a, SharedTensor) or isinstance(b, SharedTensor):
        return ops.matmul(a, b)
    return torch.as_tensor(a) @ torch.as_tensor(b)


def _weight_grad(z: SharedTensor | torch.Tensor) -> SharedTensor | WideGrad:
    """A product from :func:`smpc.ops.matmuls_keep_scale`: truncated, or kept wide."""
    return z if isinstance(z, SharedTensor) else WideGrad(z)


def _gneg(g: Grad) -> Grad:
    return ops.neg(g) if isinstance(g, SharedTensor) else -g


def _gadd(a: Grad, b: Grad) -> Grad:
    if isinstance(a, SharedTensor) or isinstance(b, SharedTensor):
        return ops.add(a, b)
    return a + b


def _gsum(g: Grad, dims: tuple[int, ...], keepdim: bool) -> Grad:
    if not dims:
        return g
    if isinstance(g, SharedTensor):
        return ops.sum(g, dims, keepdim)
    return g.sum(dim=dims, keepdim=keepdim)


def sum_to(g: Grad, shape: Sequence[int]) -> Grad:
    """Sum a broadcast gradient back to ``shape`` (local)."""
    shape = tuple(shape)
    gshape = tuple(g.shape)
    if gshape == shape:
        return g
    extra = len(gshape) - len(shape)
    if extra > 0:
        g = _gsum(g, tuple(range(extra)), False)
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    g = _gsum(g, dims, True)
    if tuple(g.shape) != shape:
        g = g.reshape(shape)
    return g


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, (SharedTensor, torch.Tensor)) else ()


# ----------------------------------------------------------------- arithmetic
class Add(Function):
    """``x + y``."""

    @staticmethod
    def forward(ctx: Context, x: Any, y: Any) -> SharedTensor:
        """``x + y`` with broadcasting; saves both operands' shapes. Cost: local."""
        ctx.shapes = (_shape_of(x), _shape_of(y))
        return ops.add(x, y)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | None]:
        """``g`` for each operand, summed back over its broadcast dims. Cost: local."""
        nx, ny = ctx.needs_input_grad
        sx, sy = ctx.shapes
        return (sum_to(g, sx) if nx else None, sum_to(g, sy) if ny else None)


class Sub(Function):
    """``x - y``."""

    @staticmethod
    def forward(ctx: Context, x: Any, y: Any) -> SharedTensor:
        """``x - y`` with broadcasting; saves both operands' shapes. Cost: local."""
        ctx.shapes = (_shape_of(x), _shape_of(y))
        return ops.sub(x, y)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | None]:
        """``g`` for ``x``, ``-g`` for ``y``, each summed back to its shape. Cost: local."""
        nx, ny = ctx.needs_input_grad
        sx, sy = ctx.shapes
        return (sum_to(g, sx) if nx else None, _gneg(sum_to(g, sy)) if ny else None)


class Neg(Function):
    """``-x``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """``-x``: each party negates its share. Cost: local."""
        return ops.neg(x)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``-g``. Cost: local."""
        return _gneg(g)


class Mul(Function):
    """``x * y``: saves both operands; each needed gradient is one product."""

    @staticmethod
    def forward(ctx: Context, x: Any, y: Any) -> SharedTensor:
        """``x * y`` (:func:`smpc.ops.mul`); saves ``x`` and ``y``.

        Cost: shared x shared, one product (Beaver opening, truncation); shared x public float, one
        truncation; public int, local.
        """
        ctx.save_for_backward(x, y)
        return ops.mul(x, y)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | None]:
        """``g * y`` for ``x`` and ``g * x`` for ``y``, each only if needed.

        Each is summed back over its broadcast dims. Cost: one :func:`smpc.ops.mul` per needed
        gradient, one after the other (local for a public ``g`` and a public integer operand).
        """
        x, y = ctx.saved_tensors
        nx, ny = ctx.needs_input_grad
        gx = sum_to(_gmul(g, y), _shape_of(x)) if nx else None
        gy = sum_to(_gmul(g, x), _shape_of(y)) if ny else None
        return gx, gy


class Square(Function):
    """``x * x``: backward ``2 x g`` (one product; the 2 is a free integer scaling)."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """``x * x`` with a square pair (:func:`smpc.ops.square`); saves ``x``.

        Cost: one opening of one element per entry, then a truncation.
        """
        ctx.save_for_backward(x)
        return ops.square(x)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``(g * x) * 2`` from the saved ``x``.

        Cost: one :func:`smpc.ops.mul`; the 2 is a public integer (local).
        """
        (x,) = ctx.saved_tensors
        return ops.mul(_gmul(g, x), 2)


def _t(a: Any) -> Any:
    """Transpose the last two dims (shared or public)."""
    return a.transpose(-2, -1)


class MatMul(Function):
    """``x @ y`` with torch's semantics; ``gx = g @ y^T``, ``gy = x^T @ g``."""

    @staticmethod
    def forward(ctx: Context, x: Any, y: Any) -> SharedTensor:
        """``x @ y`` (:func:`smpc.ops.matmul`); saves ``x`` and ``y``.

        Cost: shared @ shared is a Beaver matrix triple (one opening), then a truncation.
        """
        ctx.save_for_backward(x, y)
        return ops.matmul(x, y)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | None]:
        """``g @ y^T`` for ``x`` and ``x^T @ g`` for ``y``, each only if needed.

        1-D operands are promoted as torch does; each gradient is summed back over broadcast batch
        dims. Cost: with a shared ``g`` and both gradients needed, the two products share their
        rounds (:func:`smpc.ops.matmuls`); otherwise one :func:`smpc.ops.matmul` per needed
        gradient.
        """
        x, y = ctx.saved_tensors
        nx, ny = ctx.needs_input_grad
        xs, ys = _shape_of(x), _shape_of(y)
        # Promote 1-D operands as torch does, so the 2-D rules apply.
        x2 = x.reshape(1, xs[0]) if len(xs) == 1 else x
        y2 = y.reshape(ys[0], 1) if len(ys) == 1 else y
        g2 = g
        if len(xs) == 1:
            g2 = g2.unsqueeze(-2)
        if len(ys) == 1:
            g2 = g2.unsqueeze(-1)
        gx = gy = None
        if nx and ny and isinstance(g2, SharedTensor):  # both products in one pair of rounds
            px, py = ops.matmuls([(g2, _t(y2)), (_t(x2), g2)])
            gx = sum_to(px, _shape_of(x2)).reshape(xs)
            gy = sum_to(py, _shape_of(y2)).reshape(ys)
        else:
            if nx:
                gx = sum_to(_gmatmul(g2, _t(y2)), _shape_of(x2)).reshape(xs)
            if ny:
                gy = sum_to(_gmatmul(_t(x2), g2), _shape_of(y2)).reshape(ys)
        return gx, gy


class Linear(Function):
    """``input @ weight^T + bias`` fused (one node per layer).

    Backward: ``grad_weight = g^T @ input``, ``grad_input = g @ weight``,
    ``grad_bias = g.sum(0)``; each product only when needed (the first layer
    never computes ``grad_input``), the two products in the rounds of one
    (:func:`smpc.ops.matmuls`).
    """

    @staticmethod
    def forward(ctx: Context, x: Any, w: Any, b: Any) -> SharedTensor:
        """``x @ w^T`` plus the bias (local); saves ``x`` and ``w``.

        When a gradient is needed and both operands are shared, :func:`smpc.ops.linear_forward`
        computes the product and keeps its masks in ``ctx.masks`` for the backward; otherwise
        :func:`smpc.ops.matmul`. Cost: as one matmul (one opening, one truncation).
        """
        ctx.save_for_backward(x, w)
        wt = w.t() if isinstance(w, SharedTensor) else torch.as_tensor(w).t()
        kept = None
        if (
            (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
            and isinstance(x, SharedTensor)
            and isinstance(wt, SharedTensor)
        ):  # the backward will reuse the forward's masks (see ops.linear_forward)
            kept = ops.linear_forward(x, wt)
        if kept is None:
            out = ops.matmul(x, wt)
        else:
            out, ctx.masks = kept
        return out if b is None else ops.add(out, b)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | WideGrad | None, Grad | None]:
        """``g @ w``, ``g^T @ x`` (batch dims flattened) and ``g.sum(0)``, each only if needed.

        With the forward's kept masks, :func:`smpc.ops.linear_backward` opens only ``g`` (2 rounds,
        1 if nothing is truncated); else, both needed with a shared ``g``, the two products share
        their rounds (:func:`smpc.ops.matmuls_keep_scale`); else one product per gradient. A shared
        leaf weight with ``keep_wide_grad`` (its optimizer's; ``frac_bits <= 16``, see
        :func:`~smpc.autograd.tape.wants_wide_grad`) gets its gradient untruncated as a
        :class:`WideGrad` (the optimizer truncates it with the update). The bias gradient is local.
        """
        x, w = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad
        gx: Grad | None = None
        gw: Grad | WideGrad | None = None
        gb: Grad | None = None
        # A leaf weight whose optimizer folds the truncation into its update takes its
        # gradient before truncation: see WideGrad.
        wide = wants_wide_grad(w)
        masks = ctx.__dict__.get("masks")
        if masks is not None and isinstance(g, SharedTensor) and (nx or nw):
            lx, lw = ops.linear_backward(
                g, masks, grad_input=nx, grad_weight=nw, keep_weight_scale=wide
            )
            gx = lx
            gw = None if lw is None else _weight_grad(lw)
        elif nx and nw and isinstance(g, SharedTensor):  # both products in one pair of rounds
            gt = g.reshape(-1, g.shape[-1]).t()
            pair = [(g, w), (gt, x.reshape(-1, x.shape[-1]))]
            gx_, gw_ = ops.matmuls_keep_scale(pair, [False, wide])
            assert isinstance(gx_, SharedTensor)
            gx, gw = gx_, _weight_grad(gw_)
        else:
            if nx:
                gx = _gmatmul(g, w)
            if nw:
                g2 = g.reshape(-1, g.shape[-1])
                x2 = x.reshape(-1, x.shape[-1])
                if wide and isinstance(g2, SharedTensor) and isinstance(x2, SharedTensor):
                    gw = _weight_grad(ops.matmuls_keep_scale([(g2.t(), x2)], [True])[0])
                else:
                    gw = _gmatmul(g2.t(), x2)
        if nb:
            g2 = g.reshape(-1, g.shape[-1])
            gb = _gsum(g2, (0,), False)
        return gx, gw, gb


# ----------------------------------------------------------------- convolution
def _output_padding(
    g_shape: Sequence[int],
    w_shape: Sequence[int],
    input_shape: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """The ``output_padding`` that takes ``conv_transpose2d`` back to ``input_shape``."""
    extra = [
        int(input_shape[d - 2])  # spatial dims are the last two of every shape
        - ((int(g_shape[d - 2]) - 1) * stride[d] - 2 * padding[d]
           + dilation[d] * (int(w_shape[d - 2]) - 1) + 1)
        for d in (0, 1)
    ]  # fmt: skip
    return extra[0], extra[1]


def conv2d_input_grad(
    g: Grad,
    w: Any,
    input_shape: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
) -> Grad:
    """``conv_transpose2d(g, w)`` back to ``input_shape`` (grouped like the forward).

    A transposed convolution of the gradient (its own Beaver triple kind): the
    work of the forward convolution, where the equivalent stride-1 convolution
    of the dilated, padded gradient would also multiply the padding's zeros
    (about 4x the work for a 5x5 kernel on 8x8 maps).
    """
    out_pad = _output_padding(g.shape, w.shape, input_shape, stride, padding, dilation)
    if not isinstance(g, SharedTensor) and not isinstance(w, SharedTensor):
        return torch.nn.functional.conv_transpose2d(
            g, torch.as_tensor(w), stride=stride, padding=padding,
            output_padding=out_pad, dilation=dilation, groups=groups,
        )  # fmt: skip
    return ops.conv_transpose2d(
        g,
        w,
        stride=stride,
        padding=padding,
        output_padding=out_pad,
        dilation=dilation,
        groups=groups,
    )


def _weight_grad_operands(x: Any, g: Any, groups: int) -> tuple[Any, Any]:
    """The operands of the weight gradient as one convolution over the batch (local).

    ``x`` (N, C, H, W) becomes (C/G, G*N, H, W) with group-major channels and
    ``g`` (N, O, Ho, Wo) becomes (O, N, Ho, Wo): a convolution with ``groups=G``
    then pairs group ``k``'s input channels with its output channels only, and
    gives (C/G, O, kh', kw'), the weight gradient transposed (groups=1: the
    plain ``x^T``, ``g^T``).
    """
    if groups == 1:
        return x.transpose(0, 1), g.transpose(0, 1)
    n, c, h, w = (int(v) for v in _shape_of(x))
    xt = x.reshape(n, groups, c // groups, h, w).permute(2, 1, 0, 3, 4)
    return xt.reshape(c // groups, groups * n, h, w), g.transpose(0, 1)


def conv2d_weight_grad(
    x: Any,
    g: Grad,
    weight_shape: Sequence[int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
) -> Grad:
    """``d out / d weight``: a convolution of the input with ``g`` over the batch."""
    kh, kw = int(weight_shape[2]), int(weight_shape[3])
    xt, gt = _weight_grad_operands(x, g, groups)  # (C/G, G*N, H, W), (O, N, Ho, Wo)
    out: Grad
    if not isinstance(xt, SharedTensor) and not isinstance(gt, SharedTensor):
        out = torch.nn.functional.conv2d(
            xt, gt, padding=padding, stride=dilation, dilation=stride, groups=groups
        )
    else:
        out = ops.conv2d(xt, gt, padding=padding, stride=dilation, dilation=stride, groups=groups)
    out = out[:, :, :kh, :kw]
    return out.transpose(0, 1)


def conv2d_grads(
    x: SharedTensor,
    g: SharedTensor,
    w: SharedTensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
) -> tuple[SharedTensor, SharedTensor]:
    """Both gradients of a shared convolution, the two products in the rounds of one.

    The same products as :func:`conv2d_input_grad` and :func:`conv2d_weight_grad`.
    """
    kh, kw = int(w.shape[2]), int(w.shape[3])
    out_pad = _output_padding(g.shape, w.shape, x.shape, stride, padding, dilation)
    to_input = ring.ConvTranspose2dOp(
        stride=stride, padding=padding, output_padding=out_pad, dilation=dilation, groups=groups
    )
    to_weight = ring.Conv2dOp(stride=dilation, padding=padding, dilation=stride, groups=groups)
    xt, gt = _weight_grad_operands(x, g, groups)
    gx, gw = ops.bilinears([(to_input, g, w), (to_weight, xt, gt)])
    return gx, gw[:, :, :kh, :kw].transpose(0, 1)


class Conv2d(Function):
    """2-D convolution, grouped or not (depthwise: ``groups`` = channels)."""

    @staticmethod
    def forward(
        ctx: Context,
        x: Any,
        w: Any,
        b: Any,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> SharedTensor:
        """``conv2d(x, w, b)`` (:func:`smpc.ops.conv2d`); saves ``x``, ``w`` and the arguments.

        Cost: shared x shared is a Beaver convolution triple (one opening), then a truncation.
        """
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups)
        return ops.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Any, ...]:
        """The input, weight and bias gradients, each only if needed.

        Input: ``conv_transpose2d(g, w)`` (:func:`conv2d_input_grad`); weight: a convolution of
        ``x`` with ``g`` over the batch (:func:`conv2d_weight_grad`); bias: ``g`` summed over batch
        and space (local).

        Cost: all shared and both needed, the two products share their rounds
        (:func:`conv2d_grads`); otherwise one bilinear product per needed gradient (opening and
        truncation; truncation only with a public operand). An unbatched (C, H, W) input gets a
        batch dim of 1.
        """
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        nx, nw, nb = ctx.needs_input_grad[:3]
        squeeze = len(_shape_of(x)) == 3
        if squeeze:
            x = x.unsqueeze(0)
            g = g.unsqueeze(0)
        gx: Grad | None = None
        gw: Grad | None = None
        gb: Grad | None = None
        if (
            nx
            and nw
            and isinstance(x, SharedTensor)
            and isinstance(g, SharedTensor)
            and isinstance(w, SharedTensor)
        ):
            gx, gw = conv2d_grads(x, g, w, stride, padding, dilation, groups)
        else:
            if nx:
                gx = conv2d_input_grad(g, w, _shape_of(x), stride, padding, dilation, groups)
            if nw:
                gw = conv2d_weight_grad(x, g, _shape_of(w), stride, padding, dilation, groups)
        if nx and squeeze:
            assert gx is not None
            gx = gx.squeeze(0)
        if nb:
            gb = _gsum(g, (0, 2, 3), False)
        return (gx, gw, gb, None, None, None, None)


class AvgPool2d(Function):
    """Average pooling: a public depthwise convolution; backward is its transpose (1 truncation)."""

    @staticmethod
    def forward(
        ctx: Context,
        x: SharedTensor,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> SharedTensor:
        """A depthwise convolution with the public kernel ``1 / (kh * kw)``.

        Saves the input shape and the pooling arguments. Cost: a local ring op, one truncation.
        """
        c = x.shape[-3]
        weight = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        ctx.conf = (tuple(x.shape), kernel, stride, padding)
        return ops.conv2d(x, weight, stride=stride, padding=padding, groups=c)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None, None, None]:
        """The transposed public convolution of ``g``, back to the input's shape.

        Channels fold into the batch so one public kernel serves all. Cost: a local ring op, one
        truncation for a shared ``g``.
        """
        xshape, kernel, stride, padding = ctx.conf
        squeeze = len(xshape) == 3
        if squeeze:
            g = g.unsqueeze(0)
        c = xshape[-3]
        # Channels fold into the batch so one public kernel serves all of them.
        n = g.shape[0]
        g1 = g.reshape(n * c, 1, g.shape[-2], g.shape[-1])
        weight = torch.full((1, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        gx = conv2d_input_grad(
            g1, weight, (n * c, 1, xshape[-2], xshape[-1]), stride, padding, (1, 1)
        )
        gx = gx.reshape(n, c, xshape[-2], xshape[-1])
        if squeeze:
            gx = gx.squeeze(0)
        return gx, None, None, None


# ----------------------------------------------------------------- reductions
def _dims(x: SharedTensor, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    return ops.reduce_dims(x, dim)


def _expand_back(g: Grad, shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool) -> Grad:
    if not keepdim:
        kshape = [1 if i in dims else s for i, s in enumerate(shape)]
        g = g.reshape(kshape)
    return g.expand(shape) if isinstance(g, SharedTensor) else g.expand(shape).contiguous()


class Sum(Function):
    """Sum over dims: backward broadcasts the gradient back (local)."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, dim: Any, keepdim: bool) -> SharedTensor:
        """``x.sum(dim, keepdim)``; saves the input shape, dims and ``keepdim``. Cost: local."""
        ctx.conf = (tuple(x.shape), _dims(x, dim), keepdim)
        return ops.sum(x, dim, keepdim)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None, None]:
        """``g`` broadcast back over the reduced dims to the input's shape. Cost: local."""
        shape, dims, keepdim = ctx.conf
        return _expand_back(g, shape, dims, keepdim), None, None


class Mean(Function):
    """Mean over dims: backward ``g / count`` broadcast back (one public product)."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, dim: Any, keepdim: bool) -> SharedTensor:
        """``x.mean(dim, keepdim)`` (:func:`smpc.ops.mean`); saves the shape, dims and count.

        Cost: a local sum, then a public-float product (one truncation).
        """
        dims = _dims(x, dim)
        ctx.conf = (tuple(x.shape), dims, keepdim, math.prod(x.shape[d] for d in dims))
        return ops.mean(x, dim, keepdim)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None, None]:
        """``g / count`` broadcast back over the reduced dims.

        Cost: one public-float product (one truncation for a shared ``g``), none when ``count`` is
        1.
        """
        shape, dims, keepdim, count = ctx.conf
        if count > 1:
            g = _gmul(g, 1.0 / count)
        return _expand_back(g, shape, dims, keepdim), None, None


# ----------------------------------------------------------------- shape ops (all local)
class Reshape(Function):
    """Reshape."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, shape: tuple[int, ...]) -> SharedTensor:
        """``x`` reshaped to ``shape``; saves the input shape. Cost: local."""
        ctx.shape = tuple(x.shape)
        return ops.reshape(x, shape)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None]:
        """``g`` reshaped to the input's shape. Cost: local."""
        return g.reshape(ctx.shape), None


class Transpose(Function):
    """Swap two dims."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, d0: int, d1: int) -> SharedTensor:
        """``x`` with dims ``d0`` and ``d1`` swapped; saves the two dims. Cost: local."""
        ctx.dims = (d0, d1)
        return ops.transpose(x, d0, d1)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None, None]:
        """``g`` with the same two dims swapped back. Cost: local."""
        return g.transpose(*ctx.dims), None, None


class Permute(Function):
    """Permute dims."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, dims: tuple[int, ...]) -> SharedTensor:
        """``x`` permuted to ``dims``; saves the inverse permutation. Cost: local."""
        nd = max(x.dim(), 1)
        ctx.inv = tuple(sorted(range(len(dims)), key=lambda i: dims[i] % nd))
        return ops.permute(x, dims)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None]:
        """``g`` permuted by the saved inverse permutation. Cost: local."""
        return g.permute(*ctx.inv), None


class Expand(Function):
    """Broadcast to a size."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, sizes: tuple[int, ...]) -> SharedTensor:
        """``x`` broadcast to ``sizes``; saves the input shape. Cost: local."""
        ctx.shape = tuple(x.shape)
        return ops.expand(x, sizes)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None]:
        """``g`` summed back over the expanded dims (:func:`sum_to`). Cost: local."""
        return sum_to(g, ctx.shape), None


class GetItem(Function):
    """Index or slice; backward scatters into zeros (local)."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, index: Any) -> SharedTensor:
        """``x[index]``; saves the input shape and the index. Cost: local."""
        ctx.conf = (tuple(x.shape), index)
        return ops.getitem(x, index)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None]:
        """Zeros of the input's shape with ``g`` added at ``index``. Cost: local.

        Done on each share; repeated indices add up.
        """
        shape, index = ctx.conf
        if isinstance(g, SharedTensor):
            return ops.index_into_zeros(g, shape, index), None
        pos = ops.flat_positions(shape, index).reshape(-1)
        out_t = torch.zeros(math.prod(shape), dtype=g.dtype)
        out_t.index_add_(0, pos, g.reshape(-1))
        return out_t.reshape(shape), None


class Cat(Function):
    """Concatenate along a dim; backward slices the gradient (local)."""

    @staticmethod
    def forward(ctx: Context, dim: int, *tensors: SharedTensor) -> SharedTensor:
        """``ops.cat(tensors, dim)``; saves the dim and each input's size along it. Cost: local."""
        nd = tensors[0].dim()
        ctx.conf = (dim % max(nd, 1), [t.shape[dim] for t in tensors])
        return ops.cat(list(tensors), dim)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, ...]:
        """The slice of ``g`` along ``dim`` that each input filled. Cost: local.

        Only for the inputs that need it; ``None`` for ``dim``.
        """
        d, sizes = ctx.conf
        outs: list[Grad | None] = [None]
        start = 0
        for s, need in zip(sizes, ctx.needs_input_grad[1:], strict=True):
            if need:
                idx = (slice(None),) * d + (slice(start, start + s),)
                outs.append(g[idx])
            else:
                outs.append(None)
            start += s
        return tuple(outs)


class Stack(Function):
    """Stack along a new dim; backward selects (local)."""

    @staticmethod
    def forward(ctx: Context, dim: int, *tensors: SharedTensor) -> SharedTensor:
        """``ops.stack(tensors, dim)``; saves the dim (made non-negative). Cost: local."""
        ctx.dim = dim % (tensors[0].dim() + 1)
        return ops.stack(list(tensors), dim)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, ...]:
        """``g`` at index ``i`` of the stacked dim for input ``i``. Cost: local.

        Only for the inputs that need it; ``None`` for ``dim``.
        """
        d = ctx.dim
        outs: list[Grad | None] = [None]
        for i, need in enumerate(ctx.needs_input_grad[1:]):
            outs.append(g[(slice(None),) * d + (i,)] if need else None)
        return tuple(outs)


# ----------------------------------------------------------------- non-linear
class ReLU(Function):
    """``max(x, 0)``: forward keeps the comparison bit, backward is ``g * bit``.

    The bit is kept as an *unscaled* ring 0/1, so the backward product is one
    Beaver multiplication with no truncation (1 round), and no second comparison.
    """

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """``max(x, 0)`` and the ring bit ``[x >= 0]``; saves the bit.

        :func:`smpc.ops.relu_with_ring_bit`: 4 rounds, no truncation. The bit is kept as shares
        of an unscaled ring 0/1.
        """
        value, bit = ops.relu_with_ring_bit(x)
        ctx.save_for_backward(bit)
        return value

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``g * bit`` (:func:`smpc.ops.mul_ring_bit`) from the saved bit.

        Cost: for a shared ``g`` one Beaver product without truncation (1 round); for a public
        ``g``, local.
        """
        (bit,) = ctx.saved_tensors
        return ops.mul_ring_bit(g, bit)


class Where(Function):
    """``a`` where ``cond`` else ``b``; gradients ``g * cond`` and ``g - g * cond``."""

    @staticmethod
    def forward(ctx: Context, cond: SharedTensor, a: Any, b: Any) -> SharedTensor:
        """``b + cond * (a - b)`` (:func:`smpc.ops.where`); saves ``cond`` and shapes.

        Cost: one product, or one truncation when ``a`` and ``b`` are public.
        """
        ctx.save_for_backward(cond)
        ctx.shapes = (_shape_of(a), _shape_of(b))
        return ops.where(cond, a, b)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[None, Grad | None, Grad | None]:
        """``gc = g * cond`` for ``a`` and ``g - gc`` for ``b``, each only if needed.

        Each is summed back to its operand's shape. Cost: one :func:`smpc.ops.mul` (made even when
        one gradient is needed); the rest is local.
        """
        (cond,) = ctx.saved_tensors
        _, na, nb = ctx.needs_input_grad
        gc = _gmul(g, cond)
        ga = sum_to(gc, ctx.shapes[0]) if na else None
        gb = sum_to(_gadd(g, _gneg(gc)), ctx.shapes[1]) if nb else None
        return None, ga, gb


class MaxPool2d(Function):
    """Max pooling with the one-hot argmax of each window kept for backward.

    The kernel of the no-grad path too (:func:`smpc.ops.max_pool2d_with_onehot`):
    any padding works. Backward: ``onehot * g`` (one product) scattered back to the
    windows (local).
    """

    @staticmethod
    def forward(
        ctx: Context,
        x: SharedTensor,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> SharedTensor:
        """The max of each window and its one-hot argmax; saves the one-hot.

        :func:`smpc.ops.max_pool2d_with_onehot`: ``ceil(log2(kh*kw))`` levels of comparisons,
        one round more per level after the first for the one-hot (15 rounds for 2x2).
        """
        out, onehot = ops.max_pool2d_with_onehot(x, kernel, stride, padding)
        ctx.save_for_backward(onehot)
        ctx.conf = (tuple(x.shape), kernel, stride, padding)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None, None, None]:
        """``onehot * g`` added back onto each window's input positions, padding cropped.

        :func:`smpc.ops.max_pool2d_backward`. Cost: one product (Beaver and a truncation); the
        scatter is local (overlapping windows add up).
        """
        (onehot,) = ctx.saved_tensors
        shape, kernel, stride, padding = ctx.conf
        return ops.max_pool2d_backward(g, onehot, shape, kernel, stride, padding), None, None, None


class Softmax(Function):
    """Softmax; backward ``s * (g - sum(g * s))`` (two products)."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, dim: int) -> SharedTensor:
        """:func:`smpc.ops.softmax` along ``dim``; saves the output ``s``."""
        s = ops.softmax(x, dim)
        ctx.save_for_backward(s)
        ctx.dim = dim
        return s

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None]:
        """``g * s - s * sum(g * s, dim)`` from the saved output ``s``.

        Cost: two products one after the other; the sum and the subtraction are local.
        """
        (s,) = ctx.saved_tensors
        gs = _gmul(g, s)
        tot = _gsum(gs, (ctx.dim % max(s.dim(), 1),), True)
        return ops.sub(gs, _gmul(tot, s)), None


class LogSoftmax(Function):
    """Log-softmax; backward ``g - softmax * sum(g)`` (softmax recomputed, one product)."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, dim: int) -> SharedTensor:
        """:func:`smpc.ops.log_softmax` along ``dim``; saves the input ``x``."""
        ctx.save_for_backward(x)
        ctx.dim = dim
        return ops.log_softmax(x, dim)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad, None]:
        """``g - softmax(x) * sum(g, dim)`` from the saved input.

        Cost: the softmax recomputed (its full cost), then one product; the rest is local.
        """
        (x,) = ctx.saved_tensors
        p = ops.softmax(x, ctx.dim)
        tot = _gsum(g, (ctx.dim % max(x.dim(), 1),), True)
        return _gadd(g, _gneg(_gmul(tot, p))), None


class Exp(Function):
    """``e^x``; backward ``g * out``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.exp`; saves the output."""
        out = ops.exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``g * out`` from the saved output: one :func:`smpc.ops.mul`."""
        return _gmul(g, ctx.saved_tensors[0])


class Reciprocal(Function):
    """``1/x``; backward ``-g * out^2``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.reciprocal`; saves the output ``r``."""
        out = ops.reciprocal(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``-(g * r^2)`` from the saved output ``r``.

        Cost: a square (:func:`smpc.ops.square`) then one product; the negation is local.
        """
        (r,) = ctx.saved_tensors
        return _gneg(_gmul(g, ops.square(r)))


class Log(Function):
    """``ln x``; backward ``g / x``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.log`; saves the input ``x``."""
        ctx.save_for_backward(x)
        return ops.log(x)

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``g * (1 / x)`` from the saved input.

        Cost: a reciprocal (:func:`smpc.ops.reciprocal`, its full cost), then one product.
        """
        return _gmul(g, ops.reciprocal(ctx.saved_tensors[0]))


class Sqrt(Function):
    """``sqrt x``; backward ``g / (2 out)``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.sqrt`; saves the output."""
        out = ops.sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``(g * (1 / out)) * 0.5`` from the saved output.

        Cost: a reciprocal (its full cost), one product, then a public-float product (one
        truncation).
        """
        return _gmul(_gmul(g, ops.reciprocal(ctx.saved_tensors[0])), 0.5)


class RsqrtWide(Function):
    """``1 / sqrt(x)`` over ``[2^-18, 2^14]`` (:func:`smpc.ops.rsqrt_wide`).

    Backward ``-g r^3 / 2`` from the saved output ``r`` (two products).
    """

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.rsqrt_wide`; saves the output ``r``."""
        out = ops.rsqrt_wide(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``g * (r^2 * (-r / 2))`` from the saved output ``r``.

        Cost: a square, a public-float product (one truncation), then two products one after the
        other.
        """
        (r,) = ctx.saved_tensors
        return _gmul(g, ops.mul(ops.square(r), ops.mul(r, -0.5)))


class Sigmoid(Function):
    """Logistic sigmoid; backward ``g * s * (1 - s)``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.sigmoid`; saves the output ``s``."""
        out = ops.sigmoid(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``g * (s * (1 - s))``: two products one after the other (``1 - s`` is local)."""
        (s,) = ctx.saved_tensors
        return _gmul(g, ops.mul(s, ops.sub(1.0, s)))


class Tanh(Function):
    """tanh; backward ``g * (1 - t^2)``."""

    @staticmethod
    def forward(ctx: Context, x: SharedTensor) -> SharedTensor:
        """:func:`smpc.ops.tanh`; saves the output ``t``."""
        out = ops.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: Grad) -> Grad:
        """``g * (1 - t^2)``: a square then one product (``1 - t^2`` is local)."""
        (t,) = ctx.saved_tensors
        return _gmul(g, ops.sub(1.0, ops.square(t)))


# ----------------------------------------------------------------- losses
class LazyValue(SharedTensor):
    """A SharedTensor whose shares are computed on first use.

    Losses return one: training needs only the loss *gradient* (which for
    softmax cross-entropy needs no logarithm), so the loss value and its cost
    are paid only when someone reveals or uses it. Its shape is known upfront.
    """

    __slots__ = ("_thunk", "_lazy_shape")

    def __init__(
        self, thunk: Callable[[], torch.Tensor], session: Any, shape: tuple[int, ...]
    ) -> None:
        # Every slot but ``_share``, which stays unset until ``_force``.
        self.session = session
        self.requires_grad = False
        self.grad = None
        self.grad_fn = None
        self._thunk: Callable[[], torch.Tensor] | None = thunk
        self._lazy_shape = torch.Size(shape)

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails, i.e. for ``_share`` before it is computed.
        if name == "_share":
            thunk = object.__getattribute__(self, "_thunk")
            if thunk is None:
                raise AttributeError(name)
            self._thunk = None
            share = thunk()
            self._share = share
            return share
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def shape(self) -> torch.Size:
        """Shape (known without computing the value)."""
        return self._lazy_shape

    @property
    def computed(self) -> bool:
        """Whether the value has been computed."""
        return self._thunk is None


def _reduce_shape(batch_shape: tuple[int, ...], reduction: str) -> tuple[int, ...]:
    return batch_shape if reduction == "none" else ()


def _reduce(x: SharedTensor, reduction: str) -> SharedTensor:
    if reduction == "mean":
        return ops.mean(x)
    if reduction == "sum":
        return ops.sum(x)
    return x


def check_reduction(reduction: str) -> None:
    """Validate a ``reduction`` argument."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none'; got {reduction!r}")


def _scale_grad(g: Grad, d: SharedTensor, scale: float, reduction: str) -> SharedTensor:
    """``d * g * scale`` with ``g`` broadcast over the reduced dims."""
    if reduction == "none":
        while g.dim() < d.dim():
            g = g.unsqueeze(-1)
        if isinstance(g, SharedTensor):
            return ops.mul(ops.mul(d, g), scale) if scale != 1 else ops.mul(d, g)
        return ops.mul(d, g * scale)
    if isinstance(g, SharedTensor):
        return ops.mul(d, g if scale == 1 else ops.mul(g, scale))
    factor = g.reshape(()) * scale
    if float(factor) == 1.0:
        return d
    return ops.mul(d, factor)


class MSELoss(Function):
    """``mean((input - target)^2)``; backward ``2 (input - target) g / numel``.

    The squared error is computed only if the loss value is used.
    """

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, target: Any, reduction: str) -> SharedTensor:
        """``d = x - target`` (local), saved for the backward.

        With ``reduction='none'`` returns ``d^2`` (one square); otherwise a :class:`LazyValue` whose
        square and reduction run only when the value is used.
        """
        from .linear_relu import mse_grad_in_forward  # the gradient on the logits' round

        ctx.pre = mse_grad_in_forward(x, target, reduction) if ctx.needs_input_grad[0] else None
        d = ops.sub(x, target)
        ctx.save_for_backward(d)
        ctx.conf = (reduction, _shape_of(x), _shape_of(target))
        if reduction == "none":
            return ops.square(d)
        return LazyValue(lambda: _reduce(ops.square(d), reduction).share, d.session, ())

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | None, None]:
        """``2 d g / n`` for ``x`` and its negation for ``target``, from the saved ``d``.

        ``n`` is numel for 'mean', else 1; each gradient is summed back over broadcast dims. Cost
        (:func:`_scale_grad`): a public ``g`` gives at most one public-float product (one
        truncation); a shared ``g`` one product, plus one public-float product when the scale is not
        1.
        """
        (d,) = ctx.saved_tensors
        reduction, xs, ts = ctx.conf
        n = d.numel() if reduction == "mean" else 1
        if ctx.pre is not None and not isinstance(g, SharedTensor) and float(g) == 1.0:
            gd: Grad = SharedTensor(ctx.pre[0].result(ctx.pre[1]), d.session)  # forward's
        else:
            gd = _scale_grad(g, d, 2.0 / n, reduction)
        nx, nt, _ = ctx.needs_input_grad
        return (sum_to(gd, xs) if nx else None, _gneg(sum_to(gd, ts)) if nt else None, None)


def onehot_target(x: SharedTensor, target: Any) -> Any:
    """Class indices -> one-hot float (public); float or shared targets pass through."""
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        if x.dim() > 1 and tuple(target.shape) != (x.shape[0], *x.shape[2:]):
            raise ShapeError(
                f"cross_entropy: class-index target must have shape "
                f"{(x.shape[0], *x.shape[2:])} for input {tuple(x.shape)}; "
                f"got {tuple(target.shape)}"
            )
        if bool((target < 0).any()) or bool((target >= x.shape[1 if x.dim() > 1 else 0]).any()):
            raise ValueError(
                f"cross_entropy: class indices must be in [0, {x.shape[1 if x.dim() > 1 else 0]})"
            )
        oh = torch.nn.functional.one_hot(target, x.shape[1 if x.dim() > 1 else 0]).to(torch.float32)
        return oh.movedim(-1, 1) if x.dim() > 2 else oh
    if tuple(_shape_of(target)) != tuple(x.shape):
        raise ShapeError(
            f"cross_entropy: probability target must have the input's shape {tuple(x.shape)}; "
            f"got {_shape_of(target)}"
        )
    return target


class CrossEntropy(Function):
    """Softmax cross-entropy with the fused gradient ``(softmax - onehot) * g / batch``.

    Forward computes only the softmax (kept for backward). The loss value,
    ``-sum(onehot * log_softmax)``, is computed lazily: only when revealed or used.
    """

    @staticmethod
    def forward(ctx: Context, x: SharedTensor, target: Any, reduction: str) -> SharedTensor:
        """:func:`smpc.ops.softmax` over the class dim; saves it and the target.

        The target is one-hot or probabilities. The loss ``-sum(target * log_softmax(x))``, reduced,
        is computed at once for ``reduction='none'``, otherwise lazily (:class:`LazyValue`) when
        used: a log-softmax, one product.
        """
        dim = 1 if x.dim() > 1 else 0
        p = ops.softmax(x, dim)
        ctx.save_for_backward(p, target)
        ctx.conf = (reduction, dim)
        batch_shape = tuple(s for i, s in enumerate(x.shape) if i != dim)

        def value() -> torch.Tensor:
            logp = ops.log_softmax(x, dim)
            per = ops.neg(ops.sum(ops.mul(logp, target), dim))
            return _reduce(per, reduction).share

        if reduction == "none":
            return SharedTensor(value(), x.session)
        return LazyValue(value, x.session, _reduce_shape(batch_shape, reduction))

    @staticmethod
    def backward(ctx: Context, g: Grad) -> tuple[Grad | None, Grad | None, None]:
        """``(softmax - target) * g / n`` from the saved softmax and target.

        ``n`` is the number of batch elements for 'mean' (else 1). The difference is local; the
        scaling costs as in :class:`MSELoss` (:func:`_scale_grad`).

        Raises:
            NotImplementedError: the target needs a gradient.
        """
        p, target = ctx.saved_tensors
        reduction, dim = ctx.conf
        d = ops.sub(p, target)
        n = d.numel() // d.shape[dim] if reduction == "mean" else 1
        if reduction == "none" and dim == 1:
            g = g.unsqueeze(1)
        gd = _scale_grad(g, d, 1.0 / n, "none" if reduction == "none" else reduction)
        nx, nt, _ = ctx.needs_input_grad
        gt = None
        if nt:
            raise NotImplementedError("cross_entropy: no gradient w.r.t. the target")
        return (gd if nx else None, gt, None)

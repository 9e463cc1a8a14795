"""Encoding-aware comparison kernels on SharedTensor: comparisons, ReLU, max, pooling.

Comparison results are shared 0/1 in the session's fixed point (ring value
``2^f`` for 1): the protocols of :mod:`smpc.protocols.compare` return unscaled
ring bits and this layer multiplies them by ``2^f`` locally. Products of such a
ring bit with a shared value need no truncation, so ReLU, abs, max and the
sign-dependent selections cost one comparison and no extra round.

Exactness: ``x < y`` is exact for all encoded inputs with
``|x - y| < 2^(63 - f)`` (``2^47`` for ``f = 16``), which covers every pair of
values accepted by :meth:`FixedPoint.encode` and their sums far beyond it.

``max(x, dim)`` returns a :class:`MaxResult` ``(values, indices)`` like torch,
but ``indices`` is a *one-hot* SharedTensor of ``x``'s shape (1 at the first
maximum along ``dim``), since an index cannot be revealed; ``max(x)`` returns
the values only.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..protocols import beaver, compare, maximum
from ..session import Session
from ..sharing import add_public, lead
from ..tensor import SharedTensor, tag_results
from . import arith as ops

__all__ = [
    "MaxResult",
    "lt",
    "le",
    "gt",
    "ge",
    "eq",
    "ne",
    "relu",
    "relu_with_bit",
    "sign",
    "abs",
    "where",
    "max",
    "min",
    "argmax",
    "argmin",
    "max_pool2d",
    "max_pool2d_with_onehot",
]


class MaxResult(NamedTuple):
    """``(values, indices)`` of :func:`max`/:func:`min` over a dim; ``indices`` is one-hot."""

    values: SharedTensor
    indices: SharedTensor


# ----------------------------------------------------------------- helpers
def _sess(*xs: Any) -> Session:
    for x in xs:
        if isinstance(x, SharedTensor):
            return ops._session(*xs)
    raise TypeError("at least one operand must be a SharedTensor")


def _check_shared(x: Any, name: str) -> SharedTensor:
    if not isinstance(x, SharedTensor):
        raise TypeError(f"`{name}` must be a SharedTensor; got {type(x).__name__}")
    return x


def _scale(sess: Session, bit: torch.Tensor) -> SharedTensor:
    """Ring 0/1 bit -> fixed-point 0/1 (local)."""
    return SharedTensor(bit * sess.encoding.scale, sess)


def _one_minus(sess: Session, bit: torch.Tensor) -> torch.Tensor:
    return add_public(sess.comm, -bit, 1)


def _ltz_many(sess: Session, shares: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Ring bits ``[s < 0]`` for several same-shaped shares in one batched comparison."""
    ld = lead(sess.comm)
    stacked = torch.stack(list(shares), dim=ld)
    z = compare.ltz(sess.comm, sess.dealer, stacked)
    return list(z.unbind(ld))


def _diff(x: Any, y: Any) -> SharedTensor:
    if not isinstance(x, SharedTensor) and not isinstance(y, SharedTensor):
        raise TypeError("at least one operand must be a SharedTensor")
    return ops.sub(x, y)


# ----------------------------------------------------------------- comparison
def lt(x: SharedTensor | Any, y: SharedTensor | Any) -> SharedTensor:
    """``x < y`` elementwise as shared fixed-point 0/1 (either side may be public).

    Cost: one :func:`smpc.protocols.compare.ltz` (4 rounds, 19 bytes per element per
    party for 2 parties). Exact while ``|x - y| < 2^(63-f)``.
    """
    d = _diff(x, y)
    sess = d.session
    return _scale(sess, compare.ltz(sess.comm, sess.dealer, d.share))


def gt(x: SharedTensor | Any, y: SharedTensor | Any) -> SharedTensor:
    """``x > y`` as shared fixed-point 0/1. Cost: as :func:`lt`."""
    return lt(y, x)


def le(x: SharedTensor | Any, y: SharedTensor | Any) -> SharedTensor:
    """``x <= y`` = ``1 - (y < x)``. Cost: as :func:`lt`."""
    d = _diff(y, x)
    sess = d.session
    return _scale(sess, _one_minus(sess, compare.ltz(sess.comm, sess.dealer, d.share)))


def ge(x: SharedTensor | Any, y: SharedTensor | Any) -> SharedTensor:
    """``x >= y`` = ``1 - (x < y)``. Cost: as :func:`lt`."""
    return le(y, x)


def ne(x: SharedTensor | Any, y: SharedTensor | Any) -> SharedTensor:
    """``x != y`` = ``(x < y) + (y < x)``: two comparisons batched (4 rounds, 2x bytes)."""
    d = _diff(x, y)
    sess = d.session
    a, b = _ltz_many(sess, [d.share, -d.share])
    return _scale(sess, a + b)


def eq(x: SharedTensor | Any, y: SharedTensor | Any) -> SharedTensor:
    """``x == y`` = ``1 - (x != y)``. Cost: as :func:`ne`."""
    d = _diff(x, y)
    sess = d.session
    a, b = _ltz_many(sess, [d.share, -d.share])
    return _scale(sess, _one_minus(sess, a + b))


# ----------------------------------------------------------------- built on comparison
def relu_with_bit(x: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
    """``(max(x, 0), [x >= 0])``; the bit is shared fixed-point 0/1 (for ReLU's gradient).

    The product ``x * bit`` is fused into the comparison (no truncation).
    Cost: 4 rounds, 27 bytes per element per party (2 parties).
    """
    x = _check_shared(x, "x")
    sess = _sess(x)
    value, bit = compare.relu(sess.comm, sess.dealer, x.share)
    return SharedTensor(value, sess), _scale(sess, bit)


def relu(x: SharedTensor) -> SharedTensor:
    """``max(x, 0)``. Cost: as :func:`relu_with_bit`."""
    return relu_with_bit(x)[0]


def sign(x: SharedTensor) -> SharedTensor:
    """``sign(x)`` in {-1, 0, 1} like ``torch.sign``: ``(x > 0) - (x < 0)``, batched."""
    x = _check_shared(x, "x")
    sess = _sess(x)
    neg, pos = _ltz_many(sess, [x.share, -x.share])
    return _scale(sess, pos - neg)


def abs(x: SharedTensor) -> SharedTensor:
    """``|x| = x - 2 x [x < 0]`` with the product fused into the comparison (4 rounds)."""
    x = _check_shared(x, "x")
    sess = _sess(x)
    _, xz = compare.ltz_mul(sess.comm, sess.dealer, x.share)
    assert xz is not None
    return SharedTensor(x.share - 2 * xz, sess)


def where(cond: SharedTensor, a: Any, b: Any) -> SharedTensor:
    """Select ``a`` where ``cond`` (shared fixed-point 0/1) is 1, else ``b``: ``b + cond (a - b)``.

    Cost: one product (Beaver + truncation: 2 rounds) when ``a`` or ``b`` is shared,
    a public product (1 round) otherwise.
    """
    cond = _check_shared(cond, "cond")
    if isinstance(a, SharedTensor) or isinstance(b, SharedTensor):
        return ops.add(b, ops.mul(cond, ops.sub(a, b)))
    diff = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    return ops.add(ops.mul(cond, diff), torch.as_tensor(b, dtype=torch.float64))


def _reduce_last(
    x: SharedTensor, dim: int | None, keepdim: bool, onehot: bool, need_values: bool = True
) -> tuple[SharedTensor | None, SharedTensor | None]:
    sess = _sess(x)
    ld = lead(sess.comm)
    if x.numel() == 0 and (dim is None or x.dim() == 0 or x.shape[x._dim(dim) - ld] == 0):
        raise ShapeError(
            f"max/min/argmax over no elements (shape {tuple(x.shape)}, dim={dim!r}) has no "
            "value (torch raises too)"
        )
    if x.dim() == 0 and dim is not None:  # torch: a 0-d tensor reduces over dim 0 to itself
        x._dim(dim)
        flat1 = SharedTensor(x.share.reshape(*x.share.shape[:ld], 1), sess)
        v1, oh1 = _reduce_last(flat1, 0, False, onehot, need_values)
        return v1, (None if oh1 is None else SharedTensor(oh1.share.reshape(x.share.shape), sess))
    if x.numel() == 0:  # the reduced dim is not empty: an empty result, no communication
        d0 = x._dim(dim if dim is not None else 0)
        vals0 = x.share.narrow(d0, 0, 1)
        vals0 = vals0 if keepdim else vals0.squeeze(d0)
        ohs0 = SharedTensor(x.share.clone(), sess) if onehot else None
        return (SharedTensor(vals0.clone(), sess) if need_values else None), ohs0
    scale = sess.encoding.scale if onehot else None
    if dim is None:
        flat = x.share.reshape(*x.share.shape[:ld], -1)
        vals, oh = maximum.max_last(
            sess.comm, sess.dealer, flat, onehot_scale=scale, values=need_values
        )
        if keepdim and vals is not None:
            vals = vals.reshape(*vals.shape, *([1] * x.dim()))
        ohs = None if oh is None else SharedTensor(oh.reshape(x.share.shape), sess)
        return (None if vals is None else SharedTensor(vals, sess)), ohs
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"`dim` must be an int or None; got {type(dim).__name__}")
    d = x._dim(dim)
    moved = x.share.movedim(d, -1)
    vals, oh = maximum.max_last(
        sess.comm, sess.dealer, moved, onehot_scale=scale, values=need_values
    )
    if keepdim and vals is not None:
        vals = vals.unsqueeze(d)
    ohs = None if oh is None else SharedTensor(oh.movedim(-1, d), sess)
    return (None if vals is None else SharedTensor(vals, sess)), ohs


def max(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Maximum over all elements (``dim=None``: values only) or over ``dim``.

    With ``dim``: a :class:`MaxResult` ``(values, indices)`` where ``indices`` is the
    one-hot argmax (shape of ``x``; ties -> lowest index).
    Cost: one comparison and one round for 3 <= k <= 32 (all pairs, then a table
    lookup); otherwise ``ceil(log2 k)`` levels of 4 rounds (5 with the one-hot after the first).
    """
    x = _check_shared(x, "x")
    if dim is None:
        return _reduce_last(x, None, keepdim, onehot=False)[0]
    vals, oh = _reduce_last(x, dim, keepdim, onehot=True)
    assert vals is not None and oh is not None
    return MaxResult(vals, oh)


def min(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> Any:
    """Minimum: ``-max(-x)`` (same return conventions and cost as :func:`max`)."""
    x = _check_shared(x, "x")
    res = max(ops.neg(x), dim, keepdim)
    if dim is None:
        return ops.neg(res)
    return MaxResult(ops.neg(res.values), res.indices)


def argmax(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    """One-hot argmax (shared fixed-point 0/1, shape of ``x``; ties -> lowest index).

    ``dim=None`` marks one element among all of them. ``keepdim`` is accepted for
    torch compatibility; the one-hot always has ``x``'s shape.
    """
    x = _check_shared(x, "x")
    _, oh = _reduce_last(x, dim, keepdim, onehot=True, need_values=False)
    assert oh is not None
    return oh


def argmin(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    """One-hot argmin: :func:`argmax` of ``-x``."""
    x = _check_shared(x, "x")
    return argmax(ops.neg(x), dim, keepdim)


def _pool_windows(
    x: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: int | Sequence[int],
) -> tuple[torch.Tensor, bool, tuple[int, int], tuple[int, int], tuple[int, int]]:
    if x.dim() not in (3, 4):
        raise ShapeError(f"max_pool2d: expected input (N,C,H,W) or (C,H,W); got {tuple(x.shape)}")
    sess = x.session
    kh, kw = ops.pair_arg(kernel_size, "kernel_size", 1)
    sh, sw = ops.pair_arg(stride, "stride", 1) if stride is not None else (kh, kw)
    ph, pw = ops.pair_arg(padding, "padding")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(
            f"max_pool2d: kernel_size and stride must be >= 1 and padding >= 0; got "
            f"kernel_size={(kh, kw)}, stride={(sh, sw)}, padding={(ph, pw)}"
        )
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"max_pool2d: padding must be at most half the kernel size; got padding={(ph, pw)} "
            f"for kernel_size={(kh, kw)}"
        )
    squeeze = x.dim() == 3
    s = x.share.unsqueeze(lead(sess.comm)) if squeeze else x.share
    h, w = s.shape[-2] + 2 * ph, s.shape[-1] + 2 * pw
    if h < kh or w < kw:
        raise ShapeError(f"max_pool2d: kernel {(kh, kw)} is larger than the padded input {(h, w)}")
    if ph or pw:
        s = F.pad(s, (pw, pw, ph, ph))
        # Padded cells hold a public value below every encodable input (like -inf).
        fill = torch.zeros(h, w, dtype=torch.int64)
        low = -(1 << 52)
        fill[:ph, :] = low
        fill[h - ph :, :] = low
        fill[:, :pw] = low
        fill[:, w - pw :] = low
        s = add_public(sess.comm, s, fill)
    win = s.unfold(-2, kh, sh).unfold(-2, kw, sw)  # (..., N, C, oh, ow, kh, kw)
    win = win.reshape(*win.shape[:-2], kh * kw)
    return win, squeeze, (kh, kw), (sh, sw), (ph, pw)


def max_pool2d(
    input: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> SharedTensor:
    """Max pooling like ``torch.nn.functional.max_pool2d`` (dilation 1, floor mode).

    Cost: one comparison and one round for windows of 3-32 cells (5 rounds for 2x2;
    all pairs, then a table lookup), else ``ceil(log2(kh*kw))`` levels of 4 rounds.
    """
    input = _check_shared(input, "input")
    sess = _sess(input)
    win, squeeze, *_ = _pool_windows(input, kernel_size, stride, padding)
    vals, _ = maximum.max_last(sess.comm, sess.dealer, win)
    assert vals is not None
    if squeeze:
        vals = vals.squeeze(lead(sess.comm))
    return SharedTensor(vals, sess)


def max_pool2d_with_onehot(
    input: SharedTensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> tuple[SharedTensor, SharedTensor]:
    """Max pooling plus, per output cell, the one-hot of its argmax in the window.

    Returns ``(out, onehot)`` with ``onehot`` of shape ``(*out.shape, kh*kw)``
    (fixed-point 0/1, row-major window order) for the backward pass: the input
    gradient is ``fold(grad_out[..., None] * onehot)`` (a scatter by public
    window positions, local once multiplied).
    Cost: as :func:`max_pool2d` plus one round per level after the first.
    """
    input = _check_shared(input, "input")
    sess = _sess(input)
    win, squeeze, *_ = _pool_windows(input, kernel_size, stride, padding)
    vals, oh = maximum.max_last(sess.comm, sess.dealer, win, onehot_scale=sess.encoding.scale)
    assert vals is not None and oh is not None
    if squeeze:
        vals = vals.squeeze(lead(sess.comm))
        oh = oh.squeeze(lead(sess.comm))
    return SharedTensor(vals, sess), SharedTensor(oh, sess)


# ----------------------------------------------------------------- kernels for backward passes
# (not in __all__: their results are gradients, which take their dtype from the
# tape, so they are not wrapped by tag_results below)
class RingBit:
    """Shares of an unscaled ring 0/1 (a comparison's bit before fixed-point scaling).

    Kept by a forward pass for its backward: a product with it needs no
    truncation (:func:`mul_ring_bit`). ``repr`` shows the shape only.
    """

    __slots__ = ("share", "session")

    def __init__(self, share: torch.Tensor, session: Session) -> None:
        self.share = share
        self.session = session

    def __repr__(self) -> str:
        ld = lead(self.session.comm)
        return f"RingBit(shape={tuple(self.share.shape[ld:])})"


def relu_with_ring_bit(x: SharedTensor) -> tuple[SharedTensor, RingBit]:
    """``(max(x, 0), [x >= 0])`` with the bit as an unscaled ring 0/1, for ReLU's gradient.

    :func:`smpc.protocols.compare.relu` (the product ``x * bit`` fused into the
    comparison, no truncation). Cost: as :func:`relu_with_bit` (4 rounds).
    """
    sess = x.session
    value, bit = compare.relu(sess.comm, sess.dealer, x.share)
    return SharedTensor(value, sess), RingBit(bit, sess)


def mul_ring_bit(g: SharedTensor | torch.Tensor, bit: RingBit) -> SharedTensor:
    """``g * bit`` for a ring bit: no truncation needed.

    Cost: for a shared ``g`` one Beaver product (1 round); for a public ``g``, local
    (it is encoded and multiplies the bit's shares).
    """
    sess = bit.session
    if isinstance(g, SharedTensor):
        gs = g.share
        if tuple(gs.shape) != tuple(bit.share.shape):
            gs = gs.expand(*bit.share.shape).contiguous()
        return SharedTensor(beaver.mul(sess.comm, sess.dealer, gs, bit.share), sess)
    enc = sess.encoding.encode(g.detach().to(torch.float64), name="grad")
    return SharedTensor(bit.share * enc, sess)


def max_pool2d_backward(
    grad: SharedTensor | torch.Tensor,
    onehot: SharedTensor,
    input_shape: Sequence[int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> SharedTensor:
    """The input gradient of :func:`max_pool2d_with_onehot` from its one-hot.

    ``grad[..., None] * onehot`` (one product: Beaver and a truncation for a
    shared ``grad``, a truncation for a public one), then each window's entries
    added back onto its input positions (local; overlapping windows add up) and
    the padding cropped.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    gw = ops.mul(onehot, grad.unsqueeze(-1))
    sess = gw.session
    s = gw.share
    ld = lead(sess.comm)
    ho, wo = s.shape[-3], s.shape[-2]
    s = s.reshape(*s.shape[:-1], kh, kw)  # (..., C, Ho, Wo, kh, kw)
    h, w = int(input_shape[-2]), int(input_shape[-1])
    out = torch.zeros((*s.shape[:ld], *input_shape[:-2], h + 2 * ph, w + 2 * pw), dtype=s.dtype)
    for i in range(kh):
        for j in range(kw):
            out[..., i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += s[..., i, j]
    if ph or pw:
        out = out[..., ph : ph + h, pw : pw + w].contiguous()
    return SharedTensor(out, sess)


_ = builtins  # builtins.max/min stay reachable despite the torch-named functions here


# Elementwise ops run in bounded memory (chunks; see smpc.ops.chunked), then
# every public op tags its result with the plaintext dtype reveal() returns.
_ELEMENTWISE = (
    "lt", "le", "gt", "ge", "eq", "ne", "relu", "relu_with_bit", "sign", "abs", "where",
)  # fmt: skip
for _name in _ELEMENTWISE:
    globals()[_name] = ops.chunked(globals()[_name])
del _name
tag_results(globals(), __all__)

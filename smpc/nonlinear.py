"""Encoding-aware comparison and non-linear kernels on SharedTensor (tensor layer).

Comparison results are shared 0/1 in the session's fixed point (ring value
``2^f`` for 1): the protocols of :mod:`smpc.protocols.compare` return unscaled
ring bits and this layer multiplies them by ``2^f`` locally. Products of such a
ring bit with a shared value need no truncation, so ReLU, abs, max and the
sign-dependent selections cost one comparison and no extra round.

Exactness: ``x < y`` is exact for all encoded inputs with
``|x - y| < 2^(63 - f)`` (``2^47`` for ``f = 16``), which covers every pair of
values accepted by :meth:`FixedPoint.encode` and their sums far beyond it.

Approximations (``exp``, ``reciprocal``, ``log``, ``rsqrt``/``sqrt``,
``sigmoid``/``tanh``, ``softmax``/``log_softmax``) are iterative, with
iteration counts as keyword arguments; their input ranges and measured errors
are in ``docs/approximations.md`` and checked by ``tests/smpc/test_nonlinear.py``.

``max(x, dim)`` returns a :class:`MaxResult` ``(values, indices)`` like torch,
but ``indices`` is a *one-hot* SharedTensor of ``x``'s shape (1 at the first
maximum along ``dim``), since an index cannot be revealed; ``max(x)`` returns
the values only.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from . import ops
from .errors import EncodingOverflowError, ShapeError
from .protocols import beaver, compare
from .protocols import nonlinear as ring_nl
from .session import Session
from .sharing import add_public, lead
from .tensor import SharedTensor, tag_results

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
    "reciprocal",
    "div",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "rsqrt_wide",
    "rsqrt_scaled_share",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
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
        vals, oh = ring_nl.max_last(
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
    vals, oh = ring_nl.max_last(
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
    Cost: ``ceil(log2 k)`` levels of 4 rounds (5 with the one-hot after the first).
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

    Cost: ``ceil(log2(kh*kw))`` levels of 4 rounds (8 rounds for 2x2).
    """
    input = _check_shared(input, "input")
    sess = _sess(input)
    win, squeeze, *_ = _pool_windows(input, kernel_size, stride, padding)
    vals, _ = ring_nl.max_last(sess.comm, sess.dealer, win)
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
    vals, oh = ring_nl.max_last(sess.comm, sess.dealer, win, onehot_scale=sess.encoding.scale)
    assert vals is not None and oh is not None
    if squeeze:
        vals = vals.squeeze(lead(sess.comm))
        oh = oh.squeeze(lead(sess.comm))
    return SharedTensor(vals, sess), SharedTensor(oh, sess)


# ----------------------------------------------------------------- approximations
def _check_iters(n: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {n!r}")


def _mul_many(pairs: Sequence[tuple[SharedTensor, SharedTensor]]) -> list[SharedTensor]:
    """Several same-shaped products in one batched Beaver opening and truncation."""
    if len(pairs) == 1:
        return [ops.mul(*pairs[0])]
    a = ops.stack([p[0] for p in pairs])
    b = ops.stack([p[1] for p in pairs])
    out = ops.mul(a, b)
    return [out[i] for i in range(len(pairs))]


def _poly_public(terms: Sequence[tuple[SharedTensor, float]], constant: float) -> SharedTensor:
    """``constant + sum c_k t_k`` with one truncation for all public coefficients."""
    sess = terms[0][0].session
    acc: torch.Tensor | None = None
    for t, c in terms:
        part = t.share * sess.encoding.encode(
            torch.tensor(c, dtype=torch.float64), name="coefficient"
        )
        acc = part if acc is None else acc + part
    assert acc is not None
    y = SharedTensor(ops.rescale(sess, acc), sess)
    return ops.add(y, constant)


EXP_LOW = -16.0
LOG_GUESS = 20.0  # the largest constant of log's initial guess


def _check_constants(x: SharedTensor, op: str, need: float, why: str) -> None:
    """Raise if the session's fixed point cannot hold ``op``'s constants (up to ``need``).

    The approximations add and multiply public constants (exp clamps its input
    at -16, log's initial guess uses 20); a large ``frac_bits`` leaves a range
    ``|v| <= 2^(31 - f)`` too small for them.
    """
    enc = x.session.encoding
    if enc.max_value < need:
        top = 31 - math.ceil(math.log2(need))
        raise EncodingOverflowError(
            f"{op} needs the constant {need:g} ({why}), beyond the fixed-point range "
            f"|v| <= {enc.max_value:g} of frac_bits={enc.frac_bits}; use frac_bits <= {top}"
        )


def _check_exp_constants(x: SharedTensor, op: str) -> None:
    _check_constants(x, op, -EXP_LOW, f"the exponential clamps its input at {EXP_LOW:g}")


def exp(
    x: SharedTensor, *, iterations: int = 5, terms: int = 5, clamp: bool = True
) -> SharedTensor:
    """``e^x`` by range reduction: ``e^x = (e^(x/2^n))^(2^n)``, ``n = iterations``.

    ``e^t`` for ``t = x / 2^n`` is its Taylor polynomial of degree ``terms``, then
    ``n`` squarings. Inputs below -16 are clamped to -16 first (one comparison;
    ``e^-16`` is below one ulp for ``f = 16``), unless ``clamp=False``, which is valid
    only for ``x >= -2^(n-1)``. Range: ``x <= 10`` (the result must stay below the
    encoding limit 2^(31-f)). Accuracy: ``docs/approximations.md``.
    Cost: 1 (+7 clamp) + 2 ceil(log2(terms+1)) + 1 + 2n rounds (18 + 7 by default).
    """
    x = _check_shared(x, "x")
    if clamp:
        _check_exp_constants(x, "exp")
    _check_iters(iterations, "iterations")
    _check_iters(terms, "terms")
    if clamp:
        x = ops.add(relu(ops.sub(x, EXP_LOW)), EXP_LOW)
    t = ops.mul(x, 1.0 / (1 << iterations))
    powers: dict[int, SharedTensor] = {1: t}
    while len(powers) < terms:
        have = sorted(powers)
        top = have[-1]
        pairs = []
        wanted = []
        for k in range(top + 1, builtins.min(2 * top, terms) + 1):
            pairs.append((powers[top], powers[k - top]))
            wanted.append(k)
        for k, v in zip(wanted, _mul_many(pairs), strict=True):
            powers[k] = v
    fact = 1.0
    coeffs = []
    for k in range(1, terms + 1):
        fact *= k
        coeffs.append((powers[k], 1.0 / fact))
    y = _poly_public(coeffs, 1.0)
    for _ in range(iterations):
        y = ops.square(y)
    return y


def _newton_reciprocal(x: SharedTensor, y: SharedTensor, iterations: int) -> SharedTensor:
    for _ in range(iterations):
        # y <- y (2 - x y)
        y = ops.mul(y, ops.sub(2.0, ops.mul(x, y)))
    return y


def _linear_guess(lo: float, hi: float) -> tuple[float, float, float]:
    """Minimax line ``y0 = a - b x`` for ``1/x`` on ``[lo, hi]``: ``(a, b, max |1 - x y0|)``.

    With ``u = x / lo`` in ``[1, k]``, ``k = hi / lo``: ``1 - u (c - d u)``
    equioscillates at ``u = 1``, ``(k + 1) / 2`` and ``k`` for ``d = 8 / (k^2 + 6k + 1)``,
    ``c = d (k + 1)``; the error is ``1 - d k``.
    """
    k = hi / lo
    d = 8.0 / (k * k + 6.0 * k + 1.0)
    return d * (k + 1.0) / lo, d / (lo * lo), 1.0 - d * k


def _newton_steps(error: float, frac_bits: int) -> int:
    """Newton steps that bring a relative error below ``2^-(f+2)`` (it squares each step)."""
    target = 2.0 ** -(frac_bits + 2)
    steps = 0
    while error > target and steps < 64:
        error *= error
        steps += 1
    return steps


def reciprocal(
    x: SharedTensor,
    *,
    iterations: int | None = None,
    positive: bool = False,
    initial: SharedTensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> SharedTensor:
    """``1 / x`` by Newton-Raphson ``y <- y (2 - x y)``.

    Initial guess ``y0 = 3 e^(1/2 - |x|) + 0.003`` (from the CrypTen paper, Knott et
    al., NeurIPS 2021), valid for ``|x|`` in [0.05, 500]; ``positive=True`` skips
    the sign handling (one comparison) when ``x > 0`` is known. When the caller
    knows ``lo <= x <= hi`` (``bounds``, ``0 < lo < hi``), the start is instead the
    minimax line ``a - b x`` on that interval (no exponential) and, unless
    ``iterations`` is given, the Newton steps are enough for the encoding's
    precision plus one (6 for a softmax denominator in [1, 10]); valid for
    ``hi <= 2^(f/2 + 2)`` (1024 at ``f = 16``), where ``1/hi`` keeps about 8
    significant bits.
    Cost: exp (18 rounds) + 4 rounds per iteration (10 by default; + 7 for the
    sign); with ``bounds``: 2 + 4 rounds per iteration.
    """
    x = _check_shared(x, "x")
    if bounds is None:
        _check_exp_constants(x, "reciprocal")
    sess = _sess(x)
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        limit = 2.0 ** (sess.encoding.frac_bits / 2 + 2)
        if not 0 < lo < hi <= limit:
            raise ValueError(
                f"`bounds` must satisfy 0 < lo < hi <= {limit:g} (2^(f/2+2), where 1/hi keeps "
                f"8 significant bits); got {bounds}"
            )
        a_coef, b_coef, err = _linear_guess(lo, hi)
        # The slope can be far below one ulp's relative precision (b ~ 1 / (lo hi)):
        # multiply by it in two public steps, b 2^s (in [1, 2)) then the exact 2^-s.
        shift = builtins.min(
            sess.encoding.frac_bits, builtins.max(0, -math.floor(math.log2(b_coef)))
        )
        steps = (
            _newton_steps(err, sess.encoding.frac_bits) + 1 if iterations is None else iterations
        )
        _check_iters(steps, "iterations")
        if initial is None:
            slope = ops.mul(ops.mul(x, -b_coef * 2.0**shift), 2.0**-shift)
            y0 = ops.add(slope, a_coef)
        else:
            y0 = initial
        return _newton_reciprocal(x, y0, steps)
    steps = 10 if iterations is None else iterations
    _check_iters(steps, "iterations")
    if positive:
        a = x
        z = None
    else:
        z, xz = compare.ltz_mul(sess.comm, sess.dealer, x.share)
        assert xz is not None
        a = SharedTensor(x.share - 2 * xz, sess)
    y0 = initial if initial is not None else ops.add(ops.mul(exp(ops.sub(0.5, a)), 3.0), 0.003)
    y = _newton_reciprocal(a, y0, steps)
    if z is None:
        return y
    # 1/x = (1 - 2 [x < 0]) / |x|: a ring bit times a share, no truncation.
    yz = beaver.mul(sess.comm, sess.dealer, z, y.share)
    return SharedTensor(y.share - 2 * yz, sess)


def div(x: SharedTensor, y: Any, *, iterations: int = 10) -> SharedTensor:
    """``x / y``: by a public divisor, one public product; by a shared one, ``x * (1/y)``."""
    if isinstance(y, SharedTensor):
        _check_exp_constants(y, "div (by a shared divisor)")
        return ops.mul(x, reciprocal(y, iterations=iterations))
    t = torch.as_tensor(y, dtype=torch.float64)
    if bool((t == 0).any()):
        raise ZeroDivisionError("div: public divisor contains zero")
    return ops.mul(x, 1.0 / t)


def log(x: SharedTensor, *, iterations: int = 3, order: int = 8) -> SharedTensor:
    """Natural log for ``x`` in [0.1, 200] by Householder steps on ``e^y = x``.

    With ``h = 1 - x e^(-y)``, the exact correction is ``log(1 - h)``; each step
    applies its series to ``order`` terms: ``y <- y - sum_k h^k / k``.
    Initial guess ``y0 = x/120 - 20 e^(-2x - 1) + 3`` (CrypTen paper).
    Cost: per iteration one exp (18 rounds) + one product + ``order`` powers.
    """
    x = _check_shared(x, "x")
    _check_constants(x, "log", LOG_GUESS, "its initial guess x/120 - 20 e^(-2x-1) + 3")
    _check_iters(iterations, "iterations")
    _check_iters(order, "order")
    y = ops.add(
        ops.sub(ops.mul(x, 1.0 / 120), ops.mul(exp(ops.sub(ops.mul(x, -2.0), 1.0)), 20.0)), 3.0
    )
    for _ in range(iterations):
        h = ops.sub(1.0, ops.mul(x, exp(ops.neg(y))))
        acc = h
        power = h
        for k in range(2, order + 1):
            power = ops.mul(power, h)
            acc = ops.add(acc, ops.mul(power, 1.0 / k))
        y = ops.sub(y, acc)
    return y


def rsqrt(x: SharedTensor, *, iterations: int = 5) -> SharedTensor:
    """``1 / sqrt(x)`` for ``x`` in [0.1, 100] by Newton ``y <- y (3 - x y^2) / 2``.

    Initial guess ``y0 = 2.2 e^(-(x/2 + 0.2)) + 0.2 - x/1024`` (CrypTen paper).
    Cost: exp (18 rounds) + 6 rounds per iteration.
    """
    x = _check_shared(x, "x")
    _check_exp_constants(x, "rsqrt")
    _check_iters(iterations, "iterations")
    y = ops.add(
        ops.sub(ops.mul(exp(ops.neg(ops.add(ops.mul(x, 0.5), 0.2))), 2.2), ops.mul(x, 1.0 / 1024)),
        0.2,
    )
    for _ in range(iterations):
        y = ops.mul(y, ops.sub(1.5, ops.mul(ops.mul(x, 0.5), ops.square(y))))
    return y


# rsqrt is accurate on [2^-2, 2^6] (inside its documented [0.1, 100]); a copy of x
# scaled by 2^(2k) brings [2^(-2-2k), 2^(6-2k)] there, and 1/sqrt(x) = 2^k rsqrt(x 2^(2k)).
_RSQRT_WIDE_SEGMENTS = (-8, 0, 8, 16)  # 2k: x in [2^-18, 2^14]
_RSQRT_LO, _RSQRT_HI = -2, 6  # log2 of the range each copy serves


def rsqrt_scaled_share(
    sess: Session, x: torch.Tensor, scale_bits: int, segments: Sequence[int], out_shift: int
) -> torch.Tensor:
    """Shares of ``2^out_shift / sqrt(x)`` (scale ``2^f``) from shares of ``x`` (``2^scale_bits``).

    Protocol (range selection over :func:`rsqrt`):
        1. For each even ``2k`` in ``segments`` (increasing), a copy ``x 2^(2k)``
           at scale ``2^f``: a truncation by ``scale_bits - f - 2k`` bits (all
           copies in one round) or an exact left shift.
        2. :func:`rsqrt` of all copies at once (one batch: the rounds of one).
        3. ``l_j = [x < 2^(-2-2k_j)]`` for every copy, one batch of comparisons on
           ``x`` itself (exact), and ``r = c_0 - sum_j l_j (c_j - c_(j+1))`` with
           ``c_j = 2^(k_j + out_shift) rsqrt(x 2^(2k_j))`` (a left shift; needs
           ``k_j + out_shift >= 0``) and ``c_J = 0``: one product of the ring bits,
           exact for any values of the copies out of their range.

    Valid for ``2^(-2 - max 2k) <= x < 2^(6 - min 2k)``, each copy then inside
    ``[2^-2, 2^6]`` where rsqrt's relative error is below ``2.5e-4``; 0 below
    that range (a negative ``x`` included), so the result is never larger than
    the largest in range. Cost: one truncation round (if a copy needs one),
    rsqrt (48 rounds) on ``len(segments)`` times the elements, one comparison (7
    rounds) on as many, and one product round.
    """
    comm, dealer = sess.comm, sess.dealer
    f = sess.encoding.frac_bits
    shifts = [scale_bits - f - k2 for k2 in segments]
    done = iter(ops.rescale_many(sess, [(x, b) for b in shifts if b > 0]))
    copies = [next(done) if b > 0 else x << -b for b in shifts]
    y = rsqrt(SharedTensor(torch.stack(copies, dim=-2), sess)).share
    cands = [y[..., j, :] << (k2 // 2 + out_shift) for j, k2 in enumerate(segments)]
    cands.append(torch.zeros_like(cands[0]))
    # Compare x shifted left so that the smallest threshold is a whole unit.
    lift = builtins.max(0, -_RSQRT_LO + builtins.max(segments) - scale_bits)
    base = x << lift
    thresholds = [1 << (scale_bits + lift + _RSQRT_LO - k2) for k2 in segments]
    below = torch.stack([add_public(comm, base, -t) for t in thresholds], dim=-2)
    bits = compare.ltz(comm, dealer, below)
    diffs = torch.stack([cands[j] - cands[j + 1] for j in range(len(segments))], dim=-2)
    return cands[0] - beaver.mul(comm, dealer, bits, diffs).sum(dim=-2)


def rsqrt_wide(x: SharedTensor) -> SharedTensor:
    """``1 / sqrt(x)`` for ``x`` in ``[2^-18, 2^14]``; 0 below (negative ``x`` included).

    :func:`rsqrt` on four copies of ``x`` scaled by ``2^-8, 1, 2^8, 2^16``, the
    copy in range chosen by comparisons (:func:`rsqrt_scaled_share`). Error at
    most ``5e-4 / sqrt(x) + 2^-(f-1)`` for ``x`` in ``[2^-6, 2^14]`` (at
    ``f = 16``; below ``2^-6`` the encoding of ``x`` itself dominates: 4e-3
    relative at ``2^-10``). Cost (2 parties): 75 rounds (a truncation, rsqrt,
    a comparison, a product and a truncation), 2752 bytes per element to each
    other party.
    """
    x = _check_shared(x, "x")
    sess = _sess(x)
    flat = x.share.reshape(*x.share.shape[: lead(sess.comm)], -1)
    shift = 4  # out at scale 2^(f + 4): every 2^k is then a left shift; one truncation back
    r = rsqrt_scaled_share(sess, flat, sess.encoding.frac_bits, _RSQRT_WIDE_SEGMENTS, shift)
    (out,) = ops.rescale_many(sess, [(r, shift)])
    return SharedTensor(out.reshape(x.share.shape), sess)


def sqrt(x: SharedTensor, *, iterations: int = 5) -> SharedTensor:
    """``sqrt(x) = x * rsqrt(x)`` for ``x`` in [0.1, 100]."""
    x = _check_shared(x, "x")
    _check_exp_constants(x, "sqrt")
    return ops.mul(x, rsqrt(x, iterations=iterations))


def sigmoid(
    x: SharedTensor, *, iterations: int = 5, reciprocal_iterations: int = 4
) -> SharedTensor:
    """Logistic ``1 / (1 + e^(-x))`` for ``|x| < 2^iterations`` (exp's range).

    Computed on ``-|x|`` so the exponential stays in (0, 1]: ``p = 1 / (1 + e^(-|x|))``
    with Newton from ``y0 = 0.75`` (the denominator lies in (1, 2]), then
    ``sigmoid(x) = p`` for ``x >= 0`` and ``1 - p`` otherwise.
    Cost: one comparison with fused ``|x|`` (7) + exp (2 + 2n) + 4 per Newton step + 1.
    """
    x = _check_shared(x, "x")
    _check_exp_constants(x, "sigmoid")
    sess = _sess(x)
    z, xz = compare.ltz_mul(sess.comm, sess.dealer, x.share)
    assert xz is not None
    absx = SharedTensor(x.share - 2 * xz, sess)
    den = ops.add(exp(ops.neg(absx), iterations=iterations), 1.0)
    y0 = ops.add(ops.mul(den, 0.0), 0.75)
    p = _newton_reciprocal(den, y0, reciprocal_iterations)
    # sigmoid = p + z (1 - 2p): ring bit times share, exact.
    one_minus_2p = ops.sub(1.0, ops.mul(p, 2))
    sel = beaver.mul(sess.comm, sess.dealer, z, one_minus_2p.share)
    return SharedTensor(p.share + sel, sess)


def tanh(x: SharedTensor, *, iterations: int = 5, reciprocal_iterations: int = 4) -> SharedTensor:
    """``tanh(x) = 2 sigmoid(2x) - 1`` for ``|x| < 2^(iterations - 1)``."""
    x = _check_shared(x, "x")
    _check_exp_constants(x, "tanh")
    s = sigmoid(ops.mul(x, 2), iterations=iterations, reciprocal_iterations=reciprocal_iterations)
    return ops.sub(ops.mul(s, 2), 1.0)


def _empty_like(x: SharedTensor, dim: int) -> SharedTensor:
    """An empty result of ``x``'s shape (``dim`` validated as a softmax's)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"`dim` must be an int; got {type(dim).__name__}")
    x._dim(dim)
    return SharedTensor(x.share.clone(), x.session)


def _softmax_parts(
    x: SharedTensor, dim: int, exp_iterations: int
) -> tuple[SharedTensor, SharedTensor, SharedTensor, int]:
    x = _check_shared(x, "x")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"`dim` must be an int; got {type(dim).__name__}")
    x._dim(dim)  # validates
    m = _reduce_last(x, dim, True, onehot=False)[0]
    assert m is not None
    z = ops.sub(x, m)  # <= 0: numerically stable
    e = exp(z, iterations=exp_iterations)
    s = ops.sum(e, dim, keepdim=True)
    return z, e, s, (x.shape[dim] if x.dim() else 1)


def softmax(
    x: SharedTensor,
    dim: int,
    *,
    exp_iterations: int = 5,
    reciprocal_iterations: int | None = None,
) -> SharedTensor:
    """Softmax over ``dim``: ``e^(x - max) / sum e^(x - max)``.

    The max subtraction keeps every exponent in (0, 1]; the exponential's base
    is clamped at 0 so that very negative logits give 0; the denominator lies in
    [1, k], so its reciprocal starts from the minimax line on [1, k] and takes
    the Newton steps that interval needs (5 for k = 10), unless
    ``reciprocal_iterations`` is given.
    Cost: max (15 rounds for 5 <= k <= 32, else 7 ceil(log2 k)) + exp (25) +
    reciprocal (1 + 4 per step) + 2.
    """
    _check_exp_constants(_check_shared(x, "x"), "softmax")
    if x.numel() == 0:  # like torch: an empty result, no communication
        return _empty_like(x, dim)
    _, e, s, k = _softmax_parts(x, dim, exp_iterations)
    if k == 1:
        return ops.add(ops.mul(e, 0.0), 1.0)
    if k <= 2.0 ** (_sess(x).encoding.frac_bits / 2 + 2):
        inv = reciprocal(s, iterations=reciprocal_iterations, bounds=(1.0, float(k)))
    else:  # too many classes for the bounded start: the exponential one, 10 steps
        inv = reciprocal(s, iterations=reciprocal_iterations or 10, positive=True)
    return ops.mul(e, inv)


def log_softmax(
    x: SharedTensor,
    dim: int,
    *,
    exp_iterations: int = 5,
    log_iterations: int = 3,
    log_order: int = 8,
) -> SharedTensor:
    """Log-softmax over ``dim``: ``(x - max) - log(sum e^(x - max))`` (log on [1, k])."""
    x = _check_shared(x, "x")
    _check_constants(x, "log_softmax", LOG_GUESS, "log's initial guess x/120 - 20 e^(-2x-1) + 3")
    if x.numel() == 0:  # like torch: an empty result, no communication
        return _empty_like(x, dim)
    z, _, s, _ = _softmax_parts(x, dim, exp_iterations)
    return ops.sub(z, log(s, iterations=log_iterations, order=log_order))


_ = builtins  # builtins.max/min stay reachable despite the torch-named functions here


# Elementwise ops run in bounded memory (chunks; see smpc.ops.chunked), then
# every public op tags its result with the plaintext dtype reveal() returns.
_ELEMENTWISE = (
    "lt", "le", "gt", "ge", "eq", "ne", "relu", "relu_with_bit", "sign", "abs", "where",
    "reciprocal", "div", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh",
)  # fmt: skip
for _name in _ELEMENTWISE:
    globals()[_name] = ops.chunked(globals()[_name])
del _name
tag_results(globals(), __all__)

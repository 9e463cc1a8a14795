"""Encoding-aware approximations on SharedTensor: exp, reciprocal, log, sqrt, softmax.

Approximations (``exp``, ``reciprocal``, ``log``, ``rsqrt``/``sqrt``,
``sigmoid``/``tanh``, ``softmax``/``log_softmax``) are iterative, with
iteration counts as keyword arguments; their input ranges and measured errors
are in ``docs/approximations.md`` and checked by ``tests/smpc/ops/test_approx.py``.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import EncodingOverflowError
from ..protocols import beaver, compare, truncpoly
from ..session import Session
from ..sharing import add_public, lead
from ..tensor import SharedTensor, tag_results
from . import arith as ops
from . import shape
from .compare import _check_shared, _reduce_last, _sess, relu

__all__ = [
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


# ----------------------------------------------------------------- approximations
def _check_iters(n: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {n!r}")


def _mul_many(pairs: Sequence[tuple[SharedTensor, SharedTensor]]) -> list[SharedTensor]:
    """Several same-shaped products in one batched Beaver opening and truncation."""
    if len(pairs) == 1:
        return [ops.mul(*pairs[0])]
    a = shape.stack([p[0] for p in pairs])
    b = shape.stack([p[1] for p in pairs])
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
    x: SharedTensor,
    *,
    iterations: int | None = None,
    terms: int | None = None,
    clamp: bool = True,
) -> SharedTensor:
    """``e^x`` for ``x <= 10``; inputs below -16 give about 0 (clamped there).

    By default (``iterations`` and ``terms`` both None):
    :func:`smpc.protocols.truncpoly.exp_ring`: ``e^(x/81)`` by a degree-4
    near-minimax polynomial evaluated locally after one truncation, then four
    cubes, each fused into the truncation before it (one round each).
    Cost: 1 comparison (the clamp; none with ``clamp=False``, valid for
    ``x >= -16``) + 6 rounds.

    With ``iterations`` or ``terms`` given, the limit method
    ``e^x = (e^(x/2^n))^(2^n)``, ``n = iterations`` (default 5): the Taylor
    polynomial of degree ``terms`` (default 5) for ``e^(x/2^n)``, then ``n``
    squarings (``clamp=False`` valid for ``x >= -2^(n-1)``); cost 1 (+ the
    clamp) + 2 ceil(log2(terms+1)) + 1 + 2n rounds.
    Range: ``x <= 10`` (the result must stay below the encoding limit
    2^(31-f)). Accuracy: ``docs/approximations.md``.
    """
    x = _check_shared(x, "x")
    if clamp:
        _check_exp_constants(x, "exp")
    sess = _sess(x)
    fused = iterations is None and terms is None and sess.encoding.frac_bits <= 27
    iterations = 5 if iterations is None else iterations
    terms = 5 if terms is None else terms
    _check_iters(iterations, "iterations")
    _check_iters(terms, "terms")
    if clamp:
        x = ops.add(relu(ops.sub(x, EXP_LOW)), EXP_LOW)
    if fused:
        out, _ = truncpoly.exp_ring(sess.comm, sess.dealer, x.share, sess.encoding.frac_bits)
        return SharedTensor(out, sess)
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
    With ``bounds`` (and no ``initial``), each Newton step is one round
    (:func:`smpc.protocols.truncpoly.reciprocal_ring`: the step's products
    come from the dealer's mask products after the iterate's truncation),
    while ``hi / lo`` leaves ``u = x / 2^ceil(log2 hi)`` the encoding's precision
    (``hi/lo`` up to about 450 at ``f = 16``; wider: the steps below).
    Cost: exp (see :func:`exp`) + 4 rounds per iteration (10 by default; + 7
    for the sign); with ``bounds``: 1 round per iteration + 1 (7 for [1, 10]),
    or, beyond that ratio or with ``initial``, 2 + 4 per iteration.
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
        if initial is None and truncpoly.reciprocal_plan(lo, hi, sess.encoding.frac_bits):
            out = truncpoly.reciprocal_ring(
                sess.comm,
                sess.dealer,
                x.share,
                sess.encoding.frac_bits,
                (lo, hi),
                (a_coef, b_coef),
                steps,
            )
            return SharedTensor(out, sess)
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
    x: SharedTensor, dim: int, exp_iterations: int | None
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
    exp_iterations: int | None = None,
    reciprocal_iterations: int | None = None,
) -> SharedTensor:
    """Softmax over ``dim``: ``e^(x - max) / sum e^(x - max)``.

    For 2 to 10 classes (and neither iteration count given), all steps fused
    (:func:`smpc.protocols.truncpoly.softmax_ring`): one batch of comparisons
    gives the pairwise order and every ``relu(x_i - x_j + 16)``, a second the
    one-hot of the maximum, one product the clamped ``x - max``; the exponential
    by cubes, then a degree-5 start for ``1/sum`` on [1, 10], one Newton step
    and the last one times the exponentials, each step one truncation round.
    Cost: 1 comparison + 11 rounds (15 rounds with 4-round comparisons).

    Otherwise the max subtraction keeps every exponent in (0, 1]; the
    exponential's base is clamped at 0 so that very negative logits give 0; the
    denominator lies in [1, k], so its reciprocal starts from the minimax line on
    [1, k] and takes the Newton steps that interval needs (5 for k = 10), unless
    ``reciprocal_iterations`` is given. Cost: max (15 rounds for 5 <= k <= 32,
    else 7 ceil(log2 k)) + exp (see :func:`exp`) + reciprocal (see :func:`reciprocal`)
    + 2.
    """
    _check_exp_constants(_check_shared(x, "x"), "softmax")
    if x.numel() == 0:  # like torch: an empty result, no communication
        return _empty_like(x, dim)
    sess = _sess(x)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"`dim` must be an int; got {type(dim).__name__}")
    d = x._dim(dim)
    if (
        exp_iterations is None
        and reciprocal_iterations is None
        and x.dim() > 0
        and 2 <= x.shape[d - lead(sess.comm)] <= 10
    ):
        moved = x.share.movedim(d, -1)
        p = truncpoly.softmax_ring(sess.comm, sess.dealer, moved, sess.encoding.frac_bits)
        return SharedTensor(p.movedim(-1, d), sess)
    _, e, s, k = _softmax_parts(x, dim, exp_iterations)
    if k == 1:
        return ops.add(ops.mul(e, 0.0), 1.0)
    if k <= 2.0 ** (sess.encoding.frac_bits / 2 + 2):
        inv = reciprocal(s, iterations=reciprocal_iterations, bounds=(1.0, float(k)))
    else:  # too many classes for the bounded start: the exponential one, 10 steps
        inv = reciprocal(s, iterations=reciprocal_iterations or 10, positive=True)
    return ops.mul(e, inv)


def log_softmax(
    x: SharedTensor,
    dim: int,
    *,
    exp_iterations: int | None = None,
    log_iterations: int = 3,
    log_order: int = 8,
) -> SharedTensor:
    """Log-softmax over ``dim``: ``(x - max) - log(sum e^(x - max))`` (log on [1, k]).

    ``exp_iterations``: as :func:`exp`'s ``iterations`` (None: the fused exponential).
    """
    x = _check_shared(x, "x")
    _check_constants(x, "log_softmax", LOG_GUESS, "log's initial guess x/120 - 20 e^(-2x-1) + 3")
    if x.numel() == 0:  # like torch: an empty result, no communication
        return _empty_like(x, dim)
    z, _, s, _ = _softmax_parts(x, dim, exp_iterations)
    return ops.sub(z, log(s, iterations=log_iterations, order=log_order))


_ = builtins  # builtins.max/min stay reachable despite the torch-named functions here


# Elementwise ops run in bounded memory (chunks; see smpc.ops.chunked), then
# every public op tags its result with the plaintext dtype reveal() returns.
_ELEMENTWISE = ("reciprocal", "div", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh")
for _name in _ELEMENTWISE:
    globals()[_name] = ops.chunked(globals()[_name])
del _name
tag_results(globals(), __all__)

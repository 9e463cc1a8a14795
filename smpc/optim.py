"""Optimizers on shared parameters (nn layer): :class:`SGD` and :class:`Adam`.

:class:`Adam` keeps secret-shared moments and takes ``1 / sqrt(v_hat)`` from the
existing approximations (see its docstring for the range and the cost); what
follows is about SGD (with momentum and weight decay).

Updates are computed on the shares without revealing anything. The whole step
costs **one truncation round for all parameters together**: every parameter's
update is formed at double scale (public hyper-parameters times shared
gradients, no truncation yet), the updates are concatenated, truncated once and
split back. The rule is torch's SGD, learning-rate changes included
(``v = momentum * v + g + weight_decay * p``, ``p -= lr * v``): the momentum
buffer is stored premultiplied by the current learning rate, so that the step
and the new buffer are one tensor, a linear form in ``(g, p, b_old)`` with
public coefficients (the old buffer rescaled by ``lr_new / lr_old``). ``lr``
may be changed between steps (a schedule), as torch's
``param_groups[0]["lr"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from . import nonlinear as nl
from . import ops
from .autograd.tape import WIDE_MAX_FRAC_BITS
from .ops import rescale_many
from .protocols import beaver
from .tensor import SharedTensor

__all__ = ["SGD", "Adam", "Optimizer"]


def _check_lr(lr: float) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 < lr < math.inf:
        raise ValueError(f"`lr` must be a finite float > 0; got {lr!r}")


def _enc(v: float, frac_bits: int) -> int:
    return int(round(v * 2.0**frac_bits))


class Optimizer:
    """Base class: holds the parameters, ``zero_grad``."""

    def __init__(self, params: Iterable[SharedTensor]) -> None:
        self.params: list[SharedTensor] = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, SharedTensor):
                raise TypeError(f"`params[{i}]` must be a SharedTensor; got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"`params[{i}]` does not require grad")
        sess = self.params[0].session
        if any(p.session is not sess for p in self.params):
            raise ValueError("all parameters must belong to one session")
        self.session = sess

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update the parameters (override)."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, like ``torch.optim.SGD``.

    Args:
        params: shared parameters (``requires_grad=True``).
        lr: learning rate (public).
        momentum: momentum factor (public, default 0).
        weight_decay: L2 penalty (public, default 0).

    Cost per step: one truncation round (all parameters batched), no Beaver
    products (the hyper-parameters are public).
    """

    def __init__(
        self,
        params: Iterable[SharedTensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params)
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0; got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1); got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay}")
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self._velocity: list[torch.Tensor | None] = [None] * len(self.params)
        self._beta = 1.0  # the public factor of the stored momentum buffers

    def _enc(self, v: float) -> int:
        return int(round(v * self.session.encoding.scale))

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient (one truncation round)."""
        sess = self.session
        lr, wd, mom = self.lr, self.weight_decay, self.momentum
        if lr < 0:
            raise ValueError(f"`lr` must be >= 0; got {lr}")
        # The momentum buffer is kept premultiplied, b = beta v, beta = lr (1 while lr == 0):
        #   b' = beta' (mom v + g + wd p) = (beta' mom / beta) b + beta' g + beta' wd p
        # is one linear form with public coefficients at scale 2^2f, truncated once;
        # the step p -= lr v' is then b' itself (nothing when lr == 0).
        # A gradient kept before its truncation (scale 2^2f, autograd's WideGrad) makes
        # the form's scale 2^3f, truncated by 2f: one truncation of the parameter
        # instead of two. That needs |lr v'| < 2^(62 - 3f): 2^14 for f = 16, the
        # most fractional bits for which autograd keeps gradients wide.
        beta = lr if lr > 0 else 1.0
        f = sess.encoding.frac_bits
        c_g, c_p = self._enc(beta), self._enc(beta * wd)
        c_b = self._enc(beta * mom / self._beta)
        active = [i for i, p in enumerate(self.params) if p.has_grad]
        if not active:
            return
        if f > WIDE_MAX_FRAC_BITS:  # wide gradients set by hand: truncate them first
            pending = [
                (q, wg) for i in active if (wg := (q := self.params[i])._wide_grad) is not None
            ]
            if pending:  # all in one round
                done = rescale_many(sess, [(wg, f) for _, wg in pending])
                for (q, _), share in zip(pending, done, strict=True):
                    q.grad = SharedTensor(share, sess)
        # With any wide gradient, every update is formed at scale 2^3f (the others'
        # terms times 2^f, exact) and all are truncated by 2f: one truncation request.
        wide = any(self.params[i]._wide_grad is not None for i in active)
        lift = f if wide else 0
        grads: list[torch.Tensor] = []
        for i in active:
            p = self.params[i]
            g_share = p._wide_grad
            if g_share is None:
                g = p.grad
                assert g is not None
                g_share = g.share
            if tuple(g_share.shape) != tuple(p.share.shape):
                shape = g_share.shape[g_share.dim() - p.dim() :]
                raise ValueError(
                    f"parameter {i}: gradient shape {tuple(shape)} != "
                    f"parameter shape {tuple(p.shape)}"
                )
            grads.append(g_share)
        # Every update written into one buffer (no concatenation copy), each term in
        # one pass: u = c_g g (+ c_p p) (+ c_b b), coefficients lifted to the scale.
        lead = grads[0].shape[: grads[0].dim() - self.params[active[0]].dim()]
        total = sum(self.params[i].numel() for i in active)
        flat = torch.empty((*lead, total), dtype=torch.int64)
        offset = 0
        for i, g_share in zip(active, grads, strict=True):
            p = self.params[i]
            n = p.numel()
            u = flat[..., offset : offset + n].view(p.share.shape)
            offset += n
            torch.mul(g_share, c_g if p._wide_grad is not None else c_g << lift, out=u)
            if wd:
                u.add_(p.share, alpha=c_p << lift)
            b = self._velocity[i] if mom else None
            if b is not None:
                u.add_(b, alpha=c_b << lift)
        bits = 2 * f if wide else f
        (upd,) = rescale_many(sess, [(flat, bits)])  # one round for all
        offset = 0
        for i in active:
            p = self.params[i]
            n = p.numel()
            u = upd[..., offset : offset + n].reshape(p.share.shape)
            offset += n
            if mom:
                self._velocity[i] = u
            if lr > 0:
                p._share = p.share - u
        self._beta = beta


# Adam's 1/sqrt(v_hat): the existing rsqrt approximation is accurate on [2^-2, 2^6] (well
# inside its documented [0.1, 100]); six scaled copies of v_hat cover 2^-34 <= v_hat < 2^14.
# Copy j computes rsqrt(v_hat 2^(2k)) for 2k in _ADAM_SEGMENTS (valid for
# 2^(-2-2k) <= v_hat <= 2^(6-2k)); 1/sqrt(v_hat) = 2^k rsqrt(v_hat 2^(2k)).
_ADAM_SEGMENTS = (-8, 0, 8, 16, 24, 32)
_ADAM_R_SHIFT = 4  # 1/sqrt(v_hat) is kept at scale 2^(f + 4): every 2^k is a left shift
_ADAM_R_MAX = 2.0**17  # bound on 1/sqrt(v_hat) (0 is taken below the covered range)
_ADAM_G_EXTRA = 4  # g is squared at scale 2^(f + 4) (when it is truncated from 2^(2f))
_ADAM_V_EXTRA = 2 * _ADAM_G_EXTRA  # v_hat is kept at scale 2^(2f + 8), that square's scale
_ADAM_COEF_BITS = 12  # significant bits of the moments' public coefficients
_ADAM_MAX_FRAC_BITS = 16


def _fixed(c: float, bits: int = 16) -> tuple[int, int]:
    """``(q, s)`` with ``q = round(c 2^s)`` in ``[2^(bits-1), 2^bits]``: ``c ~ q / 2^s``."""
    s = bits - 1 - math.floor(math.log2(c))
    return round(c * 2.0**s), s


def _flat(share: torch.Tensor, ndim: int) -> torch.Tensor:
    """A share with its data dims flattened into one (the simulation's party axis kept)."""
    return share.reshape(*share.shape[: share.dim() - ndim], -1)


class Adam(Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) with torch's semantics, like ``torch.optim.Adam``.

    ``g += weight_decay * p``; ``m = beta1 m + (1 - beta1) g``;
    ``v = beta2 v + (1 - beta2) g^2``; ``p -= lr * m_hat / (sqrt(v_hat) + eps)``
    with ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)`` and ``t``
    counted per parameter (a parameter without a gradient is skipped, its ``t``
    unchanged). The moments are secret-shared; nothing is revealed.

    Args:
        params: shared parameters (``requires_grad=True``).
        lr: learning rate (public, > 0; may be changed between steps).
        betas: ``(beta1, beta2)``, each in [0, 1).
        eps: added to ``sqrt(v_hat)``; in ``[0, (2^(f/2+2) - 1) / 2^17]``
            (``0.0078`` at ``frac_bits = 16``).
        weight_decay: L2 penalty added to the gradient (public, >= 0).

    How it is computed (``f = frac_bits``, at most 16):

    * The bias-corrected moments are kept, ``m_hat`` at scale ``2^(2f)`` and
      ``v_hat`` at ``2^(2f + 8)``: ``m_hat += a1 (g - m_hat)`` with
      ``a1 = (1 - beta1) / (1 - beta1^t)`` (the same recurrence; ``a1 = 1`` at
      the first step), likewise ``v_hat`` with ``g^2``. At scale ``2^f``,
      ``(1 - beta2) g^2`` of a gradient of 0.01 would be below one unit. The
      public ``a1``, ``a2`` are rounded to 12 significant bits (a relative error
      of ``2^-12`` in each step's weight, not accumulated in the bias).
    * A gradient that autograd kept before its truncation (``WideGrad``,
      scale ``2^(2f)``) enters ``m_hat`` untruncated; ``g^2`` uses it truncated
      to scale ``2^(f + 4)`` (all parameters in one round; reading ``p.grad``
      would truncate it to ``2^f``), so that small gradients (weight decay
      alone, say) keep 4 more bits in ``v_hat``.
    * ``1 / sqrt(v_hat)`` by :func:`smpc.nonlinear.rsqrt` on six copies of
      ``v_hat`` scaled by ``2^-8, 1, 2^8, 2^16, 2^24, 2^32`` (one batch: the
      rounds of one rsqrt), the right copy chosen by comparing ``v_hat`` with
      six public thresholds (one batch) and one product of the comparison
      bits; 0 below ``2^-34`` (no step there).
    * ``1 / (sqrt(v_hat) + eps) = r / (1 + eps r)`` for ``r = 1 / sqrt(v_hat)``,
      the reciprocal by :func:`smpc.nonlinear.reciprocal` on the known
      interval ``[1, 1 + eps 2^17]`` (skipped when ``eps 2^17 < 2^-(f+1)``).
      ``lr`` is applied with 16 significant bits.

    Valid range and accuracy (checked in ``tests/smpc/test_optim.py``):
    gradients (plus ``weight_decay * p``) must satisfy ``|g| < 2^(21 - f)``
    (32 at ``f = 16``). For ``v_hat`` in ``[2^-26, 2^10]`` (gradient sizes from
    about 1e-4 to 32) each step is within about ``1e-3 lr`` plus a few
    ``2^-f`` of torch's. Two limits of fixed point remain: a gradient below one
    unit ``2^-f`` is noise, which Adam's normalisation would turn into a step
    of up to ``lr`` (torch steps on it; here such a step is damped, and 0
    where ``v_hat < 2^-34``, so never larger than ``lr``-sized); and the
    moving average of ``g^2`` needs ``(1 - beta2) g^2 >= 2^-(2f+8)`` per step
    to move (gradients above about ``3e-5`` for ``beta2 = 0.999``).

    Cost per step (all parameters batched; about 90 rounds for two parties):
    a truncation round (only with weight decay or wide gradients), one square
    round, one truncation round for the moments, one for the scaled copies,
    one rsqrt on six times the elements (48 rounds), one comparison on six
    times the elements (4 rounds), one product round, the ``eps`` part (a
    truncation, a short reciprocal and a product), the product ``m_hat r`` and
    two truncations.
    """

    def __init__(
        self,
        params: Iterable[SharedTensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params)
        f = self.session.encoding.frac_bits
        if f > _ADAM_MAX_FRAC_BITS:
            raise ValueError(
                f"Adam needs frac_bits <= {_ADAM_MAX_FRAC_BITS} (its moments are kept at "
                f"scale 2^(2 frac_bits)); got frac_bits={f}"
            )
        _check_lr(lr)
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0
                for b in betas
            )
        ):
            raise ValueError(f"`betas` must be a pair of floats in [0, 1); got {betas!r}")
        eps_max = (2.0 ** (f / 2 + 2) - 1.0) / _ADAM_R_MAX
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= eps_max:
            raise ValueError(
                f"`eps` must be in [0, {eps_max:.3g}] (the reciprocal of 1 + eps/sqrt(v_hat) "
                f"needs 1 + eps 2^17 <= 2^(frac_bits/2+2)); got {eps!r}"
            )
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or not 0.0 <= weight_decay < math.inf
        ):
            raise ValueError(f"`weight_decay` must be a finite float >= 0; got {weight_decay!r}")
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        n = len(self.params)
        self._m: list[torch.Tensor | None] = [None] * n  # m_hat, scale 2^(2f)
        self._v: list[torch.Tensor | None] = [None] * n  # v_hat, scale 2^(2f + 8)
        self._t = [0] * n

    def step(self) -> None:
        """Apply one Adam update to every parameter that has a gradient."""
        _check_lr(self.lr)
        sess = self.session
        comm, dealer = sess.comm, sess.dealer
        f = sess.encoding.frac_bits
        active = [i for i, p in enumerate(self.params) if p.has_grad]
        if not active:
            return
        params = [self.params[i] for i in active]
        # 1. Gradients at scale 2^(2f) (wide ones as they are) plus weight decay,
        #    and at scale 2^(f + 4) for the square (one truncation round, only if needed).
        wd = _enc(self.weight_decay, f)
        wide_g: list[torch.Tensor] = []
        narrow_g: list[torch.Tensor] = []
        need_trunc = wd != 0
        for i, p in zip(active, params, strict=True):
            wg = p._wide_grad
            if wg is not None:
                need_trunc = True
                share = wg
            else:
                g = p.grad
                assert g is not None
                narrow_g.append(_flat(g.share << _ADAM_G_EXTRA, p.dim()))
                share = g.share << f
            got = tuple(share.shape[share.dim() - p.dim() :])
            if got != tuple(p.shape):
                raise ValueError(
                    f"parameter {i}: gradient shape {got} != parameter shape {tuple(p.shape)}"
                )
            wide_g.append(_flat(share + wd * p.share if wd else share, p.dim()))
        if need_trunc:
            (g_flat,) = rescale_many(sess, [(torch.cat(wide_g, dim=-1), f - _ADAM_G_EXTRA)])
        else:
            g_flat = torch.cat(narrow_g, dim=-1)
        # 2. g^2 at scale 2^(2f + 8): a square pair, no truncation.
        g2 = beaver.square(comm, dealer, g_flat)
        # 3. Bias-corrected moments: m_hat += a1 (g - m_hat), v_hat += a2 (g^2 - v_hat),
        #    a = (1 - beta) / (1 - beta^t) per parameter; one truncation round.
        b1, b2 = self.betas
        items: list[tuple[torch.Tensor, int]] = []
        sizes = [p.numel() for p in params]
        offset = 0
        for i, gw, n in zip(active, wide_g, sizes, strict=True):
            self._t[i] += 1
            t = self._t[i]
            q1, s1 = _fixed((1.0 - b1) / (1.0 - b1**t), _ADAM_COEF_BITS)
            q2, s2 = _fixed((1.0 - b2) / (1.0 - b2**t), _ADAM_COEF_BITS)
            items.append(((gw - _old(self._m[i], gw)) * q1, s1))
            items.append(((g2[..., offset : offset + n] - _old(self._v[i], gw)) * q2, s2))
            offset += n
        done = rescale_many(sess, items)
        m_hat = torch.cat(
            [_old(self._m[i], gw) + d for i, gw, d in zip(active, wide_g, done[0::2], strict=True)],
            dim=-1,
        )
        v_hat = torch.cat(
            [_old(self._v[i], gw) + d for i, gw, d in zip(active, wide_g, done[1::2], strict=True)],
            dim=-1,
        )
        # 4. r = 1 / (sqrt(v_hat) + eps) at scale 2^(f + R).
        r = self._rsqrt(v_hat)
        if self.eps * _ADAM_R_MAX >= 2.0 ** -(f + 1):
            r = self._with_eps(r)
        # 5. The step lr m_hat r at scale 2^f: m_hat r at 2^(3f + R), cut to 2^(f + 8), times lr.
        prod = beaver.mul(comm, dealer, m_hat, r)
        (u,) = rescale_many(sess, [(prod, 2 * f + _ADAM_R_SHIFT - 8)])
        q_lr, s_lr = _fixed(self.lr)
        (upd,) = rescale_many(sess, [(u * q_lr, s_lr + 8)])
        offset = 0
        for i, p, n in zip(active, params, sizes, strict=True):
            sl = slice(offset, offset + n)
            offset += n
            shape = p.share.shape
            self._m[i] = m_hat[..., sl]
            self._v[i] = v_hat[..., sl]
            p._share = p.share - upd[..., sl].reshape(shape)

    def _rsqrt(self, v: torch.Tensor) -> torch.Tensor:
        """Shares of ``1 / sqrt(v)`` (scale ``2^(f+R)``) from shares of ``v`` (``2^(2f+8)``)."""
        sess = self.session
        scale = 2 * sess.encoding.frac_bits + _ADAM_V_EXTRA
        return nl.rsqrt_scaled_share(sess, v, scale, _ADAM_SEGMENTS, _ADAM_R_SHIFT)

    def _with_eps(self, r: torch.Tensor) -> torch.Tensor:
        """``r / (1 + eps r)`` (scale ``2^(f + R)``)."""
        sess = self.session
        e, b = _fixed(self.eps)
        (z,) = rescale_many(sess, [(r * e, b + _ADAM_R_SHIFT)])  # eps r at scale 2^f
        hi = 1.0 + self.eps * _ADAM_R_MAX
        q = nl.reciprocal(ops.add(SharedTensor(z, sess), 1.0), bounds=(1.0, hi))
        return ops.mul(SharedTensor(r, sess), q).share


def _old(state: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A stored moment, or zeros before the first step."""
    return state if state is not None else torch.zeros_like(like)

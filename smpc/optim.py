"""Optimizers on shared parameters (nn layer): :class:`SGD` with momentum and weight decay.

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

from collections.abc import Iterable

import torch

from .autograd.tape import WIDE_MAX_FRAC_BITS
from .ops import rescale_many
from .tensor import SharedTensor

__all__ = ["SGD", "Optimizer"]


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

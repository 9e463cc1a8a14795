"""A linear layer and the ReLU after it as one differentiable op (autograd layer).

:class:`LinearReLU` runs ``relu(x @ W^T + b)`` with the fused protocols of
:mod:`smpc.protocols.fused`: the forward has no truncation round of its own,
and the backward of the *next* layer multiplies its input gradient by this
ReLU's bit inside its truncation, so that this node's backward skips the
product. The two layers talk through a :class:`ReluLink` that
:class:`smpc.nn.Sequential` passes from one to the next.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import ops
from ..ops import fused
from ..tensor import SharedTensor
from .function import Context, Function
from .functions import Grad, LazyValue, Linear, _gsum, _weight_grad
from .tape import WIDE_MAX_FRAC_BITS, WideGrad

__all__ = ["ReluLink", "LinearReLU", "PendingTrunc", "fusable", "mse_grad_in_forward"]


class ReluLink:
    """What a fused ReLU hands to the linear layer that consumes its output.

    Attributes:
        bit: the ReLU's bit (set by the forward).
        premultiplied: the gradient the consuming layer already multiplied by
            ``bit`` (so the ReLU's backward skips its product); any other
            gradient, e.g. a sum over several consumers, is multiplied again
            (``b * b = b``: correct either way).
    """

    __slots__ = ("bit", "premultiplied")

    def __init__(self) -> None:
        self.bit: fused.ReluBit | None = None
        self.premultiplied: SharedTensor | None = None

    def __repr__(self) -> str:
        return f"ReluLink(bit={self.bit!r})"


def fusable(x: Any, w: Any, b: Any) -> bool:
    """Whether :class:`LinearReLU` applies to ``(x, w, b)``.

    It needs a 2-D shared input, a shared weight and bias (or none) of one
    session and matching shapes, the default truncation and at most 15
    parties; elsewhere the layers run one by one (and raise their errors).
    """
    if not (isinstance(x, SharedTensor) and isinstance(w, SharedTensor)) or x.dim() != 2:
        return False
    if b is not None and not (isinstance(b, SharedTensor) and b.dim() == 1):
        return False
    sess = x.session
    if w.session is not sess or (b is not None and b.session is not sess):
        return False
    if w.dim() != 2 or x.shape[1] != w.shape[1] or (b is not None and b.shape[0] != w.shape[0]):
        return False
    return ops.can_keep(sess) and sess.world_size <= 15


class LinearReLU(Function):
    """``relu(x @ W^T + b)`` (``relu_out``) or ``x @ W^T + b``, fused with the ReLUs around it.

    ``apply(x, w, b, relu_in, relu_out)``: ``relu_in`` is the :class:`ReluLink`
    of the fused ReLU that produced ``x`` (or ``None``); ``relu_out`` a fresh
    :class:`ReluLink` when a ReLU follows this layer (or ``None``).
    """

    @staticmethod
    def forward(
        ctx: Context,
        x: SharedTensor,
        w: SharedTensor,
        b: SharedTensor | None,
        relu_in: ReluLink | None,
        relu_out: ReluLink | None,
    ) -> SharedTensor:
        """The product with kept masks, then (``relu_out``) :func:`smpc.protocols.fused.relu_trunc`.

        Cost: with a ReLU, 1 round plus the comparison's
        (:func:`smpc.protocols.fused.linear_relu_forward`); without, as :class:`Linear`
        (the product's round, then a truncation round at the output's first use,
        which other truncations may share: :class:`PendingTrunc`).
        """
        sess = x.session
        ctx.save_for_backward(x, w)
        ctx.session = sess
        ctx.links = (relu_in, relu_out)
        key = sess.transient_mask_key()
        if relu_out is None:  # the truncation waits for its first use (see PendingTrunc)
            u, ctx.masks = fused.linear_forward_raw(
                sess, x.share, w.share.transpose(-1, -2), None if b is None else b.share, key
            )
            return PendingTrunc(u, sess, (int(x.shape[0]), int(w.shape[0])))
        bit_key = sess.transient_mask_key()
        share, masks, bit = fused.linear_relu_forward(
            sess, x.share, w.share.transpose(-1, -2), None if b is None else b.share, key, bit_key
        )
        ctx.masks = masks
        relu_out.bit = bit
        return SharedTensor(share, sess)

    @staticmethod
    def backward(
        ctx: Context, g: Grad
    ) -> tuple[Grad | None, Grad | WideGrad | None, Grad | None, None, None]:
        """The ReLU's product (skipped when the next layer fused it), then the linear gradients.

        The input gradient is multiplied by ``relu_in``'s bit inside its truncation
        (:func:`smpc.protocols.fused.linear_backward`: 2 rounds in all, or 1 when only
        the untruncated weight gradient is needed).
        """
        x, w = ctx.saved_tensors
        sess = ctx.session
        relu_in, relu_out = ctx.links
        nx, nw, nb, _, _ = ctx.needs_input_grad
        if relu_out is not None:
            bit = relu_out.bit
            assert bit is not None
            if g is not relu_out.premultiplied:
                g = ops.mul_ring_bit(g, ops.RingBit(fused.bit_shares(sess, bit), sess))
            relu_out.premultiplied = None
            if bit.key is not None:  # the provider released rb (or drops it when it is too old)
                sess.release_mask_key(bit.key)
        wide = w.grad_fn is None and w.frac_bits <= WIDE_MAX_FRAC_BITS
        gx: Grad | None = None
        gw: Grad | WideGrad | None = None
        in_bit = relu_in.bit if relu_in is not None else None
        if nx and in_bit is not None and in_bit.key is not None and isinstance(g, SharedTensor):
            lx, lw = fused.linear_backward(
                sess, g.share, ctx.masks, in_bit, grad_weight=nw, truncate_weight=not wide
            )
            sess.release_mask_key(ctx.masks.key)
            gx = SharedTensor(lx, sess)
            assert relu_in is not None
            relu_in.premultiplied = gx
            if lw is not None:
                gw = _weight_grad(lw if wide else SharedTensor(lw, sess))
        else:
            lin = Context((nx, nw, False))
            lin.save_for_backward(x, w)
            lin.masks = ctx.masks
            gx, gw, _ = Linear.backward(lin, g)
        gb = _gsum(g, (0,), False) if nb else None
        return gx, gw, gb, None, None


class PendingTrunc(LazyValue):
    """A linear layer's output ``trunc(u)`` whose truncation runs on first use.

    Until then, other truncations may join its round (:meth:`ride`): the MSE
    loss truncates its gradient ``K (u - target 2^f)`` by ``2f`` bits there
    (:func:`mse_grad_in_forward`), instead of one more round after the logits'.
    """

    __slots__ = ("_u", "_riders", "_results")

    def __init__(self, u: torch.Tensor, session: Any, shape: tuple[int, ...]) -> None:
        super().__init__(self._truncate, session, shape)
        self._dtype = None
        self._wide_grad = None
        self._u: torch.Tensor | None = u
        self._riders: list[tuple[torch.Tensor, int]] = []
        self._results: list[torch.Tensor] = []

    @property
    def raw(self) -> torch.Tensor:
        """Shares of the untruncated value (scale ``2^(2f)``), before the truncation ran."""
        if self._u is None:
            raise RuntimeError("PendingTrunc.raw: the truncation already ran")
        return self._u

    def ride(self, share: torch.Tensor, bits: int) -> int:
        """Truncate ``share`` by ``bits`` in the same round; its index for :meth:`result`."""
        if self.computed:
            raise RuntimeError("PendingTrunc.ride: the truncation already ran")
        self._riders.append((share, bits))
        return len(self._riders) - 1

    def result(self, i: int) -> torch.Tensor:
        """Shares of rider ``i`` truncated (runs the truncation if it has not run)."""
        _ = self.share
        return self._results[i]

    def _truncate(self) -> torch.Tensor:
        sess = self.session
        u = self.raw
        items = [(u, sess.encoding.frac_bits), *self._riders]
        outs = fused.trunc_many(sess, items)
        self._u, self._riders, self._results = None, [], outs[1:]
        return outs[0]


def mse_grad_in_forward(x: Any, target: Any, reduction: str) -> tuple[PendingTrunc, int] | None:
    """Put the MSE gradient ``2 (x - target) / n`` on the truncation of a pending ``x``.

    For ``x`` a :class:`PendingTrunc` not yet truncated, with the untruncated
    ``u`` (scale ``2^(2f)``) and ``K = encode(2 / n)`` (``n = numel`` for
    ``'mean'``, else 1): ``K (u - target 2^f)`` at scale ``2^(3f)``, truncated by
    ``2f`` bits in the logits' truncation round. Returns ``(x, index)`` for
    :meth:`PendingTrunc.result`, or ``None`` where this does not apply (the
    caller then scales the gradient in the backward: one more truncation round),
    e.g. for ``frac_bits`` above 16, where ``|2 (x - target) / n| < 2^(62 - 3f)``
    would be too tight (at 16: ``2^14``). Cost: local (plus ``numel`` ring
    elements in the shared round).
    """
    if (
        not isinstance(x, PendingTrunc)
        or x.computed
        or reduction not in ("mean", "sum")
        or tuple(getattr(target, "shape", ())) != tuple(x.shape)
        or (isinstance(target, SharedTensor) and target.session is not x.session)
    ):
        return None
    if not isinstance(target, SharedTensor | torch.Tensor):
        return None
    sess = x.session
    f = sess.encoding.frac_bits
    if f > WIDE_MAX_FRAC_BITS:  # at scale 2^(3f) the gradient must stay under 2^(62-3f)
        return None
    n = x.numel() if reduction == "mean" else 1
    k = int(sess.encoding.encode(torch.tensor(2.0 / n, dtype=torch.float64)))
    if isinstance(target, SharedTensor):
        d = x.raw - (target.share << f)
    else:
        d = fused.sub_public_scaled(sess, x.raw.clone(), target, f)
    return x, x.ride(d * k, 2 * f)

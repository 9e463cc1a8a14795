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

from .. import ops
from ..protocols import fused
from ..tensor import SharedTensor
from .function import Context, Function
from .functions import Grad, Linear, _gsum, _weight_grad, mul_ring_bit
from .tape import WIDE_MAX_FRAC_BITS, WideGrad

__all__ = ["ReluLink", "LinearReLU", "fusable"]


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
    session, the default truncation and at most 15 parties.
    """
    if not (isinstance(x, SharedTensor) and isinstance(w, SharedTensor)) or x.dim() != 2:
        return False
    if b is not None and not (isinstance(b, SharedTensor) and b.dim() == 1):
        return False
    sess = x.session
    if w.session is not sess or (b is not None and b.session is not sess):
        return False
    return w.dim() == 2 and ops.can_keep(sess) and sess.world_size <= 15


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
        (:func:`smpc.protocols.fused.linear_relu_forward`); without, as :class:`Linear`.
        """
        sess = x.session
        ctx.save_for_backward(x, w)
        ctx.session = sess
        ctx.links = (relu_in, relu_out)
        if relu_out is None:
            kept = ops.linear_forward(x, w.t())
            assert kept is not None
            out, ctx.masks = kept
            return out if b is None else ops.add(out, b)
        key = sess.transient_mask_key()
        bit_key = sess.transient_mask_key()
        f = sess.encoding.frac_bits
        share, masks, bit = fused.linear_relu_forward(
            sess.comm,
            sess.dealer,
            x.share,
            w.share.transpose(-1, -2),
            None if b is None else b.share,
            f,
            key,
            bit_key,
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
                g = mul_ring_bit(g, fused.bit_shares(sess.comm, bit), sess)
            relu_out.premultiplied = None
            if bit.key is not None:  # the provider released rb (or drops it when it is too old)
                sess.release_mask_key(bit.key)
        wide = w.grad_fn is None and w.frac_bits <= WIDE_MAX_FRAC_BITS
        gx: Grad | None = None
        gw: Grad | WideGrad | None = None
        in_bit = relu_in.bit if relu_in is not None else None
        if nx and in_bit is not None and in_bit.key is not None and isinstance(g, SharedTensor):
            f = sess.encoding.frac_bits
            lx, lw = fused.linear_backward(
                sess.comm,
                sess.dealer,
                g.share,
                ctx.masks,
                f,
                in_bit,
                grad_weight=nw,
                truncate_weight=not wide,
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

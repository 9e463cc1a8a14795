"""Ring-level building blocks on top of comparison: max/argmax trees (protocol layer).

Exact modulo 2^64 and unaware of fixed point: values are ring elements, bits
are unscaled ring 0/1, one-hot vectors carry whatever scale the caller gives.
"""

from __future__ import annotations

import torch

from ..comm.base import Communicator
from ..dealer.base import Dealer
from ..sharing import add_public
from . import beaver, compare

__all__ = ["max_last"]


def max_last(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    *,
    onehot_scale: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Maximum over the last axis by a tree of comparisons, optionally with a one-hot argmax.

    Protocol: pair up neighbours ``(a, b)``, ``max = b + relu(a - b)`` with the
    fused ReLU of :func:`compare.relu` (its bit is ``[a >= b]``); an odd last
    element moves up unchanged. With ``onehot_scale``, each element also carries a
    one-hot row (``onehot_scale`` at its own index), selected with the same bit
    (local at the first level, one Beaver product after). Ties go to the lower
    index, as ``torch.argmax``.

    Cost: ``ceil(log2 k)`` levels of 7 rounds (8 with the one-hot after the first
    level); per level, one ReLU per pair.

    Returns:
        ``(values, onehot)``: values with the last axis removed; one-hot with the
        same shape as ``x`` (``None`` unless ``onehot_scale``).
    """
    k = x.shape[-1]
    vals = x
    oh: torch.Tensor | None = None
    oh_public = True
    if onehot_scale is not None:
        oh = torch.eye(k, dtype=torch.int64) * onehot_scale  # public, (k, k)
    while vals.shape[-1] > 1:
        m = vals.shape[-1]
        h = m // 2
        a = vals[..., 0 : 2 * h : 2]
        b = vals[..., 1 : 2 * h : 2]
        rel, bit = compare.relu(comm, dealer, a - b)
        top = b + rel
        if oh is not None:
            oa = oh[..., 0 : 2 * h : 2, :]
            ob = oh[..., 1 : 2 * h : 2, :]
            if oh_public:
                sel = bit.unsqueeze(-1) * (oa - ob)
                sel = add_public(comm, sel, ob)
            else:
                sel = ob + beaver.mul(comm, dealer, bit.unsqueeze(-1), oa - ob)
            if m % 2:
                last = oh[..., -1:, :]
                if oh_public:
                    last = add_public(comm, torch.zeros_like(sel[..., :1, :]), last)
                sel = torch.cat([sel, last], dim=-2)
            oh = sel
            oh_public = False
        if m % 2:
            top = torch.cat([top, vals[..., -1:]], dim=-1)
        vals = top
    out = vals.squeeze(-1)
    if oh is None:
        return out, None
    if oh_public:  # k == 1
        oh = add_public(comm, torch.zeros_like(x).unsqueeze(-1), oh)
    return out, oh.squeeze(-2)

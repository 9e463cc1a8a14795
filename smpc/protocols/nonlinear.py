"""Ring-level building blocks on top of comparison: max/argmax trees (protocol layer).

Exact modulo 2^64 and unaware of fixed point: values are ring elements, bits
are unscaled ring 0/1, one-hot vectors carry whatever scale the caller gives.
"""

from __future__ import annotations

import torch

from ..comm.base import Communicator
from ..dealer.base import Dealer
from ..sharing import add_public, add_public_
from . import beaver, compare

__all__ = ["max_last", "max_pairwise", "PAIRWISE_MIN", "PAIRWISE_MAX"]

# max_last compares all pairs at once (2 comparisons deep) for this many
# candidates; a tree of ceil(log2 k) comparisons is shallower below, and
# the k (k - 1) / 2 comparisons grow too many above.
PAIRWISE_MIN = 5
PAIRWISE_MAX = 32


def max_last(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    *,
    onehot_scale: int | None = None,
    values: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Maximum over the last axis by a tree of comparisons, optionally with a one-hot argmax.

    Protocol: pair up neighbours ``(a, b)``, ``max = b + relu(a - b)`` with the
    fused ReLU of :func:`compare.relu` (its bit is ``[a >= b]``); an odd last
    element moves up unchanged. With ``onehot_scale``, each element also carries a
    one-hot row (``onehot_scale`` at its own index), selected with the same bit
    (local at the first level, one Beaver product after). Ties go to the lower
    index, as ``torch.argmax``.

    Cost: ``ceil(log2 k)`` levels of 4 rounds (5 with the one-hot after the first
    level); per level, one ReLU per pair. For ``PAIRWISE_MIN <= k <=
    PAIRWISE_MAX`` it runs :func:`max_pairwise` instead (9 rounds).

    Returns:
        ``(values, onehot)``: values with the last axis removed (``None`` may be
        returned when ``values`` is False); one-hot with the same shape as ``x``
        (``None`` unless ``onehot_scale``).
    """
    k = x.shape[-1]
    if PAIRWISE_MIN <= k <= PAIRWISE_MAX:
        return max_pairwise(comm, dealer, x, onehot_scale=onehot_scale, values=values)
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


def max_pairwise(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    *,
    onehot_scale: int | None = None,
    values: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Maximum and one-hot argmax over the last axis from all pairwise comparisons.

    Protocol (constant depth, after the tournament-free argmax of secure
    inference work such as SecureNN):
        1. ``[l_ij] = [x_i < x_j]`` for every pair ``i < j``: one batched comparison.
        2. Wins ``w_i = #{j > i: x_i >= x_j} + #{j < i: x_i > x_j}``, a local
           linear combination of the ``l`` (ties go to the lower index, as
           ``torch.argmax``); the maximum alone has ``w_i = k - 1``.
        3. ``[o_i] = [w_i >= k - 1] = 1 - [w_i - (k - 1) < 0]``: a second comparison.
        4. If ``values``: the maximum ``sum_i o_i x_i``, one Beaver product (ring
           bit times value).

    Cost: 2 comparisons (8 rounds) + 1 round for the values; ``k (k - 1) / 2 + k``
    comparisons per row (19-27 bytes each, see :func:`compare.cost`) and
    ``2 k`` ring elements for the product.

    Returns:
        ``(values, onehot)`` as :func:`max_last`.
    """
    k = x.shape[-1]
    iu = torch.triu_indices(k, k, 1)
    lt = compare.ltz(comm, dealer, x[..., iu[0]] - x[..., iu[1]])  # [x_i < x_j], i < j
    wins = torch.zeros_like(x)
    wins.index_add_(-1, iu[0], lt, alpha=-1)
    wins.index_add_(-1, iu[1], lt)
    # Public part: #{j > i} = k - 1 - i wins for i before any loss, minus the k - 1 target.
    add_public_(comm, wins, -torch.arange(k, dtype=torch.int64))
    not_max = compare.ltz(comm, dealer, wins)  # [w_i - (k - 1) < 0]
    onehot = not_max.neg_()
    add_public_(comm, onehot, 1)
    vals = beaver.mul(comm, dealer, onehot, x).sum(-1) if values else None
    if onehot_scale is None:
        return vals, None
    return vals, onehot.mul_(onehot_scale)

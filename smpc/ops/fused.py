"""Kernels of the fused linear -> ReLU layers (ops layer).

Session-level entry points to :mod:`smpc.protocols.fused` and the batched
truncation, for :mod:`smpc.autograd.linear_relu`: the autograd layer keeps
the graph (which ReLU feeds which layer) and these kernels touch the shares.
Each function's cost is its protocol's (see :mod:`smpc.protocols.fused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..protocols import fused as _fused
from ..protocols import truncation
from ..sharing import add_public_

if TYPE_CHECKING:
    from ..session import Session

__all__ = [
    "ReluBit",
    "linear_forward_raw",
    "linear_relu_forward",
    "linear_backward",
    "bit_shares",
    "trunc_many",
    "sub_public_scaled",
]

ReluBit = _fused.ReluBit


def linear_forward_raw(
    sess: Session,
    x: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    key: int,
) -> tuple[torch.Tensor, Any]:
    """Untruncated ``x @ wt + bias`` (scale ``2^(2f)``) with kept masks.

    :func:`smpc.protocols.fused.linear_forward_raw`.
    """
    return _fused.linear_forward_raw(
        sess.comm, sess.dealer, x, wt, bias, sess.encoding.frac_bits, key
    )


def linear_relu_forward(
    sess: Session,
    x: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    key: int,
    bit_key: int | None,
) -> tuple[torch.Tensor, Any, _fused.ReluBit]:
    """``relu(trunc(x @ wt + bias))``, its masks and bit.

    :func:`smpc.protocols.fused.linear_relu_forward`.
    """
    return _fused.linear_relu_forward(
        sess.comm, sess.dealer, x, wt, bias, sess.encoding.frac_bits, key, bit_key
    )


def linear_backward(
    sess: Session,
    g: torch.Tensor,
    masks: Any,
    bit: _fused.ReluBit,
    *,
    grad_weight: bool,
    truncate_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input gradient times the ReLU bit, and the weight gradient.

    :func:`smpc.protocols.fused.linear_backward`.
    """
    return _fused.linear_backward(
        sess.comm,
        sess.dealer,
        g,
        masks,
        sess.encoding.frac_bits,
        bit,
        grad_weight=grad_weight,
        truncate_weight=truncate_weight,
    )


def bit_shares(sess: Session, bit: _fused.ReluBit) -> torch.Tensor:
    """Additive shares of a fused ReLU's bit (local): :func:`~smpc.protocols.fused.bit_shares`."""
    return _fused.bit_shares(sess.comm, bit)


def trunc_many(sess: Session, items: Sequence[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """Several truncations in one round: :func:`~smpc.protocols.truncation.trunc_many`."""
    return truncation.trunc_many(sess.comm, sess.dealer, items)


def sub_public_scaled(
    sess: Session, share: torch.Tensor, public: torch.Tensor, shift: int
) -> torch.Tensor:
    """Shares of ``x - encode(public) 2^shift`` from fresh shares of ``x`` (in place, local)."""
    return add_public_(sess.comm, share, -(sess.encoding.encode(public.detach()) << shift))

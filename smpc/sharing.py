"""Additive and XOR secret sharing, and party-local helpers (sharing layer: no communication).

``[x]`` denotes additive shares: ``x = sum_i x_i mod 2^64``. Functions take the
runtime's :class:`~smpc.comm.base.Communicator` only for the layout of its
shares: whether they carry the party axis (``party_axis``, :func:`lead`) and
where party 0's share is (``holds_party0``, ``party0_share``, ``other_shares``),
so that protocol code never branches on the runtime itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from . import ring
from .prg import Prg

if TYPE_CHECKING:
    from .comm.base import Communicator

__all__ = [
    "additive_shares",
    "reconstruct",
    "data_shape",
    "add_public",
    "add_public_",
    "addcmul_public_",
    "xor_public",
    "xor_public_",
    "per_party",
    "public_share",
    "lead",
    "data_dim",
]


def additive_shares(x: torch.Tensor, world_size: int, prg: Prg) -> torch.Tensor:
    """Split int64 ``x`` into ``world_size`` uniformly random shares, stacked on a new axis 0.

    Shares 0..n-2 are uniform from ``prg``; the last is ``x - sum(others)``.
    """
    n = world_size
    out = torch.empty((n, *x.shape), dtype=torch.int64)
    if n > 1:
        out[:-1] = prg.random_int64((n - 1) * x.numel()).view(n - 1, *x.shape)
        out[-1] = x - out[:-1].sum(0)
    else:
        out[0] = x
    return out


def reconstruct(shares: torch.Tensor) -> torch.Tensor:
    """Sum stacked additive shares (axis 0) modulo 2^64."""
    return shares.sum(0)


def lead(comm: Communicator) -> int:
    """Number of leading non-data axes of a share in this runtime (1 in simulation, else 0)."""
    return 1 if comm.party_axis else 0


def data_shape(comm: Communicator, share: torch.Tensor) -> torch.Size:
    """Shape of the shared value (without the party axis)."""
    return share.shape[1:] if comm.party_axis else share.shape


def data_dim(comm: Communicator, dim: int, ndim: int) -> int:
    """Map a data dim (may be negative) to the share tensor's dim."""
    if not -ndim <= dim < max(ndim, 1):
        raise IndexError(f"`dim` must be in [{-ndim}, {ndim}); got {dim}")
    d = dim % max(ndim, 1)
    return d + lead(comm)


def add_public(comm: Communicator, share: torch.Tensor, public: torch.Tensor | int) -> torch.Tensor:
    """Shares of ``x + p`` from shares of ``x`` and public ``p`` (party 0 adds ``p``).

    Broadcasting follows torch. Cost: local, 0 rounds.
    """
    if isinstance(public, int):
        public = torch.tensor(public, dtype=torch.int64)
    if comm.party_axis:
        shape = ring.broadcast_shapes(share.shape[1:], public.shape)
        out = share.expand(share.shape[0], *shape).clone()
        out[0] += public
        return out
    if comm.holds_party0:
        return share + public
    shape = ring.broadcast_shapes(share.shape, public.shape)
    return share.expand(shape).clone() if shape != share.shape else share


def add_public_(
    comm: Communicator, share: torch.Tensor, public: torch.Tensor | int
) -> torch.Tensor:
    """In-place :func:`add_public` for a fresh share that already has the broadcast shape.

    Cost: local, 0 rounds.
    """
    p0 = comm.party0_share(share)
    if p0 is not None:
        p0 += public
    return share


def addcmul_public_(
    comm: Communicator, share: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """In place: party 0 adds the public product ``a * b`` to a fresh share (one fused pass)."""
    p0 = comm.party0_share(share)
    if p0 is not None:
        p0.addcmul_(a, b)
    return share


def xor_public(comm: Communicator, share: torch.Tensor, public: torch.Tensor | int) -> torch.Tensor:
    """XOR shares of ``w ^ p`` from XOR shares of ``w`` and a public ``p`` (party 0 applies it).

    Cost: local, 0 rounds.
    """
    if comm.party_axis:
        out = share.clone()
        out[0] ^= public
        return out
    return share ^ public if comm.holds_party0 else share


def xor_public_(
    comm: Communicator, share: torch.Tensor, public: torch.Tensor | int
) -> torch.Tensor:
    """In place: party 0's XOR share of a fresh tensor absorbs a public word. Cost: local."""
    p0 = comm.party0_share(share)
    if p0 is not None:
        p0 ^= public
    return share


def per_party(
    comm: Communicator,
    share: torch.Tensor,
    first: Callable[[torch.Tensor], torch.Tensor],
    rest: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Party 0's share mapped by ``first``, every other party's by ``rest`` (shape-preserving).

    For a local step whose rule differs between the parties (e.g. SecureML's
    local truncation). Cost: local, 0 rounds.
    """
    x0, xr = comm.party0_share(share), comm.other_shares(share)
    if xr is None:
        assert x0 is not None  # a runtime holds some party's share
        return first(x0)
    if x0 is None:
        return rest(xr)
    out = torch.empty_like(share)
    out0, outr = comm.party0_share(out), comm.other_shares(out)
    assert out0 is not None and outr is not None  # the same layout as ``share``
    out0.copy_(first(x0))
    outr.copy_(rest(xr))
    return out


def public_share(comm: Communicator, public: torch.Tensor) -> torch.Tensor:
    """A (trivial) sharing of a public int64 value: party 0 holds it, others hold zero."""
    if comm.party_axis:
        out = torch.zeros((comm.world_size, *public.shape), dtype=torch.int64)
        out[0] = public
        return out
    return public.clone() if comm.holds_party0 else torch.zeros_like(public)

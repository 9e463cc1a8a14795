"""The Communicator interface that protocols use (runtime layer).

A protocol is written once, SPMD style: "my share" in, "my share" out. A share
is a ``torch.int64`` tensor. In the in-process simulation one tensor holds the
shares of *every* party along a leading party axis (``party_axis = True``), so
one torch op does all parties' local work; in the distributed runtime it is
this party's share only. Protocols stay agnostic by using negative dims for
data axes and the helpers of :mod:`smpc.sharing` for party-dependent steps,
which reach party 0's share (the one that absorbs public values) through
:attr:`Communicator.holds_party0`, :meth:`Communicator.party0_share` and
:meth:`Communicator.other_shares`: the runtime's layout stays behind this
interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .stats import Stats

__all__ = ["Communicator"]


class Communicator(Protocol):
    """What a protocol may ask of the runtime.

    Attributes:
        world_size: number of computing parties (the dealer is not counted).
        rank: this party's index, or ``None`` when this object runs all parties.
        party_axis: whether shares carry a leading axis of size ``world_size``.
        holds_party0: whether this runtime holds party 0's share (the one that
            absorbs public values: every share in simulation, rank 0's otherwise).
        stats: rounds and bytes, per op label.
        timeout: seconds to wait for a peer before raising ``PartyTimeoutError``.
    """

    world_size: int
    rank: int | None
    party_axis: bool
    holds_party0: bool
    stats: Stats
    timeout: float
    #: the ``meta`` number the last :meth:`share_from` received (``None`` if none came)
    received_meta: int | None

    def party0_share(self, share: torch.Tensor) -> torch.Tensor | None:
        """Party 0's share within this runtime's ``share`` (a view), or ``None`` if not held here.

        Writing into it changes ``share``: party 0 alone adds a public value to a
        fresh share (see :func:`smpc.sharing.add_public_`). Cost: local.
        """
        ...

    def other_shares(self, share: torch.Tensor) -> torch.Tensor | None:
        """The shares of parties ``1 .. n-1`` within this runtime's ``share`` (a view), or ``None``.

        With :meth:`party0_share`, a party-dependent local step: one rule for
        party 0, another for the rest (see :func:`smpc.sharing.per_party`).
        """
        ...

    def open(self, shares: Sequence[torch.Tensor], label: str) -> list[torch.Tensor]:
        """Reconstruct several shared values to every party in one round.

        Cost: 1 round; each party sends each share to each of the other
        ``world_size - 1`` parties.
        """
        ...

    def open_masked(
        self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], label: str
    ) -> list[torch.Tensor]:
        """Reconstruct ``x - m`` for each pair ``(x, m)`` of shares in one round.

        The opening of a Beaver product (``x`` masked by the triple's ``m``); the
        same messages and cost as :meth:`open` of the differences. A runtime may
        fuse the subtraction into its reconstruction.
        """
        ...

    def reveal_to(self, share: torch.Tensor, dst: int, label: str) -> torch.Tensor | None:
        """Reconstruct to party ``dst`` only (others get ``None``). 1 round."""
        ...

    def share_from(
        self,
        shares: torch.Tensor | None,
        src: int,
        shape: tuple[int, ...] | None,
        label: str,
        *,
        meta: int | None = None,
    ) -> torch.Tensor:
        """Distribute input shares from party ``src``.

        ``meta`` (a small public int from ``src``, e.g. the plaintext dtype's code)
        travels in the message header with the shape (no payload bytes); receivers
        find it in :attr:`received_meta`.

        In simulation ``shares`` holds every party's share (leading axis). In a
        distributed run, party ``src`` passes the stacked shares (it keeps row
        ``src`` and sends row ``j`` to party ``j``); the other parties pass ``None``
        and receive their row. ``shape`` is the data shape if known, else it is sent.
        Cost: 1 round, ``world_size - 1`` shares sent by ``src``.
        """
        ...

    def broadcast_object(self, obj: object, src: int, label: str) -> object:
        """Send a small Python object from ``src`` to all (not counted as payload)."""
        ...

    def barrier(self) -> None:
        """Wait for every party."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...

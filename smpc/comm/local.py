"""In-process simulation runtime: every party's share along a leading axis (runtime layer).

One tensor of shape ``(world_size, *data_shape)`` holds all parties' shares, so
each local step is one torch op for all parties (no Python loop per party) and
an opening is one sum over the party axis. The runtime records exactly the
payload the distributed runtime puts on the wire for the same program.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import ring
from ..errors import SessionClosedError
from .stats import Stats

__all__ = ["LocalCommunicator"]


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of one party's share (no tensor is created: this runs per message)."""
    return t.numel() // t.shape[0] * t.element_size()


# Up to this many elements per party, one reduction over the party axis beats
# two row views and an add (fewer dispatches); above it the add streams faster.
_SMALL_OPEN = 1 << 16


# From this many elements (all parties') on, a masked opening is one fused pass
# (ring.open_diff); below, two torch ops cost less than the kernel's call.
_FUSED_OPEN = 1 << 12


def _sum_parties(s: torch.Tensor, n: int) -> torch.Tensor:
    if n > 2 or s.numel() <= 2 * _SMALL_OPEN:
        return s.sum(0)
    return s[0] + s[1]


class LocalCommunicator:
    """All parties simulated in this process (shares stacked on a party axis)."""

    party_axis = True
    holds_party0 = True
    rank: int | None = None
    received_meta: int | None = None  # every party is here: nothing is received

    def __init__(self, world_size: int, *, timeout: float = 60.0) -> None:
        self.world_size = world_size
        self.timeout = timeout
        self.stats = Stats(world_size=world_size)
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise SessionClosedError("the session is closed; create a new Session")

    def party0_share(self, share: torch.Tensor) -> torch.Tensor:
        return share[0]

    def other_shares(self, share: torch.Tensor) -> torch.Tensor:
        return share[1:]

    def open(self, shares: Sequence[torch.Tensor], label: str) -> list[torch.Tensor]:
        self._check()
        n = self.world_size
        per_party = sum(_nbytes(s) for s in shares) * (n - 1)
        self.stats.record(label, [per_party] * n)
        return [_sum_parties(s, n) for s in shares]

    def open_masked(
        self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], label: str
    ) -> list[torch.Tensor]:
        self._check()
        n = self.world_size
        per_party = sum(_nbytes(x) for x, _ in pairs) * (n - 1)
        self.stats.record(label, [per_party] * n)
        out = []
        for x, m in pairs:
            fused = ring.open_diff(x, m) if x.numel() >= _FUSED_OPEN else None
            out.append(fused if fused is not None else _sum_parties(x - m, n))
        return out

    def reveal_to(self, share: torch.Tensor, dst: int, label: str) -> torch.Tensor | None:
        self._check()
        nb = _nbytes(share)
        self.stats.record(label, [0 if r == dst else nb for r in range(self.world_size)])
        return share.sum(0)

    def share_from(
        self,
        shares: torch.Tensor | None,
        src: int,
        shape: tuple[int, ...] | None,
        label: str,
        *,
        meta: int | None = None,
    ) -> torch.Tensor:
        self._check()
        assert shares is not None
        sent = [0] * self.world_size
        sent[src] = _nbytes(shares) * (self.world_size - 1)
        self.stats.record(label, sent)
        return shares

    def broadcast_object(self, obj: object, src: int, label: str) -> object:
        self._check()
        return obj

    def barrier(self) -> None:
        self._check()

    def close(self) -> None:
        self._closed = True

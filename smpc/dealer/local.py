"""In-process crypto provider for the simulation runtime (runtime layer).

Generates every party's shares of a request at once, stacked on the party
axis, from one CSPRNG stream: one AES call per request, written straight into
the output buffer. It counts, in the session's stats, the bytes the
distributed provider would send for the same request (the correction shares).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..comm.stats import Stats
from ..prg import AesPrg
from .base import (
    POOL,
    Component,
    KeptMasks,
    Request,
    fused_correction,
    kept_keys,
    kept_values,
    poolable,
)

__all__ = ["LocalDealer", "generate_stacked"]

_SMALL = 1 << 14


def _xor_reduce(t: torch.Tensor) -> torch.Tensor:
    out = t[0].clone()
    for i in range(1, t.shape[0]):
        out ^= t[i]
    return out


def generate_stacked(
    req: Request,
    world_size: int,
    prg: AesPrg,
    *,
    batch: int | None = None,
    known: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All parties' shares of ``req``'s components, shape ``(world_size, *shape)`` each.

    Random rows are written by the keystream in place; the last row of each
    derived component is the correction, computed without drawing randomness.
    With ``batch=P`` (elementwise requests only) every component gets a leading
    axis of P independent instances: shape ``(world_size, P, *shape)``.
    ``known`` holds plain values the request reuses (see
    :func:`~smpc.dealer.base.kept_values`); they are not part of the output.
    """
    n = world_size
    comps = req.components()
    if batch is not None:
        comps = tuple(Component(c.name, c.kind, (batch, *c.shape)) for c in comps)
    private = [c for c in comps if not c.kind.shared]
    comps = tuple(c for c in comps if c.kind.shared)
    sizes = [math.prod(c.shape) for c in comps]
    total = n * sum(sizes)
    # Small requests: one keystream call for everything (the few derived last rows
    # drawn in vain cost less than extra calls). Large ones: skip those rows.
    small = total <= _SMALL
    buf = prg.random_int64(total) if small else torch.empty(total, dtype=torch.int64)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for comp, size in zip(comps, sizes, strict=True):
        flat = buf[offset : offset + n * size]
        offset += n * size
        if not small:
            prg.fill_(flat[: (n - 1) * size] if comp.kind.derived else flat)
        out[comp.name] = flat.view(n, *comp.shape)
    private_values = {c.name: prg.random_int64(math.prod(c.shape)).view(c.shape) for c in private}
    known = dict(known or {})
    if fused_correction(
        req,
        {c.name: out[c.name] for c in comps if not c.kind.derived}
        | {k: v.unsqueeze(0) for k, v in known.items()},
        private_values,
        {c.name: out[c.name][:-1] for c in comps if c.kind.derived},
        {c.name: out[c.name][-1] for c in comps if c.kind.derived},
    ):
        return out
    plain: dict[str, torch.Tensor] = dict(private_values) | known
    for comp in comps:
        if not comp.kind.derived:
            stacked = out[comp.name]
            if comp.kind.xor:
                plain[comp.name] = _xor_reduce(stacked)
            else:
                plain[comp.name] = stacked[0] + stacked[1] if n == 2 else stacked.sum(0)
    derived = req.derive(plain)
    for comp in comps:
        if comp.kind.derived:
            stacked = out[comp.name]
            value = derived[comp.name]
            if comp.kind.xor:
                rest = _xor_reduce(stacked[:-1]) if n > 2 else stacked[0]
                torch.bitwise_xor(value, rest, out=stacked[-1])
            else:
                rest = stacked[:-1].sum(0) if n > 2 else stacked[0]
                torch.sub(value, rest, out=stacked[-1])
    return out


class LocalDealer:
    """Trusted dealer simulated in process.

    Small elementwise requests (:func:`~smpc.dealer.base.poolable`) are served
    from pools of :data:`~smpc.dealer.base.POOL` instances, as the distributed
    provider's clients do. The session's stats count each request's own
    correction bytes; :attr:`sent_bytes` is what a distributed provider sends for
    the same requests (a pool's corrections all at once, with its first use).

    Args:
        world_size: number of computing parties.
        stats: the session's counters (dealer bytes are added there).
        key: AES key (``None``: from ``os.urandom``; a seeded key only for tests).
    """

    def __init__(self, world_size: int, stats: Stats, *, key: bytes | None = None) -> None:
        self.world_size = world_size
        self._stats = stats
        self._prg = AesPrg(key)
        self._pools: dict[Request, tuple[dict[str, torch.Tensor], list[int]]] = {}
        self._plans: dict[Request, tuple[bool, int]] = {}
        self._kept = KeptMasks()  # plain masks that later requests reuse
        self.sent_bytes = 0  # what a distributed provider sends for the same requests

    def _pooled(self, req: Request) -> dict[str, torch.Tensor]:
        entry = self._pools.get(req)
        if entry is None or entry[1][0] >= POOL:
            entry = (generate_stacked(req, self.world_size, self._prg, batch=POOL), [0])
            self.sent_bytes += POOL * self._plan(req)[1]  # a pool is drawn whole
            self._pools[req] = entry
        material, cursor = entry
        i = cursor[0]
        cursor[0] = i + 1
        return {name: t[:, i] for name, t in material.items()}

    def _plan(self, req: Request) -> tuple[bool, int]:
        """(served from a pool?, correction bytes), memoised per small request."""
        plan = self._plans.get(req)
        if plan is None:
            pooled = poolable(req)
            corr = sum(math.prod(c.shape) * 8 for c in req.components() if c.kind.derived)
            plan = (pooled, corr)
            if pooled:
                self._plans[req] = plan
        return plan

    def request(self, req: Request) -> dict[str, torch.Tensor]:
        pooled, corr = self._plan(req)
        if pooled:
            out = self._pooled(req)
        else:
            known = kept_values(req, self._kept)
            out = generate_stacked(req, self.world_size, self._prg, known=known)
            self.sent_bytes += corr
        keeps = kept_keys(req)
        if keeps:
            self._kept.keep(req, {name: out[name].sum(0) for name, _ in keeps})
        self._kept.release(req)
        self._stats.record_dealer(corr)
        return out

    @property
    def kept_masks(self) -> int:
        """How many masks are kept for later requests (released ones are gone)."""
        return len(self._kept)

    def close(self) -> None:
        self._prg.close()

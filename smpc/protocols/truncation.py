"""Fixed-point truncation of shared values (protocol layer).

Divides a shared value by 2^f after a fixed-point product, for any number of
parties, in one round, with an error of at most one unit in the last place and
never a large error for inputs inside the documented range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .. import ring
from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import add_public_, data_shape, per_party

__all__ = ["trunc", "trunc_many", "finish", "trunc_local", "TRUNC_BOUND_BITS"]

# |x| < 2^62 is required: x + 2^62 must have a zero most significant bit.
TRUNC_BOUND_BITS = 62


def trunc(comm: Communicator, dealer: Dealer, x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Shares of ``floor(x / 2^f)`` or ``floor(x / 2^f) + 1``, for signed ``|x| < 2^62``.

    Protocol (probabilistic truncation with a known-zero MSB, after Escudero,
    Ghosh, Keller, Rachuri, Scholl, "Improved primitives for MPC over mixed
    arithmetic-binary circuits", CRYPTO 2020 [EGKRS20]):
        1. Shift to non-negative: ``x' = x + 2^62`` (party 0), so ``msb(x') = 0``.
        2. The dealer gives ``[r]`` (uniform), ``[-r_hi] = [-((r mod 2^63) >> f)]`` and
           ``[s] = [msb(r) * 2^(63-f)]``.
        3. Open ``c = x' + r`` (uniform, so ``x'`` stays hidden).
        4. Since ``msb(x') = 0``, the carry into bit 63 is ``msb(c) XOR msb(r)``, so
           ``x' >> f = (c mod 2^63) >> f - r_hi + 2^(63-f) (msb(c) XOR msb(r)) - borrow``
           with ``borrow in {0, 1}`` from the low f bits; the borrow is dropped. XOR with the public
           ``msb(c)`` is linear: ``[s] (1 - 2 msb(c)) + msb(c) 2^(63-f)``.
        5. Subtract ``2^(62-f)`` (party 0).

    Cost: 1 round, one ring element per element sent to each other party.
    Dealer: ``r`` from seeds, two correction shares (``r_hi``, ``s``).
    Error: result is ``floor(x/2^f) + borrow``, i.e. at most one ulp above the
    floor (so within one ulp of the exact quotient); no wrap-around error while
    ``|x| < 2^62``.

    Security: semi-honest; ``c`` is uniform given ``x``; non-colluding dealer.
    """
    return trunc_many(comm, dealer, [(x, frac_bits)])[0]


def trunc_many(
    comm: Communicator, dealer: Dealer, items: Sequence[tuple[torch.Tensor, int]]
) -> list[torch.Tensor]:
    """:func:`trunc` of several values, each by its own number of bits, in one round.

    Protocol: one :class:`TruncPair` per value, every masked
    ``x + 2^62 + r`` opened in one batched opening, then each finish.
    Cost: 1 round; one ring element per element to each other party.
    """
    pairs = [dealer.request(TruncPair(tuple(data_shape(comm, x)), f)) for x, f in items]
    masked = [
        add_public_(comm, x + t["r"], 1 << TRUNC_BOUND_BITS)
        for (x, _), t in zip(items, pairs, strict=True)
    ]
    opened = comm.open(masked, "trunc") if masked else []
    return [
        finish(comm, c, t["neg_r_hi"], t["s"], f)
        for c, t, (_, f) in zip(opened, pairs, items, strict=True)
    ]


def finish(
    comm: Communicator, c: torch.Tensor, neg_r_hi: torch.Tensor, s: torch.Tensor, frac_bits: int
) -> torch.Tensor:
    """Steps 4-5 of :func:`trunc`, from the opened ``c = x + 2^62 + r``. Cost: local."""
    f = frac_bits
    fused = ring.fused_trunc_finish(c, neg_r_hi, s, f, first=comm.holds_party0)
    if fused is not None:
        return fused
    # (c mod 2^63) >> f + msb(c) 2^(63-f) is the logical shift of c read as unsigned.
    public = ((c >> f) & ((1 << (64 - f)) - 1)) - (1 << (TRUNC_BOUND_BITS - f))
    # [s] (1 - 2 msb(c)) - [r_hi] in one fused pass; the sign is +1 where c >= 0 (signed).
    sign = torch.where(c < 0, -1, 1)
    z = torch.addcmul(neg_r_hi, s, sign)
    return add_public_(comm, z, public)


def trunc_local(comm: Communicator, x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """SecureML local truncation for two parties (opt-in; may fail).

    Protocol (Mohassel-Zhang, S&P'17): party 0 computes ``x_0 >> f``, party 1
    computes ``-((-x_1) >> f)``. No communication.

    Cost: 0 rounds. Error: at most one ulp, *except* with probability about
    ``|x| / 2^63`` per element, where the result is off by about 2^(64-f): a
    large error. Measured in ``tests/smpc/protocols/test_truncation.py``.
    Only valid for two parties.
    """
    if comm.world_size != 2:
        raise ValueError(f"local truncation needs world_size == 2; got {comm.world_size}")
    f = frac_bits
    return per_party(comm, x, lambda s: s >> f, lambda s: -((-s) >> f))


# ----------------------------------------------------------------- dealer requests


def trunc_material(r: torch.Tensor, frac_bits: int) -> dict[str, torch.Tensor]:
    """The dealer's truncation material of a mask ``r``: ``neg_r_hi``, ``s`` (:func:`trunc`)."""
    f = frac_bits
    # r >> 63 is all ones exactly when msb(r) = 1 (arithmetic shift).
    return {"neg_r_hi": -((r & ((1 << 63) - 1)) >> f), "s": (r >> 63) & (1 << (63 - f))}


@dataclass(frozen=True, slots=True)
class TruncPair:
    """Material to truncate by ``frac_bits``.

    ``r`` uniform, ``neg_r_hi = -((r mod 2^63) >> f)``, ``s = msb(r) * 2^(63 - f)``.
    """

    shape: tuple[int, ...]
    frac_bits: int

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        return (
            Component("r", Kind.RANDOM, self.shape),
            Component("neg_r_hi", Kind.DERIVED, self.shape),
            Component("s", Kind.DERIVED, self.shape),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return trunc_material(values["r"], self.frac_bits)

    def derive_batch(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`derive` (elementwise: any leading batch axis)."""
        return self.derive(values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The corrections in one pass over ``r`` and the partial rows."""
        rows = shared["r"]
        return ring.fused_trunc_correct(
            rows[0] if rows.shape[0] == 1 else rows.sum(0),
            (partial["neg_r_hi"], partial["s"]),
            (out["neg_r_hi"], out["s"]),
            self.frac_bits,
        )


REQUEST_TYPES: tuple[type, ...] = (TruncPair,)
"""The request classes of this module (what a provider must accept to serve it)."""

__all__ += ["TruncPair", "trunc_material", "REQUEST_TYPES"]

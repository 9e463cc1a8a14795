"""Exact secure comparison: the sign (most significant bit) of a shared ring element
(protocol layer).

Everything here works on raw ring shares and returns *additive* shares of 0/1
ring bits (unscaled); the tensor layer (:mod:`smpc.nonlinear`) multiplies by
2^f to get fixed point. ``x < 0`` means: the signed 64-bit reading of ``x`` is
negative, so ``ltz(x - y)`` is ``x < y`` exactly whenever ``|x - y| < 2^63``.

Protocol family: dealer-assisted masked comparison (the edaBits/Rabbit line of
work) with a bit-packed log-depth prefix circuit on XOR shares:

* the dealer hands out ``[r]`` and the bits of ``r`` packed in one XOR-shared
  word per element; parties open ``c = x + r``; then
  ``msb(x) = msb(c) XOR msb(r) XOR [c mod 2^63 < r mod 2^63]``;
* the comparison of the public ``c`` with the secret bits of ``r`` is the
  carry-lookahead "generate" of a Kogge-Stone-like tree on (generate,
  propagate) pairs. Its first level is *local* because the dealer also gives
  the AND of each pair of adjacent bits of ``r``; each of the 5 remaining
  levels is one round of bit-packed AND gates with dealer AND triples, all 64
  bits of an element in one int64 word;
* the final XOR bit becomes an additive bit with a doubly shared random bit
  (one more round), and ReLU's product ``x * bit`` rides along: its Beaver
  opening ``x - a`` goes out with ``c`` in the first round.

References: [EGKRS20] Escudero, Ghosh, Keller, Rachuri, Scholl, "Improved
primitives for MPC over mixed arithmetic-binary circuits", CRYPTO 2020;
[MRVW21] Makri, Rotaru, Vercauteren, Wouters, "Rabbit: Efficient comparison for
secure multi-party computation", FC 2021; [KS08] Kogge-Stone prefix adders as
used for MSB extraction in ABY (Demmler, Schneider, Zohner, NDSS 2015).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .. import ring
from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import add_public, data_shape
from .convert import field_width, open_fields, xor_public

__all__ = [
    "LtzMaterial",
    "LEVELS",
    "ltz",
    "ltz_mul",
    "relu",
    "cost",
]

_LOW63 = (1 << 63) - 1
_EVEN = 0x5555555555555555  # bit 2m: the low bit of each adjacent pair
# Input stride of each AND level of the prefix tree (groups at multiples of s -> 2s).
LEVELS: tuple[int, ...] = (2, 4, 8, 16, 32)


def _positions(step: int) -> int:
    m = 0
    for p in range(0, 64, step):
        m |= 1 << p
    return ring.wrap(m)


_OUT = {s: _positions(2 * s) for s in LEVELS}  # output positions of level s


@dataclass(frozen=True, slots=True)
class LtzMaterial:
    """Dealer material for one :func:`ltz` (and optionally the product ``x * bit``).

    Components (per element, all int64 words):
        r: uniform additive mask.
        a: uniform additive Beaver mask for ``x`` (only when ``mul``).
        m{s}: random XOR word per AND level ``s``; its bits at offsets 0, 1, 2 of
            each output group are the AND-triple masks ``a, b1, b2``.
        s_xor: random XOR word; bit 0 is the conversion bit ``s``.
        rx: ``r`` itself, XOR-shared (bits of ``r``).
        rr: ``r_{2m+1} AND r_{2m}`` at bit ``2m`` (first tree level, low 63 bits of r).
        t{s}: ``a AND b1`` at offset 0 and ``a AND b2`` at offset 1 of each group.
        s: the bit ``s`` additively shared.
        as: ``a * s`` additively shared (only when ``mul``).
    """

    shape: tuple[int, ...]
    mul: bool = False

    def components(self) -> tuple[Component, ...]:
        sh = self.shape
        comps = [Component("r", Kind.RANDOM, sh)]
        if self.mul:
            comps.append(Component("a", Kind.RANDOM, sh))
        comps += [Component(f"m{s}", Kind.RANDOM_XOR, sh) for s in LEVELS]
        comps.append(Component("s_xor", Kind.RANDOM_XOR, sh))
        comps += [Component("rx", Kind.DERIVED_XOR, sh), Component("rr", Kind.DERIVED_XOR, sh)]
        comps += [Component(f"t{s}", Kind.DERIVED_XOR, sh) for s in LEVELS]
        comps.append(Component("s", Kind.DERIVED, sh))
        if self.mul:
            comps.append(Component("as", Kind.DERIVED, sh))
        return tuple(comps)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r = values["r"]
        low = r & _LOW63
        out = {"rx": r, "rr": (low >> 1) & low & _EVEN}
        for s in LEVELS:
            pos = _OUT[s]
            m = values[f"m{s}"]
            a = m & pos
            b1 = (m >> 1) & pos
            b2 = (m >> 2) & pos
            out[f"t{s}"] = (a & b1) | ((a & b2) << 1)
        bit = values["s_xor"] & 1
        out["s"] = bit
        if self.mul:
            out["as"] = values["a"] * bit
        return out


def _msb_xor(comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """XOR shares (bit 0) of ``msb(c - r)`` from the public ``c`` and the dealer's ``t``."""
    nc = ~(c & _LOW63)  # bit 63 set: neutral (r's bit 63 is excluded below)
    n_hi = (nc >> 1) & _EVEN
    n_lo = nc & _EVEN
    r_low = t["rx"] & _LOW63
    r_hi = r_low >> 1
    rr = t["rr"] & _EVEN
    # Level 1 (pairs, local): with g_i = ~c_i r_i, p_i = ~c_i ^ r_i,
    # G = g_hi ^ p_hi g_lo and P = p_hi p_lo expand into products of r-bits and r_hi r_lo.
    g = (r_hi & n_hi) ^ (r_low & (n_hi & n_lo)) ^ (rr & n_lo)
    p = (r_low & n_hi) ^ (r_hi & n_lo) ^ rr
    p = xor_public(comm, p, n_hi & n_lo)
    for s in LEVELS:
        pos = _OUT[s]
        last = s == LEVELS[-1]
        m = t[f"m{s}"]
        a = m & pos
        b1 = (m >> 1) & pos
        words = [((p >> s) ^ a), (g ^ b1)]
        if not last:
            b2 = (m >> 2) & pos
            words.append(p ^ b2)
        opened = open_fields(comm, words, [pos] * len(words), 2 * s, "ltz")
        d, e1 = opened[0], opened[1]
        tt = t[f"t{s}"]
        # Beaver AND: (d^a)(e^b) = de ^ d b ^ e a ^ ab (de added by party 0).
        z1 = (tt & pos) ^ (b1 & d) ^ (a & e1)
        z1 = xor_public(comm, z1, d & e1)
        g_next = ((g >> s) & pos) ^ z1
        if not last:
            e2 = opened[2]
            z2 = ((tt >> 1) & pos) ^ (b2 & d) ^ (a & e2)
            p = xor_public(comm, z2, d & e2)
        g = g_next
    msb = g ^ ((t["rx"] >> 63) & 1)
    return xor_public(comm, msb, (c >> 63) & 1)


def _check_parties(comm: Communicator) -> None:
    if field_width(comm.world_size) > 2 * LEVELS[0]:
        raise ValueError(
            f"comparison supports at most 15 parties; got world_size={comm.world_size}"
        )


def ltz_mul(
    comm: Communicator, dealer: Dealer, x: torch.Tensor, *, mul: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Additive shares of ``z = [x < 0]`` (0/1 ring bit) and, if ``mul``, of ``x * z``.

    Protocol ([EGKRS20]/[MRVW21] masked comparison, bit-packed prefix tree):
        1. The dealer gives ``[r]``, ``<r>`` (XOR shares of its bits), ``<r_{2m+1} r_{2m}>``,
           AND triples for 5 levels, a doubly shared bit ``(<s>, [s])`` and, for the
           product, ``[a], [a s]``.
        2. Open ``c = x + r`` (and ``d = x - a``): 1 round.
        3. ``msb(x) = msb(c) ^ msb(r) ^ [c' < r']`` with ``c', r'`` the low 63 bits.
           Per bit ``g_i = ~c_i r_i``, ``p_i = ~c_i ^ r_i``; the first tree level
           ``(G, P) = (g_h ^ p_h g_l, p_h p_l)`` is local thanks to ``<r_h r_l>``;
           levels of stride 2, 4, 8, 16, 32 each take one round of bit-packed AND
           gates ``P_h G_l`` and ``P_h P_l`` (Beaver ANDs; 3 masked words opened in
           bit fields, packed into 1 or 2 ring elements).
        4. Open ``e = msb(x) ^ s``: ``[z] = e + (1 - 2e)[s]`` and
           ``[x z] = e [x] + (1 - 2e)([a s] + d [s])``.

    Cost: 7 rounds. Ring elements sent per element to each other party, for 2 or
    3 parties: 1 (``c``) + 2 + 1 + 1 + 1 + 1 (tree) + 1 (``e``) = 8, plus 1 for
    the product (``d``): 64 / 72 bytes. With 4 to 7 parties the first two tree
    levels need 3 and 2 elements (11 / 12 elements).
    Dealer: 7 (+1) random words from seeds and 8 (+1) correction words per element.

    Security: semi-honest, dealer not colluding with any party. ``c`` and ``d`` are
    uniform; every opened AND input is one-time padded by a triple mask; ``e``
    is padded by ``s``.
    """
    _check_parties(comm)
    shape = tuple(data_shape(comm, x))
    t = dealer.request(LtzMaterial(shape, mul=mul))
    if mul:
        c, d = comm.open([x + t["r"], x - t["a"]], "ltz")
    else:
        (c,) = comm.open([x + t["r"]], "ltz")
    msb = _msb_xor(comm, t, c)
    (e,) = open_fields(comm, [msb ^ t["s_xor"]], [1], 64, "ltz")
    flip = 1 - 2 * e
    z = add_public(comm, t["s"] * flip, e)
    if not mul:
        return z, None
    xs = t["as"] + d * t["s"]
    xz = x * e + xs * flip
    return z, xz


def ltz(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> torch.Tensor:
    """Additive shares of the ring bit ``[x < 0]`` (signed reading of ``x``).

    See :func:`ltz_mul` for the protocol. Cost: 7 rounds, 8 ring elements per
    element to each other party (2-3 parties); exact for every ``x``.
    """
    z, _ = ltz_mul(comm, dealer, x, mul=False)
    return z


def relu(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of ``max(x, 0)`` and of the ring bit ``[x >= 0]``.

    ``relu(x) = x - x [x < 0]`` with the product fused into :func:`ltz_mul`
    (no truncation: the bit is an unscaled ring 0/1). Cost: 7 rounds, 9 ring
    elements per element to each other party (2-3 parties).
    """
    z, xz = ltz_mul(comm, dealer, x, mul=True)
    assert xz is not None
    return x - xz, add_public(comm, -z, 1)


def cost(world_size: int, *, mul: bool = False) -> tuple[int, int]:
    """(rounds, ring elements sent per element to each other party) of :func:`ltz_mul`."""
    w = field_width(world_size)
    elems = 1 + (1 if mul else 0) + 1  # c (+ d) and e
    for s in LEVELS:
        nwords = 2 if s == LEVELS[-1] else 3
        per = (2 * s) // w
        elems += -(-nwords // per)
    return 2 + len(LEVELS), elems

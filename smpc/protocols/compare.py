"""Exact secure comparison: the sign bit of a shared ring element (protocol layer).

Everything here works on raw ring shares and returns *additive* shares of 0/1
ring bits (unscaled); the tensor layer (:mod:`smpc.nonlinear`) multiplies by
2^f to get fixed point. ``x < 0`` means: the signed 64-bit reading of ``x`` is
negative, so ``ltz(x - y)`` is ``x < y`` exactly whenever ``|x - y| < 2^63``.

Protocol family: dealer-assisted masked comparison (the edaBits/Rabbit line of
work) with a shallow, fan-in-4 carry-lookahead tree on XOR shares whose
multi-input ANDs use dealer-provided products of masks:

* the dealer hands out ``[r]`` and the bits of ``r`` XOR-shared; parties open
  ``c = x + r``; then ``msb(x) = msb(c) XOR msb(r) XOR [c' < r']`` with ``c', r'``
  the low 63 bits;
* ``[c' < r']`` is the carry-lookahead "generate" of the 64 bit pairs
  (``g_i = ~c_i r_i``, ``p_i = ~c_i XOR r_i``; bit 63 is neutral). The 16 groups
  of 4 bits get their ``(G, P)`` *locally*: both are polynomials in the group's
  bits of ``r`` with public coefficients, and the dealer gives XOR shares of
  every product of two or more of them;
* two more levels combine 4 groups at a time (16 -> 4 -> 1) in *one* round each:
  ``G = G3 ^ P3 G2 ^ P3 P2 G1 ^ P3 P2 P1 G0`` and ``P = P3 P2 P1 P0`` are
  multi-input ANDs of the masked and opened inputs ``d_v = v ^ a_v``, with XOR
  shares of the products of the masks ``a_v`` from the dealer:
  ``prod_{v in S} v = XOR_{T subset S} (prod_{S - T} d_v)(prod_T a_v)``
  (the multi-fan-in AND of dealer-assisted prefix circuits);
* the final XOR bit becomes an additive bit with a doubly shared random bit
  (one more round), and ReLU's product ``x * bit`` rides along: its Beaver
  opening ``x - a`` goes out with ``c`` in the first round.

Each combination is a linear map of a party's share bits (masks, mask
products, the constant 1 for party 0) whose coefficients depend only on the
public bits: at level 1 products of bits of ``~c``, computed for all 16 nibbles
at once (bit-sliced); at levels 2 and 3 a table of 256 masks indexed by the
opened bits, built from the formulas above.

References: [EGKRS20] Escudero, Ghosh, Keller, Rachuri, Scholl, "Improved
primitives for MPC over mixed arithmetic-binary circuits", CRYPTO 2020;
[MRVW21] Makri, Rotaru, Vercauteren, Wouters, "Rabbit: Efficient comparison for
secure multi-party computation", FC 2021; multi-fan-in AND gates from
precomputed products of masks, as in the fan-in-k preprocessing of Damgard,
Fitzi, Kiltz, Nielsen, Toft, "Unconditionally secure constant-rounds
multi-party computation for equality, comparison, bits and exponentiation",
TCC 2006 [DFKNT06] and the Boolean "multi-input AND" preprocessing of ABY2.0
(Patra, Schneider, Suresh, Yalame, USENIX Security 2021) [PSSY21]; carry
lookahead with block (G, P) pairs as in [KS08] Kogge-Stone / Brent-Kung prefix
adders.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import ring
from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import data_shape
from .convert import field_width, open_fields

__all__ = [
    "LtzMaterial",
    "ltz",
    "ltz_mul",
    "relu",
    "cost",
]

_LOW63 = (1 << 63) - 1
_MAX_FIELD_BITS = 4  # level-2 fields sit in the 4 bits of each nibble: at most 15 parties


def _positions(step: int) -> int:
    m = 0
    for p in range(0, 64, step):
        m |= 1 << p
    return ring.wrap(m)


_POS4 = _positions(4)  # bottom bit of every nibble (a level-1 group)
_POS16 = _positions(16)  # bottom bit of every 16-bit lane (a level-2 group)


def _subsets(items: Sequence[int]) -> list[frozenset[int]]:
    """All subsets of ``items``, smallest first."""
    return [frozenset(c) for k in range(len(items) + 1) for c in itertools.combinations(items, k)]


# ---- level 1: the 16 groups of 4 bits, local --------------------------------------------
# The dealer gives the product of the r-bits in _PROD1[t] at offset t % 4 of each nibble of
# word rp{t // 4}.
_PROD1: tuple[frozenset[int], ...] = tuple(T for T in _subsets(range(4)) if len(T) >= 2)


# ---- levels 2 and 3: 4 groups -> 1 with one opening --------------------------------------
# Variables of a combination: G0..G3 (bits 0-3) and P0..P3 (bits 4-7) of the 4 groups
# (3 = most significant). Share bits: bit v (0-7) = the mask a_v, bit 8 + t = the product
# of the masks in _PROD2[t], bit 30 = the constant 1 (party 0 only).
_G = (0, 1, 2, 3)
_P = (4, 5, 6, 7)
_G_MONOMIALS = ((_G[3],), (_P[3], _G[2]), (_P[3], _P[2], _G[1]), (_P[3], _P[2], _P[1], _G[0]))
_P_MONOMIAL = (_P[3], _P[2], _P[1], _P[0])


def _products2() -> tuple[frozenset[int], ...]:
    seen: list[frozenset[int]] = []
    for mono in (*_G_MONOMIALS, _P_MONOMIAL):  # the G ones first: level 3 needs only them
        for t in _subsets(mono):
            if len(t) >= 2 and t not in seen:
                seen.append(t)
    return tuple(seen)


_PROD2 = _products2()  # 22 types; the first _NG3 are the ones G needs
_NG3 = 15
_ONE2 = 30
# Level 3 keeps its 15 mask products in the free bits of word q2b (lane offsets 6-15).
_Q3_POS: tuple[int, ...] = (*range(6, 16), *range(22, 27))


def _source2(t: frozenset[int]) -> int:
    if not t:
        return _ONE2
    if len(t) == 1:
        return next(iter(t))
    return 8 + _PROD2.index(t)


def _monomial_mask(d: int, mono: Sequence[int]) -> int:
    """Share-bit mask of ``prod_{v in mono} (d_v ^ a_v)``."""
    out = 0
    for t in _subsets(mono):
        if all((d >> v) & 1 for v in mono if v not in t):
            out ^= 1 << _source2(t)
    return out


@functools.cache
def _table2() -> tuple[int, ...]:
    """Per opened byte ``d`` (bits as the variables): G mask (bits 0-30), P mask (32-62)."""
    out = []
    for d in range(256):
        g = 0
        for mono in _G_MONOMIALS:
            g ^= _monomial_mask(d, mono)
        out.append(g | (_monomial_mask(d, _P_MONOMIAL) << 32))
    return tuple(out)


@functools.cache
def _table_tensor(device: torch.device) -> torch.Tensor:
    return torch.tensor(_table2(), dtype=torch.int64, device=device)


@dataclass(frozen=True, slots=True)
class LtzMaterial:
    """Dealer material for one :func:`ltz` (and optionally the product ``x * bit``).

    Components (per element, all int64 words):
        r: uniform additive mask.
        a: uniform additive Beaver mask for ``x`` (only when ``mul``).
        m: random XOR word of masks: bits ``4k`` and ``4k + 1`` mask ``G`` and ``P``
            of group ``k`` (level 2), bits ``16j + 2`` and ``16j + 3`` those of the
            level-2 group ``j`` (level 3).
        s_xor: random XOR word; bit 0 is the conversion bit ``s``.
        rx: ``r`` itself, XOR-shared (bits of ``r``).
        rp0, rp1, rp2: products of 2-4 bits of ``r mod 2^63`` within each nibble:
            product type ``t`` (see ``_PROD1``) at offset ``t % 4`` of nibble ``k``
            of ``rp{t // 4}``.
        q2a, q2b: products of level-2 masks, type ``t`` (``_PROD2``) at offset ``t``
            of 16-bit lane ``j`` (``q2a``: types 0-15, ``q2b``: 16-21 at offsets 0-5),
            and of level-3 masks at bits ``_Q3_POS`` of ``q2b``.
        s: the bit ``s`` additively shared.
        as: ``a * s`` additively shared (only when ``mul``).
    """

    elementwise: ClassVar[bool] = True  # derive() works on any leading batch axis

    shape: tuple[int, ...]
    mul: bool = False

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        sh = self.shape
        comps = [Component("r", Kind.RANDOM, sh)]
        if self.mul:
            comps.append(Component("a", Kind.RANDOM, sh))
        comps += [Component("m", Kind.RANDOM_XOR, sh), Component("s_xor", Kind.RANDOM_XOR, sh)]
        comps += [
            Component(name, Kind.DERIVED_XOR, sh)
            for name in ("rx", "rp0", "rp1", "rp2", "q2a", "q2b")
        ]
        comps.append(Component("s", Kind.DERIVED, sh))
        if self.mul:
            comps.append(Component("as", Kind.DERIVED, sh))
        return tuple(comps)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        r = values["r"]
        low = r & _LOW63
        bits = [(low >> j) & _POS4 for j in range(4)]
        rp = [torch.zeros_like(r) for _ in range(3)]
        for t, group in enumerate(_PROD1):
            rp[t // 4] |= _and_all([bits[j] for j in group]) << (t % 4)
        m = values["m"]
        lane = [(m >> (4 * j)) & _POS16 for j in range(4)] + [
            (m >> (4 * j + 1)) & _POS16 for j in range(4)
        ]
        q2a, q2b = torch.zeros_like(r), torch.zeros_like(r)
        for t, group in enumerate(_PROD2):
            prod = _and_all([lane[v] for v in group])
            if t < 16:
                q2a |= prod << t
            else:
                q2b |= prod << (t - 16)
        top = [(m >> (16 * j + 2)) & 1 for j in range(4)] + [
            (m >> (16 * j + 3)) & 1 for j in range(4)
        ]
        for t, group in enumerate(_PROD2[:_NG3]):
            q2b |= _and_all([top[v] for v in group]) << _Q3_POS[t]
        bit = values["s_xor"] & 1
        out = {"rx": r, "rp0": rp[0], "rp1": rp[1], "rp2": rp[2], "q2a": q2a, "q2b": q2b}
        out["s"] = bit
        if self.mul:
            out["as"] = values["a"] * bit
        return out

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The provider's corrections in one C pass (see ``Request``'s fused form)."""
        kern = ring.native()
        if kern is None:
            return False
        rand = ["r", "a", "m", "s_xor"]
        derived = ["rx", "rp0", "rp1", "rp2", "q2a", "q2b", "s", "as"]
        if not self.mul:
            rand.remove("a")
            derived.remove("as")
        tensors = (
            [shared[k] for k in rand] + [partial[k] for k in derived] + [out[k] for k in derived]
        )
        if not all(
            t.dtype == torch.int64 and t.device.type == "cpu" and t.is_contiguous() for t in tensors
        ):
            return False
        n = out["rx"].numel()
        if n == 0:
            return False
        rows, prows = shared["r"].numel() // n, partial["rx"].numel() // n
        names = ("rx", "rp0", "rp1", "rp2", "q2a", "q2b", "s", "as")
        r_ptrs = [shared[k].data_ptr() if k in rand else 0 for k in ("r", "a", "m", "s_xor")]
        p_ptrs = [partial[k].data_ptr() if k in derived else 0 for k in names]
        o_ptrs = [out[k].data_ptr() if k in derived else 0 for k in names]
        types = _types_tensor()
        kern.ltz4_correct(*r_ptrs, *p_ptrs, *o_ptrs, types.data_ptr(), rows, prows, n)
        return True


@functools.cache
def _types_tensor() -> torch.Tensor:
    """The product types for the C correction kernel: ``_PROD1``, ``_PROD2`` masks, ``_Q3_POS``."""
    masks = [sum(1 << j for j in t) for t in (*_PROD1, *_PROD2)]
    return torch.tensor([*masks, *_Q3_POS], dtype=torch.int64)


def _and_all(words: Sequence[torch.Tensor]) -> torch.Tensor:
    out = words[0]
    for w in words[1:]:
        out = out & w
    return out


def _xor_public_(
    comm: Communicator, share: torch.Tensor, public: torch.Tensor | int
) -> torch.Tensor:
    """In place: party 0's XOR share of a fresh tensor absorbs a public word."""
    if comm.party_axis:
        share[0] ^= public
    elif comm.rank == 0:
        share ^= public
    return share


def _add_public_(comm: Communicator, share: torch.Tensor, public: torch.Tensor | int) -> None:
    """In place: party 0's additive share of a fresh tensor absorbs a public value."""
    if comm.party_axis:
        share[0] += public
    elif comm.rank == 0:
        share += public


def _rows(comm: Communicator) -> tuple[int, int, tuple[int, ...]]:
    """(share rows held here, whether row 0 is party 0's, the leading shape) for the C kernels."""
    if comm.party_axis:
        return comm.world_size, 1, (comm.world_size,)
    return 1, int(comm.rank == 0), ()


def _open_bytes(comm: Communicator, packed: torch.Tensor, label: str) -> torch.Tensor:
    """Additively open small per-byte fields, several per ring element.

    ``packed`` is uint8 with data shape ``(N, k)``; the fields inside never
    carry out of their bits (sums of ``world_size`` bits in fields of
    ``bit_length(world_size)`` bits), so 8 bytes travel as one int64.
    """
    ld = 1 if comm.party_axis else 0
    lead_shape = packed.shape[:ld]
    data = packed.shape[ld:]
    flat = packed.reshape(*lead_shape, -1)
    nbytes = flat.shape[-1] * flat.element_size()
    pad = (-nbytes) % 8
    raw = flat.view(torch.uint8)
    if pad:
        raw = torch.cat([raw, raw.new_zeros(*lead_shape, pad)], dim=-1)
    # An empty tensor's bytes cannot be viewed as words (torch checks the party axis's
    # stride); its words are an empty tensor too, opened like any other.
    words = raw.view(torch.int64) if nbytes else raw.new_zeros(*lead_shape, 0, dtype=torch.int64)
    (summed,) = comm.open([words], label)
    if not nbytes:
        return packed.new_zeros(data)
    out = summed.view(torch.uint8)[:nbytes].view(packed.dtype)
    return out.reshape(data)


_NIBBLE_BITS = 0x1111111111111111


def _parities(x: torch.Tensor) -> torch.Tensor:
    """Bit 0: parity of bits 0-31 of ``x >= 0``; bit 1: parity of bits 32-63.

    Each nibble's parity goes to its bottom bit, then one product adds up the
    nibbles of each half: bits 28-31 count the low half's ones, bits 60-63 the
    high half's (a count of at most 8 never carries out of its nibble).
    """
    x = x ^ (x >> 1)
    x = x ^ (x >> 2)
    x = (x & _NIBBLE_BITS) * 0x11111111
    return ((x >> 28) & 1) | ((x >> 59) & 2)


def _lanes(words: torch.Tensor, step: int, mask: int) -> torch.Tensor:
    """``(..., 64 / step)``: the fields ``(word >> step * k) & mask``."""
    sh = torch.arange(0, 64, step, device=words.device)
    return (words.unsqueeze(-1) >> sh) & mask


def _level1(comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """XOR shares of the 16 nibble groups' ``(G, P)`` at bits ``4k``, ``4k + 1`` (local).

    Bit-sliced over the nibbles: with ``N_A`` the AND of the bits ``n_j = ~c_j``,
    ``j`` in ``A`` (at bit ``4k``), the coefficient of ``r_T`` is ``N_A`` with
    ``A = {h} + ({h+1..3} - T)``, ``h = min T``, in ``G`` and ``N_{~T}`` in ``P``
    (from ``G = XOR_h g_h prod_{j > h} p_j``, ``P = prod_j p_j`` with ``p_j = n_j ^ r_j``,
    ``g_j = n_j r_j``); ``P``'s constant ``N_{0123}`` goes to party 0.
    """
    n = ~(c & _LOW63)
    prods: dict[int, torch.Tensor] = {1 << j: (n >> j) & _POS4 for j in range(4)}
    for mask in range(3, 16):
        if mask & (mask - 1):
            low = mask & -mask
            prods[mask] = prods[mask ^ low] & prods[low]
    words = [t["rx"] & _LOW63, t["rp0"], t["rp1"], t["rp2"]]
    sources = {1 << j: (0, j) for j in range(4)}
    sources |= {sum(1 << j for j in tt): (1 + i // 4, i % 4) for i, tt in enumerate(_PROD1)}
    g = torch.zeros_like(words[0])
    p = torch.zeros_like(words[0])
    for mask in range(1, 16):
        word, shift = sources[mask]
        v = words[word] >> shift if shift else words[word]
        h = (mask & -mask).bit_length() - 1
        g ^= prods[(1 << h) | (15 & ~((2 << h) - 1) & ~mask)] & v
        if mask != 15:
            p ^= prods[15 & ~mask] & v
        else:
            p ^= v & _POS4
    _xor_public_(comm, p, prods[15])
    return g | (p << 1)


def _gather_lane_index(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Bits ``16j + 4i`` of ``g`` to bit ``16j + i``, those of ``p`` to ``16j + 4 + i``."""
    out = g & _POS16
    out = out | (p << 4) & (_POS16 << 4)
    for i in range(1, 4):
        out |= (g >> (3 * i)) & (_POS16 << i)
        out |= (p >> (3 * i - 4) if i > 1 else p << 1) & (_POS16 << (4 + i))
    return out


def _level2(comm: Communicator, t: Mapping[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """Groups of 4 nibbles, one round: ``(G, P)`` of lane ``j`` at bits ``16j``, ``16j + 1``."""
    m = t["m"]
    masked = w ^ m
    dg, dp = open_fields(
        comm, [masked & _POS4, (masked >> 1) & _POS4], [_POS4, _POS4], 4, "ltz", clean=True
    )
    coef = _table_tensor(w.device)[_lanes(_gather_lane_index(dg, dp), 16, 255)]
    vec = _lanes(_gather_lane_index(m & _POS4, (m >> 1) & _POS4), 16, 255)
    vec |= _lanes(t["q2a"], 16, 0xFFFF) << 8
    vec |= _lanes(t["q2b"], 16, 63) << 24
    _xor_public_(comm, vec, 1 << _ONE2)
    pair = _parities(coef & (vec | (vec << 32)))
    return (pair << torch.arange(0, 64, 16, device=w.device)).sum(-1)


# Level 3 opens 6 fields: d of G0, G1, G2, P1, P2, P3 (G3 enters unmasked, P0 is unused).
_L3_BITS = (0, 16, 32, 17, 33, 49)  # where they sit in the level-2 word
_L3_VARS = (_G[0], _G[1], _G[2], _P[1], _P[2], _P[3])


def _l3_bytes(width: int) -> int:
    return -(-len(_L3_BITS) * width // 8)


def _level3(
    comm: Communicator, t: Mapping[str, torch.Tensor], w: torch.Tensor, width: int
) -> torch.Tensor:
    """XOR shares (int64, bit 0) of the carry ``G`` of the whole word, one round."""
    m = t["m"]
    masked = w ^ ((m >> 2) & (_POS16 | (_POS16 << 1)))
    packed = torch.zeros_like(w)
    for i, b in enumerate(_L3_BITS):
        packed |= ((masked >> b) & 1) << (i * width)
    nb = _l3_bytes(width)
    raw = packed.contiguous().view(torch.uint8).reshape(*w.shape, 8)[..., :nb]
    pub = _open_bytes(comm, raw, "ltz").to(torch.int64)
    value = pub[..., 0]
    for b in range(1, nb):
        value = value | (pub[..., b] << (8 * b))
    idx = torch.zeros_like(value)
    for i, v in enumerate(_L3_VARS):
        idx |= ((value >> (i * width)) & 1) << v
    coef = _table_tensor(w.device)[idx]
    vec = (w >> 48) & 1  # G3 itself
    vec <<= _G[3]
    for j in range(3):
        vec |= ((m >> (16 * j + 2)) & 1) << _G[j]
        vec |= ((m >> (16 * j + 19)) & 1) << _P[j + 1]
    q = t["q2b"]
    vec |= (((q >> 6) & 1023) | (((q >> 22) & 31) << 10)) << 8
    _xor_public_(comm, vec, 1 << _ONE2)
    return _parities(coef & vec) & 1


def _masked_msb(comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """XOR shares (bit 0 of uint8) of ``msb(c - r) ^ s`` after the two tree rounds.

    With the C kernels (CPU) each local step between two openings is one fused
    pass (:func:`_masked_msb_fused`); the openings, their payloads and the
    result are the same as the torch path's.
    """
    if ring.native() is not None and c.device.type == "cpu" and c.numel() > 0:
        return _masked_msb_fused(comm, t, c)
    width = field_width(comm.world_size)
    w = _level1(comm, t, c)
    w = _level2(comm, t, w)
    g = _level3(comm, t, w, width)
    g ^= (t["rx"] >> 63) & 1
    g ^= t["s_xor"] & 1
    _xor_public_(comm, g, (c >> 63) & 1)
    return g.to(torch.uint8)


def _masked_msb_fused(
    comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor
) -> torch.Tensor:
    """:func:`_masked_msb` with the local steps in C (same rounds, payloads and result)."""
    kern = ring.native()
    rows, first, lead = _rows(comm)
    n = c.numel()
    wf = field_width(comm.world_size)
    cpu = torch.device("cpu")
    types, tab2 = _types_tensor(), _table_tensor(cpu)
    cc = c.contiguous()
    w = {k: t[k].contiguous() for k in ("rx", "rp0", "rp1", "rp2", "m", "q2a", "q2b", "s_xor")}
    w1 = torch.empty(rows * n, dtype=torch.int64)
    kern.ltz4_level1(
        cc.data_ptr(), w["rx"].data_ptr(), w["rp0"].data_ptr(), w["rp1"].data_ptr(),
        w["rp2"].data_ptr(), types.data_ptr(), w1.data_ptr(), rows, n, first,
    )  # fmt: skip
    parts = 1 if 4 // wf >= 2 else 2  # as open_fields packs (G, P) fields of 4 bits
    packed = torch.empty((parts, rows * n), dtype=torch.int64)
    kern.ltz4_pack2(w1.data_ptr(), w["m"].data_ptr(), packed.data_ptr(), rows, n, wf)
    opened = comm.open([packed[q].view(*lead, n) for q in range(parts)], "ltz")
    pub = torch.stack(opened) if parts > 1 else opened[0].contiguous()
    w2 = torch.empty(rows * n, dtype=torch.int64)
    kern.ltz4_level2(
        pub.data_ptr(), w["m"].data_ptr(), w["q2a"].data_ptr(), w["q2b"].data_ptr(),
        tab2.data_ptr(), w2.data_ptr(), rows, n, wf, first,
    )  # fmt: skip
    nb = _l3_bytes(wf)
    nwords = -(-(n * nb) // 8)
    out = torch.empty((rows, nwords), dtype=torch.int64)
    kern.ltz4_pack3(w2.data_ptr(), w["m"].data_ptr(), out.data_ptr(), rows, n, wf, nb, nwords)
    (summed,) = comm.open([out.view(*lead, nwords)], "ltz")
    pub3 = summed.contiguous()
    msb = torch.empty(rows * n, dtype=torch.uint8)
    kern.ltz4_level3(
        pub3.data_ptr(), w2.data_ptr(), w["m"].data_ptr(), w["q2b"].data_ptr(),
        w["rx"].data_ptr(), w["s_xor"].data_ptr(), cc.data_ptr(), tab2.data_ptr(),
        msb.data_ptr(), rows, n, wf, nb, first,
    )  # fmt: skip
    return msb.view(*lead, *c.shape)


def _check_parties(comm: Communicator) -> None:
    if field_width(comm.world_size) > _MAX_FIELD_BITS:
        raise ValueError(
            f"comparison supports at most 15 parties; got world_size={comm.world_size}"
        )


def ltz_mul(
    comm: Communicator, dealer: Dealer, x: torch.Tensor, *, mul: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Additive shares of ``z = [x < 0]`` (0/1 ring bit) and, if ``mul``, of ``x * z``.

    Protocol ([EGKRS20]/[MRVW21] masked comparison, fan-in-4 carry tree with
    dealer-assisted multi-input ANDs as in [DFKNT06]/[PSSY21]):
        1. The dealer gives ``[r]``, ``<r>`` (XOR shares of its bits), ``<r_T>`` for
           every set ``T`` of 2-4 bits inside a nibble of ``r mod 2^63``, random
           masks for the two tree rounds with ``<a_T>`` for the products of masks
           they need, a doubly shared bit ``(<s>, [s])`` and, for the product,
           ``[a], [a s]``.
        2. Open ``c = x + r`` (and ``d = x - a``): 1 round.
        3. ``msb(x) = msb(c) ^ msb(r) ^ [c' < r']`` with ``c', r'`` the low 63 bits:
           the carry ``G`` of ``g_i = ~c_i r_i``, ``p_i = ~c_i ^ r_i``.
           Level 1 (local): each nibble's ``G = g3 ^ p3 g2 ^ p3 p2 g1 ^ p3 p2 p1 g0``
           and ``P = p3 p2 p1 p0`` are sums of public coefficients times ``r_T``.
           Levels 2 and 3 (1 round each): the same formulas on 4 groups' (G, P)
           (16 -> 4 -> 1). Open ``d_v = v ^ a_v`` for the inputs (level 2: the 32
           bits in 2-bit fields, one word; level 3: the 6 it needs, 2 bytes); each
           AND of a set ``S`` of inputs is
           ``XOR_{T subset S} (prod_{S - T} d_v) <a_T>`` (``a_T`` with one element
           is the mask itself, with none the constant 1 that party 0 adds).
        4. Open ``e = msb(x) ^ s`` (one byte): ``[z] = e + (1 - 2e)[s]`` and
           ``[x z] = e [x] + (1 - 2e)([a s] + d [s])``.

    Cost: 4 rounds. Bytes sent per element to each other party, for 2 or 3
    parties: 8 (``c``) + 8 (level 2) + 2 (level 3) + 1 (``e``) = 19, plus 8 for
    the product (``d``): 27. With 4 to 15 parties level 2 takes 16 bytes and
    level 3 3: 28 / 36 bytes. See :func:`cost`.
    Dealer: 3 (+1) random words from seeds and 7 (+1) correction words per
    element (56 / 64 bytes of correction shares to the last party).

    Security: semi-honest, dealer not colluding with any party. ``c`` and ``d`` are
    uniform; every opened tree input is one-time padded by its own mask bit of
    ``m``; ``e`` is padded by ``s``.
    """
    _check_parties(comm)
    shape = tuple(data_shape(comm, x))
    t = dealer.request(LtzMaterial(shape, mul=mul))
    if mul:
        c, d = comm.open([x + t["r"], x - t["a"]], "ltz")
    else:
        (c,) = comm.open([x + t["r"]], "ltz")
    msb = _masked_msb(comm, t, c)
    e = _open_bytes(comm, msb.unsqueeze(-1), "ltz").squeeze(-1).to(torch.int64) & 1
    on = e.bool()
    s_bit = t["s"]
    xs: torch.Tensor | None = None
    if mul:
        xs = d * s_bit
        xs += t["as"]  # [x s] = [a s] + d [s]
    # [z] = e + (1 - 2e)[s]: [s] where e = 0, 1 - [s] where e = 1.
    z = torch.where(on, -s_bit, s_bit)
    _add_public_(comm, z, e)
    if xs is None:
        return z, None
    # [x z] = e [x] + (1 - 2e)[x s]: [x s] where e = 0, [x] - [x s] where e = 1.
    xz = torch.where(on, x - xs, xs)
    return z, xz


def ltz(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> torch.Tensor:
    """Additive shares of the ring bit ``[x < 0]`` (signed reading of ``x``).

    See :func:`ltz_mul` for the protocol. Cost: 4 rounds, 19 bytes per element to
    each other party (2-3 parties); exact for every ``x``.
    """
    z, _ = ltz_mul(comm, dealer, x, mul=False)
    return z


def relu(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of ``max(x, 0)`` and of the ring bit ``[x >= 0]``.

    ``relu(x) = x - x [x < 0]`` with the product fused into :func:`ltz_mul`
    (no truncation: the bit is an unscaled ring 0/1). Cost: 4 rounds, 27 bytes
    per element to each other party (2-3 parties).
    """
    z, xz = ltz_mul(comm, dealer, x, mul=True)
    assert xz is not None
    xz.neg_().add_(x)  # x - x z
    z.neg_()
    _add_public_(comm, z, 1)  # 1 - z
    return xz, z


def cost(world_size: int, *, mul: bool = False) -> tuple[int, int]:
    """(rounds, bytes sent per element to each other party) of :func:`ltz_mul`.

    Rounds: ``c`` (and ``d``), the two tree levels, ``e``: 4. Bytes: 8 for ``c``
    (+ 8 for ``d``), 8 (2-3 parties) or 16 (4-15) for level 2, ``ceil(6 w / 8)``
    for level 3 (w = ``bit_length(world_size)``), 1 for ``e``.
    """
    w = field_width(world_size)
    nbytes = 8 * (1 + (1 if mul else 0))  # c (+ d)
    nbytes += 8 * (1 if 4 // w >= 2 else 2)  # level 2: (G, P) fields in each nibble
    nbytes += _l3_bytes(w)  # level 3: 6 fields
    nbytes += 1  # e
    return 4, nbytes

"""Exact secure comparison: the sign bit of a shared ring element (protocol layer).

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
  bits of an element in one int64 word (the last three on bytes);
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
from typing import ClassVar

import torch

from .. import ring
from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import data_shape
from .convert import field_width, open_fields

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
_ODD = ring.wrap(0xAAAAAAAAAAAAAAAA)
# Input strides of the tree levels done on whole int64 words; the last three
# levels (strides 8, 16, 32) work on bytes: pairs of adjacent bytes.
LEVELS: tuple[int, ...] = (2, 4, 8, 16, 32)
WORD_LEVELS: tuple[int, ...] = (2, 4)  # on whole int64 words
# The last three levels (strides 8, 16, 32) pair adjacent bytes; their masks sit in
# bytes 0-3, 4-5 and 6 of the ``mb``/``tb`` words. Set to () to run them on words too.
_BYTE_OFFSETS: tuple[int, ...] = (0, 4, 6)


def _positions(step: int) -> int:
    m = 0
    for p in range(0, 64, step):
        m |= 1 << p
    return ring.wrap(m)


_OUT = {s: _positions(2 * s) for s in LEVELS}  # output positions of level s
_BYTE_BIT0 = _positions(8)


def _and_mask_material(m: torch.Tensor, pos: int) -> torch.Tensor:
    """``(a | a << 1) & b`` for the masks packed in ``m``: ``a`` at offset 0, ``b`` at 1-2."""
    a = m & pos
    b = (m >> 1) & (pos | (pos << 1))
    return (a | (a << 1)) & b


@dataclass(frozen=True, slots=True)
class LtzMaterial:
    """Dealer material for one :func:`ltz` (and optionally the product ``x * bit``).

    Components (per element, all int64 words):
        r: uniform additive mask.
        a: uniform additive Beaver mask for ``x`` (only when ``mul``).
        m2, m4: random XOR words for the word-level AND rounds; in each output
            group the bit at offset 0 masks ``P_hi`` and offsets 1, 2 mask ``(G_lo, P_lo)``.
        mb: random XOR word, the same for the three byte-level rounds (bytes 0-3,
            4-5 and 6, one group per byte).
        s_xor: random XOR word; bit 0 is the conversion bit ``s``.
        rx: ``r`` itself, XOR-shared (bits of ``r``).
        rr: ``r_{2m+1} AND r_{2m}`` at bits ``2m`` and ``2m + 1`` (low 63 bits of r).
        t2, t4, tb: the AND of the masks, ``(a | a << 1) & b`` per group.
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
        comps += [Component(f"m{s}", Kind.RANDOM_XOR, sh) for s in WORD_LEVELS]
        if _BYTE_OFFSETS:
            comps.append(Component("mb", Kind.RANDOM_XOR, sh))
        comps.append(Component("s_xor", Kind.RANDOM_XOR, sh))
        comps += [Component("rx", Kind.DERIVED_XOR, sh), Component("rr", Kind.DERIVED_XOR, sh)]
        comps += [Component(f"t{s}", Kind.DERIVED_XOR, sh) for s in WORD_LEVELS]
        if _BYTE_OFFSETS:
            comps.append(Component("tb", Kind.DERIVED_XOR, sh))
        comps.append(Component("s", Kind.DERIVED, sh))
        if self.mul:
            comps.append(Component("as", Kind.DERIVED, sh))
        return tuple(comps)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        r = values["r"]
        low = r & _LOW63
        rr = (low >> 1) & low & _EVEN
        out = {"rx": r, "rr": rr | (rr << 1)}
        for s in WORD_LEVELS:
            out[f"t{s}"] = _and_mask_material(values[f"m{s}"], _OUT[s])
        if _BYTE_OFFSETS:
            # bit 0 of each byte masks P_hi, bits 1-2 mask (G_lo, P_lo); int64 ops are faster.
            out["tb"] = _and_mask_material(values["mb"], _BYTE_BIT0)
        bit = values["s_xor"] & 1
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
        if kern is None or WORD_LEVELS != (2, 4) or _BYTE_OFFSETS != (0, 4, 6):
            return False
        rand = ["r", "a", "m2", "m4", "mb", "s_xor"]
        derived = ["rx", "rr", "t2", "t4", "tb", "s", "as"]
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
        r_ptrs = [shared[k].data_ptr() if k in rand else 0 for k in
                  ("r", "a", "m2", "m4", "mb", "s_xor")]  # fmt: skip
        p_ptrs = [partial[k].data_ptr() if k in derived else 0 for k in
                  ("rx", "rr", "t2", "t4", "tb", "s", "as")]  # fmt: skip
        o_ptrs = [out[k].data_ptr() if k in derived else 0 for k in
                  ("rx", "rr", "t2", "t4", "tb", "s", "as")]  # fmt: skip
        kern.ltz_correct(*r_ptrs, *p_ptrs, *o_ptrs, rows, prows, n)
        return True


def _xor_public_(comm: Communicator, share: torch.Tensor, public: torch.Tensor) -> torch.Tensor:
    """In place: party 0's XOR share of a fresh tensor absorbs a public word."""
    if comm.party_axis:
        share[0] ^= public
    elif comm.rank == 0:
        share ^= public
    return share


def _open_bytes(comm: Communicator, packed: torch.Tensor, label: str) -> torch.Tensor:
    """Additively open small per-byte (or per-int16) fields, several per ring element.

    ``packed`` is uint8 or int16 with data shape ``(N, k)``; the fields inside never
    carry out of their byte (sums of ``world_size`` bits in fields of
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


def _word_level(
    comm: Communicator, w: torch.Tensor, m: torch.Tensor, t: torch.Tensor, s: int
) -> torch.Tensor:
    """One tree level on int64 words: groups at multiples of ``s`` (G at offset 0, P at 1)."""
    pos = _OUT[s]
    pos2 = pos | (pos << 1)
    f0 = (w >> (s + 1)) & pos  # P_hi
    a = m & pos
    f0 ^= a
    f1 = w & pos2  # (G_lo, P_lo)
    b = (m >> 1) & pos2
    f1 ^= b
    words = [f0, f1 & pos, (f1 >> 1) & pos]
    d, e0, e1 = open_fields(comm, words, [pos] * 3, 2 * s, "ltz", clean=True)
    d2 = d | (d << 1)
    e = e0 | (e1 << 1)
    # Beaver AND on two offsets at once: (d^a)(e^b) = de ^ d b ^ e a ^ ab.
    z = b & d2
    z ^= t
    a |= a << 1
    a &= e
    z ^= a
    _xor_public_(comm, z, d2 & e)
    g_hi = (w >> s) & pos
    z ^= g_hi
    return z


def _byte_level(
    comm: Communicator, v: torch.Tensor, mb: torch.Tensor, tb: torch.Tensor, width: int
) -> torch.Tensor:
    """One tree level on bytes ``(..., N, k) -> (..., N, k/2)``: pairs of adjacent bytes."""
    hi = v[..., 1::2]
    lo = v[..., 0::2]
    f0 = (hi >> 1) & 1  # P_hi
    a = mb & 1
    f0 ^= a
    f1 = lo & 3  # (G_lo, P_lo)
    b = (mb >> 1) & 3
    f1 ^= b
    if 3 * width <= 8:
        packed = f0 | ((f1 & 1) << width) | ((f1 & 2) << (2 * width - 1))
    else:
        f0 = f0.to(torch.int16)
        f1 = f1.to(torch.int16)
        packed = f0 | ((f1 & 1) << width) | ((f1 & 2) << (2 * width - 1))
    pub = _open_bytes(comm, packed, "ltz")
    d = (pub & 1).to(torch.uint8)
    e = (((pub >> width) & 1) | (((pub >> (2 * width)) & 1) << 1)).to(torch.uint8)
    d2 = d | (d << 1)
    z = b & d2
    z ^= tb
    a |= a << 1
    a &= e
    z ^= a
    _xor_public_(comm, z, d2 & e)
    z ^= hi & 1  # G_hi
    return z


def _bytes_of(words: torch.Tensor) -> torch.Tensor:
    """uint8 view ``(..., N, 8)`` of int64 words ``(..., N)`` (byte 0 least significant)."""
    return words.contiguous().view(torch.uint8).reshape(*words.shape, 8)


def _msb_xor(comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """XOR shares (bit 0 of uint8) of ``msb(c - r)`` from public ``c`` and the dealer's ``t``."""
    nc = ~(c & _LOW63)  # bit 63 set: neutral (r's bit 63 is excluded below)
    n_hi = (nc >> 1) & _EVEN
    n_lo = nc & _EVEN
    nhl = n_hi & n_lo
    # Level 1 (pairs, local). With g_i = ~c_i r_i and p_i = ~c_i ^ r_i, the pair's
    # G = g_h ^ p_h g_l (bit 2m) and P = p_h p_l (bit 2m+1) are sums of products of
    # one r-bit, or of r_h r_l (from the dealer), with public bits.
    r = t["rx"] & _LOW63
    w = r & (nhl | (n_lo << 1))
    w ^= (r >> 1) & n_hi
    w ^= (r << 1) & (n_hi << 1)
    w ^= t["rr"] & (n_lo | _ODD)
    _xor_public_(comm, w, nhl << 1)
    for s in WORD_LEVELS:
        w = _word_level(comm, w, t[f"m{s}"], t[f"t{s}"], s)
    if _BYTE_OFFSETS:
        # After stride 4: G at bit 0 and P at bit 1 of every byte. Bytes pair up next.
        width = field_width(comm.world_size)
        v = _bytes_of(w)
        mb = _bytes_of(t["mb"])
        tb = _bytes_of(t["tb"])
        k = 8
        for off in _BYTE_OFFSETS:
            v = _byte_level(
                comm, v, mb[..., off : off + k // 2], tb[..., off : off + k // 2], width
            )
            k //= 2
        g = v[..., 0] & 1
    else:
        g = (w & 1).to(torch.uint8)
    g ^= ((t["rx"] >> 63) & 1).to(torch.uint8)
    return _xor_public_(comm, g, ((c >> 63) & 1).to(torch.uint8))


def _masked_msb(comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """XOR shares (bit 0 of uint8) of ``msb(c - r) ^ s``: :func:`_msb_xor` then the mask ``s``.

    With the C kernels (2 or 3 parties, CPU) each local step between two
    openings is one fused pass (:func:`_masked_msb_fused`); the openings, their
    payloads and the result are the same as the torch path's.
    """
    kernels = ring.native()
    if (
        kernels is not None
        and field_width(comm.world_size) == 2
        and _BYTE_OFFSETS == (0, 4, 6)
        and c.device.type == "cpu"
        and c.numel() > 0
    ):
        return _masked_msb_fused(comm, t, c, kernels)
    msb = _msb_xor(comm, t, c)
    msb ^= (t["s_xor"] & 1).to(torch.uint8)
    return msb


def _masked_msb_fused(
    comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor, k: object
) -> torch.Tensor:
    """:func:`_masked_msb` with the local steps in C (same rounds, payloads and result)."""
    kern: object = k
    ld = 1 if comm.party_axis else 0
    rows = comm.world_size if comm.party_axis else 1
    lead = (rows,) if comm.party_axis else ()
    n = c.numel()
    first = int(bool(comm.party_axis) or comm.rank == 0)
    wf = field_width(comm.world_size)
    cc = c.contiguous()
    words = {name: t[name].contiguous() for name in ("rx", "rr", "mb", "tb", "s_xor")}
    w = torch.empty(rows * n, dtype=torch.int64)
    kern.ltz_level1(  # type: ignore[attr-defined]
        cc.data_ptr(), words["rx"].data_ptr(), words["rr"].data_ptr(), w.data_ptr(), rows, n, first
    )
    for s in WORD_LEVELS:
        m, tt = t[f"m{s}"].contiguous(), t[f"t{s}"].contiguous()
        per = (2 * s) // wf
        parts = -(-3 // per)
        packed = torch.empty((parts, rows * n), dtype=torch.int64)
        kern.ltz_word_pack(  # type: ignore[attr-defined]
            w.data_ptr(), m.data_ptr(), packed.data_ptr(), rows, n, s, wf
        )
        opened = comm.open([packed[q].view(*lead, n) for q in range(parts)], "ltz")
        pub = torch.stack(opened) if parts > 1 else opened[0].contiguous()
        z = torch.empty(rows * n, dtype=torch.int64)
        kern.ltz_word_finish(  # type: ignore[attr-defined]
            pub.data_ptr(), w.data_ptr(), m.data_ptr(), tt.data_ptr(), z.data_ptr(),
            rows, n, s, wf, first,
        )  # fmt: skip
        w = z
    v = w.view(torch.uint8)
    mb, tb = words["mb"], words["tb"]
    width = 8
    for off in _BYTE_OFFSETS:
        half = width // 2
        nwords = -(-(n * half) // 8)
        out = torch.empty((rows, nwords), dtype=torch.int64)
        kern.ltz_byte_pack(  # type: ignore[attr-defined]
            v.data_ptr(), mb.data_ptr(), out.data_ptr(), rows, n, width, off, wf, nwords
        )
        (summed,) = comm.open([out.view(*lead, nwords)], "ltz")
        pub = summed.contiguous()
        nv = torch.empty(rows * n * half, dtype=torch.uint8)
        kern.ltz_byte_finish(  # type: ignore[attr-defined]
            pub.data_ptr(), v.data_ptr(), mb.data_ptr(), tb.data_ptr(), nv.data_ptr(),
            rows, n, width, off, wf, first,
        )  # fmt: skip
        v = nv
        width = half
    msb = torch.empty(rows * n, dtype=torch.uint8)
    kern.ltz_final(  # type: ignore[attr-defined]
        v.data_ptr(), words["rx"].data_ptr(), words["s_xor"].data_ptr(), cc.data_ptr(),
        msb.data_ptr(), rows, n, first,
    )  # fmt: skip
    return msb.view(*t["rx"].shape[:ld], *c.shape)


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
           gates ``P_h G_l`` and ``P_h P_l`` (one Beaver AND on two bit offsets;
           the masked ``P_h`` and ``(G_l, P_l)`` are opened in bit fields). Strides
           2 and 4 run on whole int64 words (G at bit ``2sm``, P next to it); after
           them every byte holds one (G, P) pair and strides 8, 16, 32 pair
           adjacent bytes, so their openings shrink to 4, 2 and 1 byte.
        4. Open ``e = msb(x) ^ s`` (one byte): ``[z] = e + (1 - 2e)[s]`` and
           ``[x z] = e [x] + (1 - 2e)([a s] + d [s])``.

    Cost: 7 rounds. Bytes sent per element to each other party, for 2 or 3
    parties: 8 (``c``) + 16 + 8 (word levels) + 4 + 2 + 1 (byte levels) + 1 (``e``)
    = 40, plus 8 for the product (``d``): 48. With 4 to 7 parties the word levels
    need 24 + 16 bytes and the byte levels twice as much: 63 / 71 bytes. See
    :func:`cost`.
    Dealer: 5 (+1) random words from seeds and 6 (+1) correction words per element
    (48 / 56 bytes of correction shares to the last party).

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


def _add_public_(comm: Communicator, share: torch.Tensor, public: torch.Tensor | int) -> None:
    """In place: party 0's additive share of a fresh tensor absorbs a public value."""
    if comm.party_axis:
        share[0] += public
    elif comm.rank == 0:
        share += public


def ltz(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> torch.Tensor:
    """Additive shares of the ring bit ``[x < 0]`` (signed reading of ``x``).

    See :func:`ltz_mul` for the protocol. Cost: 7 rounds, 40 bytes per element to
    each other party (2-3 parties); exact for every ``x``.
    """
    z, _ = ltz_mul(comm, dealer, x, mul=False)
    return z


def relu(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of ``max(x, 0)`` and of the ring bit ``[x >= 0]``.

    ``relu(x) = x - x [x < 0]`` with the product fused into :func:`ltz_mul`
    (no truncation: the bit is an unscaled ring 0/1). Cost: 7 rounds, 48 bytes
    per element to each other party (2-3 parties).
    """
    z, xz = ltz_mul(comm, dealer, x, mul=True)
    assert xz is not None
    xz.neg_().add_(x)  # x - x z
    z.neg_()
    _add_public_(comm, z, 1)  # 1 - z
    return xz, z


def cost(world_size: int, *, mul: bool = False) -> tuple[int, int]:
    """(rounds, bytes sent per element to each other party) of :func:`ltz_mul`."""
    w = field_width(world_size)
    nbytes = 8 * (1 + (1 if mul else 0))  # c (+ d)
    for s in WORD_LEVELS:
        per = (2 * s) // w
        nbytes += 8 * -(-3 // per)
    if _BYTE_OFFSETS:
        per_byte = 1 if 3 * w <= 8 else 2
        nbytes += per_byte * (4 + 2 + 1)  # byte levels
    nbytes += 1  # e
    return 2 + len(LEVELS), nbytes

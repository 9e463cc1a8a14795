"""Linear layer -> ReLU fused across rounds (protocol layer).

A linear layer followed by a ReLU, as in an MLP, costs today a matmul (one
round), its truncation (one round), a comparison and the ReLU's product; its
backward then truncates the next layer's input gradient (one round) and
multiplies it by the ReLU's bit (one more round). Two facts remove the two
lone rounds:

* **Forward**: truncation keeps the sign, so ``relu(trunc(u)) = trunc(u) * [u >= 0]``
  with the comparison run on the *untruncated* product ``u`` (``|u| < 2^62``).
  The truncation's masked value ``u + 2^62 + r_t`` is opened in the comparison's
  first round, beside ``c = u + r``. The truncated value is
  ``T = P - R + sigma S`` ([EGKRS20] truncation: ``P``, ``sigma = +-1`` public
  from the opening; ``R = r_t mod 2^63 >> f``, ``S = msb(r_t) 2^(63-f)`` known to
  the dealer), and the comparison's bit is ``b = e XOR s`` with ``e`` public at its
  end and ``s`` a dealer bit. So ``T b = e T + (1 - 2e)(P [s] - [R s] + sigma [S s])``
  is *local* once the dealer also gives ``[R s]`` and ``[S s]``: no Beaver
  opening of ``T``, no truncation round.
* **Backward**: the gradient of the ReLU's output is the next layer's
  ``g @ W``, truncated. Multiplying by a 0/1 bit commutes with truncation, so
  ``trunc(g @ W) * b`` is finished locally the same way, if the dealer draws
  that truncation's mask ``r_b`` together with the forward's bit (the forward
  material carries ``[R_b s]``, ``[S_b s]``, and the provider keeps ``r_b`` for
  the backward's triple, :class:`LinearBackwardBitTriple`): ReLU's derivative
  costs no round.

References: [EGKRS20] Escudero, Ghosh, Keller, Rachuri, Scholl, "Improved
primitives for MPC over mixed arithmetic-binary circuits", CRYPTO 2020
(truncation with a known-zero MSB); the comparison of
:mod:`smpc.protocols.compare` ([EGKRS20]/[MRVW21] masked comparison); Beaver
matrix triples sharing masks across the forward and backward products as in
SecureML (Mohassel, Zhang, S&P 2017).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .. import ring
from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind, fused_correction
from ..errors import ShapeError
from ..sharing import add_public_, data_shape
from . import beaver, compare, truncation
from .beaver import LinearBackwardTriple
from .truncation import TRUNC_BOUND_BITS

__all__ = [
    "KeepingMatmulTriple",
    "ReluTruncMaterial",
    "LinearBackwardBitTriple",
    "ReluBit",
    "relu_trunc",
    "linear_forward_raw",
    "linear_relu_forward",
    "linear_backward",
    "bit_shares",
    "trunc_times_bit",
    "relu_trunc_rounds",
]


def _trunc_parts(r: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-R, S)`` of a truncation mask ``r``, as :class:`~smpc.dealer.base.TruncPair` derives."""
    return -((r & ((1 << 63) - 1)) >> f), (r >> 63) & (1 << (63 - f))


# ----------------------------------------------------------------- dealer requests
@dataclass(frozen=True, slots=True)
class KeepingMatmulTriple:
    """A plain matmul triple ``c = a @ b`` whose masks the provider keeps (no truncation mask).

    Like :class:`~smpc.dealer.base.KeepingMatmulTruncTriple` (``a`` kept under
    ``key``, ``b`` under ``key + 1``, until the layer's backward triple uses and
    releases them), for a product whose truncation happens elsewhere
    (:func:`linear_relu_forward`).
    """

    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    key: int

    def keeps(self) -> tuple[tuple[str, int], ...]:
        """``a`` under ``key``, ``b`` under ``key + 1`` (:class:`~smpc.dealer.base.KeepsMasks`)."""
        return (("a", self.key), ("b", self.key + 1))

    def transient(self) -> bool:
        """A forward pass's masks, dropped once the backward used them."""
        return True

    def components(self) -> tuple[Component, ...]:
        """``a``, ``b`` random; ``c`` derived."""
        (m, _), (_, n) = self.shape_a, self.shape_b
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("c", Kind.DERIVED, (m, n)),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``c = a @ b``."""
        return {"c": ring.matmul(values["a"], values["b"])}

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """``a @ b`` with the mask sums folded into the limb split (see ``fused_correction``)."""
        a, b = shared["a"], shared["b"]
        if a.dim() != 3 or b.dim() != 3:
            return False
        prod = ring.matmul_of_row_sums(a, b)
        torch.sub(prod, partial["c"].reshape(-1, *prod.shape).sum(0), out=out["c"])
        return True


# Components this module adds to the comparison's material, and their kinds.
_FWD = ("rt",)
_FWD_DERIVED = ("neg_rt_hi", "st", "rts", "sts")
_BWD = ("rb",)
_BWD_DERIVED = ("neg_rb_hi", "sb", "rbs", "sbs")


@dataclass(frozen=True, slots=True)
class ReluTruncMaterial:
    """The comparison's material (:class:`~smpc.protocols.compare.LtzMaterial`) plus truncations.

    Components beyond the comparison's (per element):
        rt: uniform mask of the forward's truncation.
        neg_rt_hi, st: its truncation material (as :class:`~smpc.dealer.base.TruncPair`).
        rts, sts: ``neg_rt_hi * s`` and ``st * s`` for the comparison's bit ``s``.
        rb, neg_rb_hi, sb, rbs, sbs: the same for the backward's truncation
            (only with ``key``); ``rb`` is kept under ``key`` for
            :class:`LinearBackwardBitTriple`, which uses and releases it.
    """

    shape: tuple[int, ...]
    frac_bits: int
    key: int | None = None

    def keeps(self) -> tuple[tuple[str, int], ...]:
        """``rb`` under ``key`` (nothing without a key; :class:`~smpc.dealer.base.KeepsMasks`)."""
        return () if self.key is None else (("rb", self.key),)

    def transient(self) -> bool:
        """A forward pass's mask, dropped once the backward used it."""
        return True

    def _ltz(self) -> compare.LtzMaterial:
        return compare.LtzMaterial(self.shape)

    def components(self) -> tuple[Component, ...]:
        """The comparison's random components, ours, its derived ones, ours."""
        inner = self._ltz().components()
        sh = self.shape
        mine = _FWD + (_BWD if self.key is not None else ())
        derived = _FWD_DERIVED + (_BWD_DERIVED if self.key is not None else ())
        return (
            *(c for c in inner if not c.kind.derived),
            *(Component(n, Kind.RANDOM, sh) for n in mine),
            *(c for c in inner if c.kind.derived),
            *(Component(n, Kind.DERIVED, sh) for n in derived),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The comparison's derived values, then the truncations' and their products with ``s``."""
        out = self._ltz().derive(values)
        bit = out["s"]
        pairs = [("rt", "neg_rt_hi", "st", "rts", "sts")]
        if self.key is not None:
            pairs.append(("rb", "neg_rb_hi", "sb", "rbs", "sbs"))
        for r, nh, s, rs, ss in pairs:
            neg_hi, top = _trunc_parts(values[r], self.frac_bits)
            out |= {nh: neg_hi, s: top, rs: neg_hi * bit, ss: top * bit}
        return out

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The comparison's corrections by its own fused form, then ours (a few torch passes).

        See :func:`smpc.dealer.base.fused_correction`; False (nothing usable
        written) where the comparison has no fused form for these tensors.
        """
        inner = self._ltz()
        names = {c.name for c in inner.components()}
        if not fused_correction(
            inner,
            {k: v for k, v in shared.items() if k in names},
            private,
            {k: v for k, v in partial.items() if k in names},
            {k: v for k, v in out.items() if k in names},
        ):
            return False
        sh = self.shape

        def total(rows: torch.Tensor) -> torch.Tensor:
            return rows.reshape(-1, *sh).sum(0)

        bit = out["s"] + total(partial["s"])
        pairs = [("rt", "neg_rt_hi", "st", "rts", "sts")]
        if self.key is not None:
            pairs.append(("rb", "neg_rb_hi", "sb", "rbs", "sbs"))
        for r, nh, s, rs, ss in pairs:
            neg_hi, top = _trunc_parts(total(shared[r]), self.frac_bits)
            for name, value in ((nh, neg_hi), (s, top), (rs, neg_hi * bit), (ss, top * bit)):
                torch.sub(value, total(partial[name]), out=out[name])
        return True


@dataclass(frozen=True, slots=True)
class LinearBackwardBitTriple:
    """A linear layer's backward triples, the input gradient masked by a kept ``r_b``.

    As :class:`~smpc.dealer.base.LinearBackwardTriple` for the weight gradient.

    The input gradient's product ``g @ W`` carries, instead of a fresh
    truncation mask, the ``rb`` that the :class:`ReluTruncMaterial` of the
    layer's input kept under ``bit_key``: ``cx = a @ wb^T + rb + 2^62``; its
    truncation material came with the forward. Uses and releases the forward
    masks (``key``, ``key + 1``) and ``rb``.
    """

    shape_g: tuple[int, int]
    shape_x: tuple[int, int]
    frac_bits: int
    key: int
    bit_key: int
    grad_weight: bool
    truncate_weight: bool

    def uses(self) -> tuple[tuple[str, int], ...]:
        """The forward's ``xa``, ``wb`` and the input ReLU's ``rb`` (``UsesMasks``)."""
        return (("xa", self.key), ("wb", self.key + 1), ("rb", self.bit_key))

    def releases(self) -> bool:
        """The dealer drops them after serving this request."""
        return True

    def _weight(self) -> LinearBackwardTriple:
        return LinearBackwardTriple(
            self.shape_g,
            self.shape_x,
            self.frac_bits,
            self.key,
            False,
            self.grad_weight,
            self.truncate_weight,
        )

    def components(self) -> tuple[Component, ...]:
        """``a``, ``cx``, then the weight gradient's components."""
        m, k = self.shape_g[0], self.shape_x[1]
        inner = self._weight().components()  # "a" first, then the weight's
        return (inner[0], Component("cx", Kind.DERIVED, (m, k)), *inner[1:])

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``cx = a @ wb^T + rb + 2^62`` and the weight gradient's values."""
        out = self._weight().derive(values)
        cx = ring.matmul(values["a"], values["wb"].t()).add_(values["rb"])
        cx += 1 << TRUNC_BOUND_BITS
        out["cx"] = cx
        return out

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The weight gradient's fused corrections, then ``cx`` (mask sums in the limb split)."""
        a = shared["a"]  # (rows, m, n); the kept xa, wb, rb come as one row each
        if a.dim() != 3:
            return False
        inner = {k: v for k, v in partial.items() if k != "cx"}
        if not fused_correction(
            self._weight(), shared, private, inner, {k: v for k, v in out.items() if k != "cx"}
        ):
            return False
        cx = ring.matmul_of_row_sums(a, shared["wb"].transpose(-1, -2))
        cx += shared["rb"].reshape(-1, *cx.shape).sum(0)
        cx += 1 << TRUNC_BOUND_BITS
        torch.sub(cx, partial["cx"].reshape(-1, *cx.shape).sum(0), out=out["cx"])
        return True


REQUEST_TYPES: tuple[type, ...] = (KeepingMatmulTriple, ReluTruncMaterial, LinearBackwardBitTriple)
"""This module's request classes (a distributed provider must accept them)."""


# ----------------------------------------------------------------- protocols
@dataclass(frozen=True)
class ReluBit:
    """A ReLU's bit ``b = [u >= 0] = e XOR s``, kept by the parties for the backward.

    Attributes:
        e: the public 0/1 (int64) half of the bit.
        s: this runtime's additive shares of the dealer bit ``s``.
        key: where the provider keeps the backward truncation mask ``rb``
            (``None``: no fused backward).
        neg_rb_hi, sb, rbs, sbs: shares of the backward truncation material
            and of its products with ``s`` (``None`` without ``key``).
    """

    e: torch.Tensor
    s: torch.Tensor
    key: int | None = None
    neg_rb_hi: torch.Tensor | None = None
    sb: torch.Tensor | None = None
    rbs: torch.Tensor | None = None
    sbs: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"ReluBit(shape={tuple(self.e.shape)}, key={self.key})"


def bit_shares(comm: Communicator, bit: ReluBit) -> torch.Tensor:
    """Additive shares of the ring 0/1 ``e XOR s = e + (1 - 2e) s``. Cost: local."""
    on = bit.e.bool()
    z = torch.where(on, -bit.s, bit.s)
    return add_public_(comm, z, bit.e)


def trunc_times_bit(
    comm: Communicator,
    c: torch.Tensor,
    neg_r_hi: torch.Tensor,
    s_top: torch.Tensor,
    rs: torch.Tensor,
    ss: torch.Tensor,
    bit: ReluBit,
    frac_bits: int,
) -> torch.Tensor:
    """Shares of ``trunc(x) * b`` from the opened ``c = x + 2^62 + r`` (local).

    ``trunc(x) = T = P + [-R] + sigma [S]`` (:func:`smpc.protocols.truncation.finish`:
    ``P`` public, added by party 0, ``sigma = +-1`` the sign of ``c``), so with
    ``b = e + (1 - 2e) s``: ``T b = e T + (1 - 2e)(P [s] + [-R s] + sigma [S s])``;
    ``rs = [-R s]``, ``ss = [S s]`` come from the dealer. Cost: local.
    """
    f = frac_bits
    t = truncation.finish(comm, c, neg_r_hi, s_top, f)
    pub = ((c >> f) & ((1 << (64 - f)) - 1)) - (1 << (TRUNC_BOUND_BITS - f))
    ts = torch.where(c < 0, -ss, ss)  # sigma [S s]
    ts += rs
    ts.addcmul_(bit.s, pub)  # P [s]
    return torch.where(bit.e.bool(), t - ts, ts)


def _ltz_open_e(comm: Communicator, t: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """The comparison after its first opening: the public ``e = msb(x) XOR s`` (0/1 int64).

    Everything of :mod:`smpc.protocols.compare` this module relies on: given
    the comparison's material ``t`` and the opened ``c = x + r``, the rounds of
    the prefix tree and the opening of ``e``.
    """
    msb = compare._masked_msb(comm, t, c)
    return compare._open_bytes(comm, msb.unsqueeze(-1), "ltz").squeeze(-1).to(torch.int64) & 1


def relu_trunc(
    comm: Communicator, dealer: Dealer, u: torch.Tensor, frac_bits: int, key: int | None = None
) -> tuple[torch.Tensor, ReluBit]:
    """Shares of ``relu(trunc(u))`` (``u`` signed, ``|u| < 2^62``) and the ReLU bit ``[u >= 0]``.

    Protocol (module docstring):
        1. The dealer gives the comparison's material and ``[r_t]``, ``[-R_t]``,
           ``[S_t]``, ``[-R_t s]``, ``[S_t s]`` (:class:`ReluTruncMaterial`);
           with ``key`` also those of a backward mask ``r_b``, which it keeps.
        2. Open ``c = u + r`` and ``c_t = u + 2^62 + r_t`` (round 1).
        3. The comparison's remaining rounds give the public
           ``e = msb(u) XOR s``; the ReLU bit is ``b = (1 - e) XOR s``.
        4. ``trunc(u) * b`` locally (:func:`trunc_times_bit`).

    The result is ``relu(T)`` for the truncation ``T`` of ``u`` (``u < 0``
    gives ``T <= 0``), within one ulp of ``relu(u / 2^f)``.

    Cost: the comparison's rounds (:func:`relu_trunc_rounds`), no truncation
    round; bytes per element to each other party: the comparison's (``ltz``,
    no product) plus 8 for ``c_t``, the same as :func:`smpc.protocols.compare.relu`
    (whose 8 bytes of the product's opening are not needed) and 8 fewer than
    it plus a truncation. Security: semi-honest, non-colluding dealer; ``c_t``
    is one-time padded by ``r_t``, everything else is the comparison's.
    """
    compare._check_parties(comm)
    shape = tuple(data_shape(comm, u))
    t = dealer.request(ReluTruncMaterial(shape, frac_bits, key))
    masked_t = add_public_(comm, u + t["rt"], 1 << TRUNC_BOUND_BITS)
    c, ct = comm.open([u + t["r"], masked_t], "ltz")
    e = 1 - _ltz_open_e(comm, t, c)  # [u >= 0] = NOT msb(u)
    back = {} if key is None else {n: t[n] for n in _BWD_DERIVED}
    bit = ReluBit(e, t["s"], key, **back)
    out = trunc_times_bit(comm, ct, t["neg_rt_hi"], t["st"], t["rts"], t["sts"], bit, frac_bits)
    return out, bit


def relu_trunc_rounds(world_size: int) -> int:
    """Rounds of :func:`relu_trunc`: the comparison's."""
    return compare.cost(world_size)[0]


def linear_forward_raw(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    frac_bits: int,
    key: int,
) -> tuple[torch.Tensor, beaver.LinearMasks]:
    """Shares of the untruncated ``x @ wt + bias`` (scale ``2^(2f)``) for 2-D shares; masks kept.

    Protocol: the matmul on a :class:`KeepingMatmulTriple` (open ``x - xa``,
    ``wt - wb``), the bias added at scale ``2^(2f)`` (local, exact). The caller
    truncates (:func:`relu_trunc`, or a truncation that other values share).

    Cost: 1 round; ``numel(x) + numel(wt)`` ring elements to each other party.
    Security: as :func:`smpc.protocols.beaver.linear_forward`.
    """
    shape_x, shape_w = beaver._shape2(comm, x), beaver._shape2(comm, wt)
    t = dealer.request(KeepingMatmulTriple(shape_x, shape_w, key))
    e, f = comm.open_masked([(x, t["a"]), (wt, t["b"])], "matmul")
    u = beaver._local_step(comm, ring.MatmulOp(), t, e, f)
    if bias is not None:
        u = u + (bias << frac_bits).unsqueeze(-2)
    return u, beaver.LinearMasks(key, t["a"], t["b"], e, f)


def linear_relu_forward(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    wt: torch.Tensor,
    bias: torch.Tensor | None,
    frac_bits: int,
    key: int,
    bit_key: int | None,
) -> tuple[torch.Tensor, beaver.LinearMasks, ReluBit]:
    """``relu(x @ wt + bias)`` at scale ``2^f`` for 2-D shares; masks kept for the backward.

    Protocol: :func:`linear_forward_raw`, then :func:`relu_trunc` on the
    untruncated product.

    Cost: 1 round plus the comparison's; ``numel(x) + numel(wt)`` ring
    elements then :func:`relu_trunc`'s bytes. Against a linear layer and a
    ReLU one after the other: one round and ``8 numel(out)`` bytes fewer.
    Security: as :func:`smpc.protocols.beaver.linear_forward` and :func:`relu_trunc`.
    """
    u, masks = linear_forward_raw(comm, dealer, x, wt, bias, frac_bits, key)
    out, bit = relu_trunc(comm, dealer, u, frac_bits, bit_key)
    return out, masks, bit


def linear_backward(
    comm: Communicator,
    dealer: Dealer,
    g: torch.Tensor,
    masks: beaver.LinearMasks,
    frac_bits: int,
    bit: ReluBit,
    *,
    grad_weight: bool,
    truncate_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`smpc.protocols.beaver.linear_backward` with the input's ReLU derivative fused.

    Returns ``(trunc(g @ W) * b, g^T @ x)`` for the bit ``b`` of the ReLU
    whose output is this layer's input (kept by :func:`relu_trunc` with a key).

    Protocol: as :func:`smpc.protocols.beaver.linear_backward` on a
    :class:`LinearBackwardBitTriple`: open ``eg = g - a`` (round 1); the local
    steps; open the masked ``g @ W + rb + 2^62`` (and the weight's if
    ``truncate_weight``: round 2); finish ``trunc(g @ W) * b`` locally
    (:func:`trunc_times_bit` with the material that came with the forward).

    Cost: 2 rounds, the bytes of :func:`smpc.protocols.beaver.linear_backward`:
    the ReLU's backward product (1 round, ``2 numel`` ring elements) is gone.
    Security: as :func:`smpc.protocols.beaver.linear_backward`; ``rb`` masks one
    opening only.
    """
    if bit.key is None or bit.neg_rb_hi is None or bit.sb is None:
        raise ValueError("linear_backward: `bit` was kept without a key (no backward material)")
    assert bit.rbs is not None and bit.sbs is not None
    m, n = beaver._shape2(comm, g)
    k = int(masks.e.shape[-1])
    want = (int(masks.e.shape[0]), int(masks.f.shape[-1]))
    if (m, n) != want:
        raise ShapeError(
            f"linear_backward: `g` must have the forward output's shape {want}; got {(m, n)}"
        )
    if tuple(bit.e.shape) != (m, k):
        raise ShapeError(
            f"linear_backward: `bit` must have the input's shape {(m, k)}; got {tuple(bit.e.shape)}"
        )
    t = dealer.request(
        LinearBackwardBitTriple(
            (m, n), (m, k), frac_bits, masks.key, bit.key, grad_weight, truncate_weight
        )
    )
    a = t["a"]
    (eg,) = comm.open_masked([(g, a)], "matmul")
    mm = ring.MatmulOp()
    zx = beaver._local_step(
        comm, mm, beaver._Renamed(a, masks.wb.transpose(-1, -2), t, "cx"), eg, masks.f.t()
    )
    zw = None
    if grad_weight:
        zw = beaver._local_step(
            comm, mm, beaver._Renamed(a.transpose(-1, -2), masks.xa, t, "cw"), eg.t(), masks.e
        )
    opened = comm.open([zx] if zw is None or not truncate_weight else [zx, zw], "trunc")
    gx = trunc_times_bit(comm, opened[0], bit.neg_rb_hi, bit.sb, bit.rbs, bit.sbs, bit, frac_bits)
    if zw is not None and truncate_weight:
        zw = truncation.finish(comm, opened[1], t["neg_rw_hi"], t["sw"], frac_bits)
    return gx, zw

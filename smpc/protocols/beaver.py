"""Multiplication of shared values with Beaver triples (protocol layer).

Exact modulo 2^64: these protocols know nothing of fixed point; the tensor
layer truncates afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from .. import ring
from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..errors import ShapeError
from ..sharing import add_public, add_public_, addcmul_public_, data_shape, lead
from . import truncation

__all__ = [
    "mul",
    "mul_trunc",
    "square",
    "bilinear",
    "bilinear_trunc",
    "bilinear_trunc_many",
    "matmul",
    "conv2d",
    "MaskedOperand",
    "mask_operand",
    "bilinear_trunc_kept",
    "LinearMasks",
    "linear_forward",
    "linear_backward",
]


def _shape(comm: Communicator, share: torch.Tensor) -> tuple[int, ...]:
    return tuple(data_shape(comm, share))


def _first(comm: Communicator) -> bool:
    """Whether the local share rows start with party 0's (which adds public terms)."""
    return comm.holds_party0


def mul(comm: Communicator, dealer: Dealer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Shares of ``x * y`` (elementwise, broadcasting) from shares of ``x`` and ``y``.

    Protocol (Beaver, CRYPTO'91):
        1. The dealer gives ``[a], [b], [c]`` with ``c = a * b``.
        2. Open ``e = x - a`` and ``f = y - b`` (one batched opening).
        3. ``[z] = [c] + e * [b] + f * [a] + e * f`` (the public term added by party 0).

    Cost: 1 round; each party sends ``numel(x) + numel(y)`` ring elements to each
    other party (two per element for same-shaped operands and two parties).
    Dealer: one triple; a single correction share ``c`` travels.

    Security: semi-honest; ``e`` and ``f`` are uniform because ``a`` and ``b`` are;
    the dealer must not collude with any party.
    """
    t = dealer.request(MulTriple(_shape(comm, x), _shape(comm, y)))
    e, f = comm.open_masked([(x, t["a"]), (y, t["b"])], "mul")
    return _mul_local(comm, t, e, f)


def _mul_local(
    comm: Communicator, t: Mapping[str, torch.Tensor], e: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """``[c] + e [b] + f [a] + e f`` (public term on party 0): one C pass, or torch's."""
    c = t["c"]
    fused = ring.fused_beaver(c, e, t["b"], f, t["a"], first=_first(comm))
    if fused is not None:
        return fused
    # One fused pass each: z = c + e*b, then z += a*f.
    z = torch.addcmul(c, e, t["b"]) if c.shape == t["b"].shape else c + e * t["b"]
    if z.shape == t["a"].shape:
        z.addcmul_(t["a"], f)
    else:
        z = z + t["a"] * f
    if tuple(data_shape(comm, z)) == tuple(ring.broadcast_shapes(e.shape, f.shape)):
        return addcmul_public_(comm, z, e, f)
    return add_public(comm, z, e * f)


def square(comm: Communicator, dealer: Dealer, x: torch.Tensor) -> torch.Tensor:
    """Shares of ``x * x``.

    Protocol: dealer gives ``[a], [a^2]``; open ``e = x - a``;
    ``[x^2] = [a^2] + 2 e [a] + e^2``.

    Cost: 1 round; one ring element per element sent to each other party.
    Security: as :func:`mul`.
    """
    t = dealer.request(SquarePair(_shape(comm, x)))
    (e,) = comm.open_masked([(x, t["a"])], "square")
    z = torch.addcmul(t["c"], 2 * e, t["a"])
    return add_public_(comm, z, e * e)


def bilinear(
    comm: Communicator, dealer: Dealer, op: ring.BilinearOp, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Shares of ``op(x, y)`` for a bilinear ``op`` (matmul, conv2d).

    Protocol (Beaver triples for matrices, as in SecureML, S&P'17):
        1. The dealer gives ``[a], [b], [c]`` with ``c = op(a, b)``.
        2. Open ``e = x - a``, ``f = y - b``.
        3. ``[z] = [c] + op(e, [b] + f·δ0) + op([a], f)`` where δ0 marks party 0
           (so that party 0 alone adds ``op(e, f)``; two ring products per party).

    Cost: 1 round; ``numel(x) + numel(y)`` ring elements sent to each other party.
    Dealer: one triple, a single correction share ``c`` travels.
    Security: semi-honest, non-colluding dealer.
    """
    t = dealer.request(BilinearTriple(op, _shape(comm, x), _shape(comm, y)))
    e, f = comm.open_masked(
        [(x, t["a"]), (y, t["b"])], type(op).__name__.removesuffix("Op").lower()
    )
    return _local_step(comm, op, t, e, f)


def _local_step(
    comm: Communicator,
    op: ring.BilinearOp,
    t: Mapping[str, torch.Tensor],
    e: torch.Tensor,
    f: torch.Tensor,
) -> torch.Tensor:
    """``[c] + op(e, [b] + f·δ0) + op([a], f)``: each party's share of ``op(x, y)``."""
    # ``c`` is read last: on the last party it may still be on its way from the provider.
    if isinstance(op, ring.MatmulOp):
        z = ring.beaver_matmul_local(lambda: t["c"], e, t["b"], f, t["a"], first=_first(comm))
        if z is not None:
            return z
    b_plus = add_public(comm, t["b"], f)
    left = _apply(comm, op, e, b_plus, share_left=False)
    right = _apply(comm, op, t["a"], f, share_left=True)
    c = t["c"]
    if left.shape == right.shape == c.shape:
        return left.add_(right).add_(c)
    return c + left + right


def _apply(
    comm: Communicator, op: ring.BilinearOp, x: torch.Tensor, y: torch.Tensor, *, share_left: bool
) -> torch.Tensor:
    """``op`` between a share (with a possible party axis) and a public tensor."""
    if isinstance(op, ring.MatmulOp) or not lead(comm):
        return op(x, y)
    # convolutions: fold the party axis into the batch (share on the left) or the
    # output channels (share on the right).
    n = comm.world_size
    if share_left:
        out = op(x.reshape(-1, *x.shape[2:]), y)
        return out.reshape(n, -1, *out.shape[1:])
    if op.groups != 1:
        return torch.stack([op(x, y[i]) for i in range(n)])
    if isinstance(op, ring.ConvTranspose2dOp):  # w (n, C, O, kh, kw): outputs on axis 2
        c, o = y.shape[1], y.shape[2]
        w = y.transpose(0, 1).reshape(c, n * o, *y.shape[3:])
    else:  # w (n, O, C, kh, kw)
        o = y.shape[1]
        w = y.reshape(n * o, *y.shape[2:])
    out = op(x, w)  # (N, n*O, H, W)
    return out.reshape(out.shape[0], n, o, *out.shape[2:]).transpose(0, 1).contiguous()


def matmul(comm: Communicator, dealer: Dealer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Shares of ``x @ y``: :func:`bilinear` with matmul (all batch shapes torch allows)."""
    return bilinear(comm, dealer, ring.MatmulOp(), x, y)


def conv2d(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """Shares of ``conv2d(x, w)``: :func:`bilinear` with a convolution."""
    op = ring.Conv2dOp(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return bilinear(comm, dealer, op, x, w)


def mul_trunc(
    comm: Communicator, dealer: Dealer, x: torch.Tensor, y: torch.Tensor, frac_bits: int
) -> torch.Tensor:
    """Fixed-point product: shares of ``(x * y) >> f`` (within one ulp) in two rounds.

    Protocol (Beaver product with the truncation mask folded into the triple,
    [EGKRS20] truncation):
        1. The dealer gives ``[a], [b], [c]`` with ``c = a*b + r + 2^62`` for a
           provider-private uniform ``r``, and ``[-r_hi], [s]`` for ``r`` as in
           :func:`smpc.protocols.truncation.trunc`.
        2. Open ``e = x - a``, ``f = y - b`` (round 1).
        3. ``[w] = [c] + e [b] + f [a] + e f`` = ``[x y + 2^62 + r]``; open ``w`` (round 2).
        4. Finish the truncation locally from ``w``.

    Cost: 2 rounds; ``2 numel`` then ``numel`` ring elements to each other party
    (the same as :func:`mul` then ``trunc``) with one fewer dealer stream and
    fewer local passes: the mask never exists as a share.
    Security: semi-honest, non-colluding dealer; ``w`` is uniform given ``x y``.
    """
    t = dealer.request(MulTruncTriple(_shape(comm, x), _shape(comm, y), frac_bits))
    e, f = comm.open_masked([(x, t["a"]), (y, t["b"])], "mul")
    z = _mul_local(comm, t, e, f)
    (w,) = comm.open([z], "trunc")
    return truncation.finish(comm, w, t["neg_r_hi"], t["s"], frac_bits)


def bilinear_trunc(
    comm: Communicator,
    dealer: Dealer,
    op: ring.BilinearOp,
    x: torch.Tensor,
    y: torch.Tensor,
    frac_bits: int,
) -> torch.Tensor:
    """Fixed-point bilinear op: shares of ``op(x, y) >> f`` (within one ulp) in two rounds.

    Protocol: :func:`bilinear` with a triple ``c = op(a, b) + r + 2^62`` for a
    provider-private ``r``, then one opening of the masked result and the local
    end of the [EGKRS20] truncation, as in :func:`mul_trunc`.

    Cost: 2 rounds; ``numel(x) + numel(y)``, then ``numel(out)`` ring elements to
    each other party. Security: semi-honest, non-colluding dealer.
    """
    return bilinear_trunc_many(comm, dealer, [(op, x, y)], frac_bits)[0]


def bilinear_trunc_many(
    comm: Communicator,
    dealer: Dealer,
    items: Sequence[tuple[ring.BilinearOp, torch.Tensor, torch.Tensor]],
    frac_bits: int,
    *,
    truncate: Sequence[bool] | None = None,
) -> list[torch.Tensor]:
    """Several independent :func:`bilinear_trunc` products in the rounds of one.

    Protocol: one triple per product; every ``e = x - a``, ``f = y - b`` opened
    in one batched opening, the local steps, every masked result opened in
    one batched opening, and the local ends of the truncations. Used where a
    backward pass needs two products of the same gradient (``g @ W`` and
    ``g^T @ x``). ``truncate[i] = False`` leaves product ``i`` untruncated (a
    plain :func:`bilinear` triple, nothing in the second round): shares of
    ``op(x, y)`` at the doubled scale, for a caller that folds the truncation
    into a later one (the optimizer, for a weight's gradient).

    Cost: 2 rounds in all (instead of 2 per product; 1 if nothing is
    truncated); the same bytes as the products one by one. Security: as
    :func:`bilinear_trunc` (Beaver matrix triples as in SecureML, S&P'17;
    [EGKRS20] truncation), every opening one-time padded by its own triple's masks.
    """
    if not items:
        return []
    cut = [True] * len(items) if truncate is None else list(truncate)
    if len(cut) != len(items):
        raise ValueError(f"`truncate` must have {len(items)} flags; got {len(cut)}")
    triples = [
        dealer.request(BilinearTruncTriple(op, _shape(comm, x), _shape(comm, y), frac_bits))
        if c
        else dealer.request(BilinearTriple(op, _shape(comm, x), _shape(comm, y)))
        for (op, x, y), c in zip(items, cut, strict=True)
    ]
    masked: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (_, x, y), t in zip(items, triples, strict=True):
        masked += [(x, t["a"]), (y, t["b"])]
    label = type(items[0][0]).__name__.removesuffix("Op").lower()
    opened = comm.open_masked(masked, label)
    zs = [
        _local_step(comm, op, t, opened[2 * i], opened[2 * i + 1])
        for i, ((op, _, _), t) in enumerate(zip(items, triples, strict=True))
    ]
    if not any(cut):
        return zs
    ws = iter(comm.open([z for z, c in zip(zs, cut, strict=True) if c], "trunc"))
    return [
        truncation.finish(comm, next(ws), t["neg_r_hi"], t["s"], frac_bits) if c else z
        for z, t, c in zip(zs, triples, cut, strict=True)
    ]


@dataclass(frozen=True)
class MaskedOperand:
    """A right operand opened once under a mask that later products reuse.

    Attributes:
        key: the provider's name for the kept mask ``b``.
        b: this runtime's shares of ``b``.
        f: the public ``y - b``.
    """

    key: int
    b: torch.Tensor
    f: torch.Tensor


def mask_operand(comm: Communicator, dealer: Dealer, y: torch.Tensor, key: int) -> MaskedOperand:
    """Mask and open a right operand once, for :func:`bilinear_trunc_kept`.

    Protocol: the dealer draws ``[b]`` and keeps ``b`` under ``key``; open
    ``f = y - b``. Cost: 1 round, ``numel(y)`` ring elements to each other party.
    Security: ``f`` is uniform; every later product with this operand reveals
    the same ``f`` again, nothing more (each uses a fresh left mask ``a``).
    """
    shape = _shape(comm, y)
    t = dealer.request(OperandMask(shape, key))
    (f,) = comm.open_masked([(y, t["b"])], "mask")
    return MaskedOperand(key, t["b"], f)


def bilinear_trunc_kept(
    comm: Communicator,
    dealer: Dealer,
    op: ring.BilinearOp,
    x: torch.Tensor,
    y: MaskedOperand,
    frac_bits: int,
) -> torch.Tensor:
    """:func:`bilinear_trunc` with a right operand masked once by :func:`mask_operand`.

    Protocol: the dealer gives ``[a]`` and ``[c] = [op(a, b) + r + 2^62]`` on the
    kept ``b`` (plus the truncation material); open ``e = x - a`` only; the
    local step and the truncation are as in :func:`bilinear_trunc`.

    Cost: 2 rounds; ``numel(x)`` then ``numel(out)`` ring elements to each other
    party (the operand's ``numel(y)`` is not sent again). Security: semi-honest,
    non-colluding dealer; ``a`` and ``r`` are fresh for every product.
    """
    shape_b = tuple(y.f.shape)
    t = dealer.request(KeptBilinearTruncTriple(op, _shape(comm, x), shape_b, frac_bits, y.key))
    (e,) = comm.open_masked([(x, t["a"])], type(op).__name__.removesuffix("Op").lower())
    z = _local_step(comm, op, {"a": t["a"], "b": y.b, "c": t["c"]}, e, y.f)
    (w,) = comm.open([z], "trunc")
    return truncation.finish(comm, w, t["neg_r_hi"], t["s"], frac_bits)


# ----------------------------------------------------------------- linear layers
@dataclass(frozen=True)
class LinearMasks:
    """What a linear layer's forward ``x @ W^T`` keeps for its backward.

    Attributes:
        key: the provider's name for the kept masks (``key`` and ``key + 1``).
        xa: this runtime's shares of the mask of ``x`` (``m x k``).
        wb: this runtime's shares of the mask of ``W^T`` (``k x n``).
        e: the public ``x - xa``.
        f: the public ``W^T - wb``.
    """

    key: int
    xa: torch.Tensor
    wb: torch.Tensor
    e: torch.Tensor
    f: torch.Tensor


def linear_forward(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    wt: torch.Tensor,
    frac_bits: int,
    key: int,
) -> tuple[torch.Tensor, LinearMasks]:
    """Shares of ``(x @ wt) >> f`` for 2-D shares, keeping the masks for :func:`linear_backward`.

    Protocol: :func:`bilinear_trunc` of a matmul whose triple's masks the
    provider keeps (:class:`KeepingMatmulTruncTriple`); the
    parties keep their mask shares and the opened ``e = x - xa``, ``f = wt - wb``.

    Cost: as :func:`bilinear_trunc` (2 rounds; ``numel(x) + numel(wt)`` then
    ``numel(out)`` ring elements to each other party). Security: as
    :func:`bilinear_trunc`; the backward reuses ``e`` and ``f``, which are
    already public, with fresh masks for everything it opens.
    """
    t = dealer.request(
        KeepingMatmulTruncTriple(_shape2(comm, x), _shape2(comm, wt), frac_bits, key)
    )
    e, f = comm.open_masked([(x, t["a"]), (wt, t["b"])], "matmul")
    z = _local_step(comm, ring.MatmulOp(), t, e, f)
    (w,) = comm.open([z], "trunc")
    out = truncation.finish(comm, w, t["neg_r_hi"], t["s"], frac_bits)
    return out, LinearMasks(key, t["a"], t["b"], e, f)


class _Renamed(Mapping[str, torch.Tensor]):
    """A triple view for :func:`_local_step`: ``a``/``b`` given, ``c`` read lazily from ``t``."""

    def __init__(
        self, a: torch.Tensor, b: torch.Tensor, t: Mapping[str, torch.Tensor], c: str
    ) -> None:
        self._items = {"a": a, "b": b}
        self._t, self._c = t, c

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[self._c] if name == "c" else self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(("a", "b", "c"))

    def __len__(self) -> int:
        return 3


def linear_backward(
    comm: Communicator,
    dealer: Dealer,
    g: torch.Tensor,
    masks: LinearMasks,
    frac_bits: int,
    *,
    grad_input: bool,
    grad_weight: bool,
    truncate_weight: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A linear layer's gradients ``g @ W`` and ``g^T @ x`` on its forward's kept masks.

    Protocol (Beaver matrix triples sharing masks, as SecureML reuses the
    masked data across products, S&P'17; [EGKRS20] truncation):
        1. The dealer draws one mask ``[a]`` for ``g`` and gives
           ``[cx] = [a @ wb^T + rx + 2^62]``, ``[cw] = [a^T @ xa]`` on the
           forward's kept masks (:class:`LinearBackwardTriple`).
        2. Open ``eg = g - a`` (round 1): the only new opening, since
           ``x - xa`` and ``W^T - wb`` were opened by the forward.
        3. ``g @ W = eg @ W + a @ W`` with ``W = wb^T + f^T``: the local step
           ``[cx] + eg @ ([wb^T] + f^T) + [a] @ f^T``; likewise
           ``g^T @ x``: ``[cw] + eg^T @ ([xa] + e) + [a^T] @ e``.
        4. Open the masked ``g @ W`` (and ``g^T @ x`` if ``truncate_weight``) and
           finish the truncations (round 2).

    Cost: 2 rounds (1 if nothing is truncated); ``numel(g)`` then the
    truncated outputs' ring elements to each other party, against
    ``2 numel(g) + numel(W) + numel(x)`` in the first round of two
    independent products. Security: semi-honest, non-colluding dealer; ``eg``
    is one-time padded by the fresh ``a``; every other opened value was
    public already.

    Returns:
        ``(grad_input, grad_weight)`` shares (``None`` where not asked);
        ``grad_weight`` at scale ``2^(2f)`` unless ``truncate_weight``.
    """
    m, n = _shape2(comm, g)
    k = int(masks.e.shape[-1])
    want = (int(masks.e.shape[0]), int(masks.f.shape[-1]))
    if (m, n) != want:
        raise ShapeError(
            f"linear_backward: `g` must have the forward output's shape {want}; got {(m, n)}"
        )
    t = dealer.request(
        LinearBackwardTriple(
            (m, n), (m, k), frac_bits, masks.key, grad_input, grad_weight, truncate_weight
        )
    )
    a = t["a"]
    (eg,) = comm.open_masked([(g, a)], "matmul")
    mm = ring.MatmulOp()
    zx = zw = None
    if grad_input:
        zx = _local_step(
            comm, mm, _Renamed(a, masks.wb.transpose(-1, -2), t, "cx"), eg, masks.f.t()
        )
    if grad_weight:
        zw = _local_step(
            comm, mm, _Renamed(a.transpose(-1, -2), masks.xa, t, "cw"), eg.t(), masks.e
        )
    cut = [z for z in (zx, zw if truncate_weight else None) if z is not None]
    if not cut:
        return zx, zw
    ws = iter(comm.open(cut, "trunc"))
    if zx is not None:
        zx = truncation.finish(comm, next(ws), t["neg_rx_hi"], t["sx"], frac_bits)
    if zw is not None and truncate_weight:
        zw = truncation.finish(comm, next(ws), t["neg_rw_hi"], t["sw"], frac_bits)
    return zx, zw


def _shape2(comm: Communicator, share: torch.Tensor) -> tuple[int, int]:
    shape = _shape(comm, share)
    if len(shape) != 2:
        raise ValueError(f"linear layers' products need 2-D operands; got shape {shape}")
    return (shape[0], shape[1])


# ----------------------------------------------------------------- dealer requests
# The correlated randomness of the products above (see smpc.dealer.base).


def _dims(s: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in s)


@dataclass(frozen=True, slots=True)
class MulTriple:
    """Beaver triple ``c = a * b`` (elementwise, broadcasting like torch)."""

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        out = _dims(ring.broadcast_shapes(self.shape_a, self.shape_b))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("c", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return {"c": values["a"] * values["b"]}

    def derive_batch(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`derive` (elementwise: any leading batch axis)."""
        return self.derive(values)


@dataclass(frozen=True, slots=True)
class SquarePair:
    """Square pair ``c = a * a``."""

    shape: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        return (Component("a", Kind.RANDOM, self.shape), Component("c", Kind.DERIVED, self.shape))

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return {"c": values["a"] * values["a"]}

    def derive_batch(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`derive` (elementwise: any leading batch axis)."""
        return self.derive(values)


@dataclass(frozen=True, slots=True)
class BilinearTriple:
    """Beaver triple for a bilinear op: ``c = op(a, b)`` (matmul, conv2d)."""

    op: ring.BilinearOp
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        out = _dims(self.op.out_shape(torch.Size(self.shape_a), torch.Size(self.shape_b)))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("c", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return {"c": self.op(values["a"], values["b"])}


def _bilinear_trunc_values(
    op: ring.BilinearOp, frac_bits: int, values: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``c = op(a, b) + r + 2^62`` and the truncation material of ``r``."""
    r = values["r"]
    c = op(values["a"], values["b"]).add_(r)
    c += 1 << 62
    return {"c": c, **truncation.trunc_material(r, frac_bits)}


def _bilinear_trunc_fused(
    op: ring.BilinearOp,
    frac_bits: int,
    shared: Mapping[str, torch.Tensor],
    private: Mapping[str, torch.Tensor],
    partial: Mapping[str, torch.Tensor],
    out: Mapping[str, torch.Tensor],
) -> bool:
    """The fused corrections of a 2-D matmul truncation triple (False for other ops)."""
    a, b = shared["a"], shared["b"]
    if not isinstance(op, ring.MatmulOp) or a.dim() != 3 or b.dim() != 3:
        return False
    return ring.fused_trunc_correct(
        private["r"],
        (partial["neg_r_hi"], partial["s"]),
        (out["neg_r_hi"], out["s"]),
        frac_bits,
        product=(ring.matmul_of_row_sums(a, b), None, partial["c"], out["c"]),
    )


@dataclass(frozen=True, slots=True)
class MulTruncTriple:
    """A Beaver triple whose product carries a truncation mask: ``c = a*b + r + 2^62``.

    With ``neg_r_hi``/``s`` as in :class:`~smpc.protocols.truncation.TruncPair` for the
    provider-private ``r``.
    """

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    frac_bits: int

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        out = _dims(ring.broadcast_shapes(self.shape_a, self.shape_b))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("r", Kind.PRIVATE, out),
            Component("c", Kind.DERIVED, out),
            Component("neg_r_hi", Kind.DERIVED, out),
            Component("s", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        r = values["r"]
        c = torch.addcmul(r, values["a"], values["b"])
        c += 1 << 62
        return {"c": c, **truncation.trunc_material(r, self.frac_bits)}

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
        """The corrections in one pass in all (same-shape operands only)."""
        if self.shape_a != self.shape_b:
            return False
        return ring.fused_trunc_correct(
            private["r"],
            (partial["neg_r_hi"], partial["s"]),
            (out["neg_r_hi"], out["s"]),
            self.frac_bits,
            product=(shared["a"], shared["b"], partial["c"], out["c"]),
        )


@dataclass(frozen=True, slots=True)
class BilinearTruncTriple:
    """A bilinear triple whose product carries a truncation mask: ``c = op(a, b) + r + 2^62``."""

    op: ring.BilinearOp
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    frac_bits: int

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        out = _dims(self.op.out_shape(torch.Size(self.shape_a), torch.Size(self.shape_b)))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("r", Kind.PRIVATE, out),
            Component("c", Kind.DERIVED, out),
            Component("neg_r_hi", Kind.DERIVED, out),
            Component("s", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return _bilinear_trunc_values(self.op, self.frac_bits, values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The corrections of 2-D matmuls (the mask sums folded into the limb split)."""
        return _bilinear_trunc_fused(self.op, self.frac_bits, shared, private, partial, out)


@dataclass(frozen=True, slots=True)
class OperandMask:
    """A mask ``b`` for an operand that several products reuse; the provider keeps ``b``.

    Later :class:`KeptBilinearTruncTriple` requests with the same ``key`` build
    their triples on this ``b`` instead of drawing a new one, so the operand's
    masked value ``y - b`` is opened once (a fixed model's weights in inference).
    """

    shape: tuple[int, ...]
    key: int

    def keeps(self) -> tuple[tuple[str, int], ...]:
        """``b`` under ``key`` (:class:`~smpc.dealer.base.KeepsMasks`)."""
        return (("b", self.key),)

    def transient(self) -> bool:
        """Kept for the session (a fixed operand)."""
        return False

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        return (Component("b", Kind.RANDOM, self.shape),)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return {}


@dataclass(frozen=True, slots=True)
class KeptBilinearTruncTriple:
    """:class:`BilinearTruncTriple` on the kept right mask ``key``: ``c = op(a, b) + r + 2^62``.

    Only ``a`` is drawn; ``b`` is the :class:`OperandMask` of the same key.
    """

    op: ring.BilinearOp
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    frac_bits: int
    key: int

    def uses(self) -> tuple[tuple[str, int], ...]:
        """The kept ``b`` of ``key`` (:class:`~smpc.dealer.base.UsesMasks`)."""
        return (("b", self.key),)

    def releases(self) -> bool:
        """Kept for later products."""
        return False

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        out = _dims(self.op.out_shape(torch.Size(self.shape_a), torch.Size(self.shape_b)))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("r", Kind.PRIVATE, out),
            Component("c", Kind.DERIVED, out),
            Component("neg_r_hi", Kind.DERIVED, out),
            Component("s", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return _bilinear_trunc_values(self.op, self.frac_bits, values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`~smpc.dealer.base.fused_correction` (2-D matmuls; ``b`` comes as one row)."""
        return _bilinear_trunc_fused(self.op, self.frac_bits, shared, private, partial, out)


@dataclass(frozen=True, slots=True)
class KeepingMatmulTruncTriple:
    """:class:`BilinearTruncTriple` of a 2-D matmul whose masks the dealer keeps.

    A linear layer's forward ``x @ W^T``: ``a`` (the mask of ``x``) is kept
    under ``key`` and ``b`` (the mask of ``W^T``) under ``key + 1``, until the
    layer's :class:`LinearBackwardTriple` uses and releases them (transient).
    """

    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    frac_bits: int
    key: int

    def keeps(self) -> tuple[tuple[str, int], ...]:
        """``a`` under ``key``, ``b`` under ``key + 1`` (:class:`~smpc.dealer.base.KeepsMasks`)."""
        return (("a", self.key), ("b", self.key + 1))

    def transient(self) -> bool:
        """A forward pass's masks, until its backward."""
        return True

    def triple(self) -> BilinearTruncTriple:
        """The same triple without the keeping (components, values, corrections)."""
        return BilinearTruncTriple(ring.MatmulOp(), self.shape_a, self.shape_b, self.frac_bits)

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        return self.triple().components()

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return self.triple().derive(values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`~smpc.dealer.base.fused_correction`."""
        return self.triple().fused_correction(shared, private, partial, out)


@dataclass(frozen=True, slots=True)
class LinearBackwardTriple:
    """Triples for a linear layer's two gradient products on its forward's kept masks.

    The forward ``x @ W^T`` opened ``e = x - xa`` and ``f = W^T - wb``
    (:class:`KeepingMatmulTruncTriple` of the same ``key``). With one fresh
    mask ``a`` for the output gradient ``g`` (shape ``shape_g = (m, n)``):

    * ``grad_input``: ``g @ W`` on masks ``(a, wb^T)``: ``cx = a @ wb^T + rx + 2^62``
      and the truncation material of ``rx``;
    * ``grad_weight``: ``g^T @ x`` on masks ``(a^T, xa)``: ``cw = a^T @ xa``
      (``+ rw + 2^62`` and its truncation material if ``truncate_weight``).

    Uses and releases the forward's masks.
    """

    shape_g: tuple[int, int]
    shape_x: tuple[int, int]
    frac_bits: int
    key: int
    grad_input: bool
    grad_weight: bool
    truncate_weight: bool

    def uses(self) -> tuple[tuple[str, int], ...]:
        """The forward's ``a`` (as ``xa``) and ``b`` (as ``wb``)."""
        return (("xa", self.key), ("wb", self.key + 1))

    def releases(self) -> bool:
        """The forward's masks are dropped after the backward."""
        return True

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        m, n = self.shape_g
        k = self.shape_x[1]
        comps = [Component("a", Kind.RANDOM, (m, n))]
        if self.grad_input:
            comps += [
                Component("rx", Kind.PRIVATE, (m, k)),
                Component("cx", Kind.DERIVED, (m, k)),
                Component("neg_rx_hi", Kind.DERIVED, (m, k)),
                Component("sx", Kind.DERIVED, (m, k)),
            ]
        if self.grad_weight and self.truncate_weight:
            comps += [
                Component("rw", Kind.PRIVATE, (n, k)),
                Component("cw", Kind.DERIVED, (n, k)),
                Component("neg_rw_hi", Kind.DERIVED, (n, k)),
                Component("sw", Kind.DERIVED, (n, k)),
            ]
        elif self.grad_weight:
            comps.append(Component("cw", Kind.DERIVED, (n, k)))
        return tuple(comps)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        a, mm, f = values["a"], ring.MatmulOp(), self.frac_bits
        out: dict[str, torch.Tensor] = {}
        if self.grad_input:
            t = _bilinear_trunc_values(mm, f, {"a": a, "b": values["wb"].t(), "r": values["rx"]})
            out |= {"cx": t["c"], "neg_rx_hi": t["neg_r_hi"], "sx": t["s"]}
        if self.grad_weight and self.truncate_weight:
            t = _bilinear_trunc_values(mm, f, {"a": a.t(), "b": values["xa"], "r": values["rw"]})
            out |= {"cw": t["c"], "neg_rw_hi": t["neg_r_hi"], "sw": t["s"]}
        elif self.grad_weight:
            out["cw"] = ring.matmul(a.t(), values["xa"])
        return out

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The corrections with the mask sums folded into the products' limb splits."""
        a = shared["a"]  # (rows, m, n); the kept xa, wb come as one row each
        if a.dim() != 3:
            return False
        f = self.frac_bits
        if self.grad_input:
            prod = ring.matmul_of_row_sums(a, shared["wb"].transpose(-1, -2))
            if not ring.fused_trunc_correct(
                private["rx"],
                (partial["neg_rx_hi"], partial["sx"]),
                (out["neg_rx_hi"], out["sx"]),
                f,
                product=(prod, None, partial["cx"], out["cx"]),
            ):
                return False
        if self.grad_weight:
            prod = ring.matmul_of_row_sums(a.transpose(-1, -2), shared["xa"])
            if not self.truncate_weight:
                torch.sub(prod, partial["cw"].sum(0), out=out["cw"])
            elif not ring.fused_trunc_correct(
                private["rw"],
                (partial["neg_rw_hi"], partial["sw"]),
                (out["neg_rw_hi"], out["sw"]),
                f,
                product=(prod, None, partial["cw"], out["cw"]),
            ):
                return False  # derive() then writes every output again
        return True


REQUEST_TYPES: tuple[type, ...] = (
    MulTriple,
    SquarePair,
    BilinearTriple,
    MulTruncTriple,
    BilinearTruncTriple,
    OperandMask,
    KeptBilinearTruncTriple,
    KeepingMatmulTruncTriple,
    LinearBackwardTriple,
)
"""The request classes of this module (what a provider must accept to serve it)."""

__all__ += [
    "MulTriple",
    "SquarePair",
    "BilinearTriple",
    "MulTruncTriple",
    "BilinearTruncTriple",
    "OperandMask",
    "KeptBilinearTruncTriple",
    "KeepingMatmulTruncTriple",
    "LinearBackwardTriple",
    "REQUEST_TYPES",
]

"""The crypto provider interface and its request types (runtime layer).

A request is a frozen dataclass that lists the correlated values it needs as
*components*. A ``RANDOM`` component is a fresh uniform value whose every share
comes from the owning party's random stream. A ``DERIVED`` component is a
function of the random ones (e.g. ``c = a * b``): parties ``0..n-2`` expand their
share from their stream and only the last party receives an explicit
*correction* share ``value - sum(others)``. ``*_XOR`` kinds are the same with
XOR sharing (bit-packed binary shares). A ``PRIVATE`` component is
randomness the provider draws for ``derive`` and never shares (e.g. the mask
folded into a product's triple). This one description drives both the
in-process dealer and the distributed provider, which sends each party a short
seed once and afterwards only the correction shares (the CrypTen TTP idea).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

import torch

from .. import ring
from ..errors import DealerError

__all__ = [
    "fused_correction",
    "kept_values",
    "OperandMask",
    "KeptBilinearTruncTriple",
    "MulTruncTriple",
    "BilinearTruncTriple",
    "Kind",
    "Component",
    "Request",
    "Dealer",
    "MulTriple",
    "SquarePair",
    "BilinearTriple",
    "TruncPair",
]


class Kind(StrEnum):
    """How a component is shared and produced."""

    RANDOM = "random"
    DERIVED = "derived"
    RANDOM_XOR = "random_xor"
    DERIVED_XOR = "derived_xor"
    PRIVATE = "private"

    @property
    def shared(self) -> bool:
        """False for PRIVATE: drawn by the provider only, never given to a party."""
        return self is not Kind.PRIVATE

    @property
    def derived(self) -> bool:
        return self is Kind.DERIVED or self is Kind.DERIVED_XOR

    @property
    def xor(self) -> bool:
        return self is Kind.RANDOM_XOR or self is Kind.DERIVED_XOR


@dataclass(frozen=True, slots=True)
class Component:
    """One correlated value of a request."""

    name: str
    kind: Kind
    shape: tuple[int, ...]


class Request(Protocol):
    """A description of correlated randomness (hashable, serialisable).

    A request class may set ``elementwise = True`` when ``derive`` works
    unchanged on components with an extra leading batch axis; the in-process
    dealer then serves small requests from a vectorised pool.
    """

    def components(self) -> tuple[Component, ...]:
        """Random components first, in a fixed order, then derived ones."""
        ...

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        ...


def fused_correction(
    req: Request,
    shared: Mapping[str, torch.Tensor],
    private: Mapping[str, torch.Tensor],
    partial: Mapping[str, torch.Tensor],
    out: Mapping[str, torch.Tensor],
) -> bool:
    """Write the correction shares of ``req`` in one fused pass, if it knows how.

    ``shared[name]`` (shape ``(rows, *shape)``) are shares of each shared
    random component whose sum is its value; ``private[name]`` the
    provider-private values; ``partial[name]`` (``(rows, *shape)``) the shares
    of each derived component that parties ``0..n-2`` expand themselves; the
    correction ``value - sum(partial)`` goes to ``out[name]`` (``shape``).
    Returns False (nothing written) when the request has no fused form or the
    kernels cannot take these tensors: the dealer then uses ``derive``.
    Requests opt in with a ``fused_correction`` method of this signature
    (minus ``req``).
    """
    method = getattr(req, "fused_correction", None)
    return bool(method(shared, private, partial, out)) if method is not None else False


def kept_values(req: Request, kept: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain values ``req`` reuses from earlier requests (its ``uses`` component).

    A request that sets ``uses = "name"`` and a ``key`` gets the value an earlier
    request with ``keeps = "name"`` and the same ``key`` drew (the dealer stores
    it). Raises :class:`~smpc.errors.DealerError` for an unknown key.
    """
    name = getattr(req, "uses", None)
    if name is None:
        return {}
    key = req.key  # type: ignore[attr-defined]  # requests with ``uses`` carry a key
    if key not in kept:
        raise DealerError(f"{type(req).__name__}: no kept mask with key {key}")
    return {name: kept[key]}


class Dealer(Protocol):
    """Hands this runtime its shares of a request's components.

    In simulation every share comes stacked on the party axis; in a distributed
    run, this party's share only.
    """

    def request(self, req: Request) -> Mapping[str, torch.Tensor]:
        """Return this runtime's shares, by component name."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


def _shape(s: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in s)


@dataclass(frozen=True, slots=True)
class MulTriple:
    """Beaver triple ``c = a * b`` (elementwise, broadcasting like torch)."""

    elementwise: ClassVar[bool] = True  # derive() works on any leading batch axis

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        out = _shape(ring.broadcast_shapes(self.shape_a, self.shape_b))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("c", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": values["a"] * values["b"]}


@dataclass(frozen=True, slots=True)
class SquarePair:
    """Square pair ``c = a * a``."""

    elementwise: ClassVar[bool] = True  # derive() works on any leading batch axis

    shape: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        return (Component("a", Kind.RANDOM, self.shape), Component("c", Kind.DERIVED, self.shape))

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": values["a"] * values["a"]}


@dataclass(frozen=True, slots=True)
class BilinearTriple:
    """Beaver triple for a bilinear op: ``c = op(a, b)`` (matmul, conv2d)."""

    op: ring.BilinearOp
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        out = _shape(self.op.out_shape(torch.Size(self.shape_a), torch.Size(self.shape_b)))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("c", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": self.op(values["a"], values["b"])}


@dataclass(frozen=True, slots=True)
class TruncPair:
    """Material to truncate by ``frac_bits``.

    ``r`` uniform, ``neg_r_hi = -((r mod 2^63) >> f)``, ``s = msb(r) * 2^(63 - f)``.
    """

    elementwise: ClassVar[bool] = True  # derive() works on any leading batch axis

    shape: tuple[int, ...]
    frac_bits: int

    def components(self) -> tuple[Component, ...]:
        return (
            Component("r", Kind.RANDOM, self.shape),
            Component("neg_r_hi", Kind.DERIVED, self.shape),
            Component("s", Kind.DERIVED, self.shape),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r = values["r"]
        f = self.frac_bits
        # r >> 63 is all ones exactly when msb(r) = 1 (arithmetic shift).
        return {"neg_r_hi": -((r & ((1 << 63) - 1)) >> f), "s": (r >> 63) & (1 << (63 - f))}

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`fused_correction` (one pass over ``r`` and the partial rows)."""
        rows = shared["r"]
        return ring.fused_trunc_correct(
            rows[0] if rows.shape[0] == 1 else rows.sum(0),
            (partial["neg_r_hi"], partial["s"]),
            (out["neg_r_hi"], out["s"]),
            self.frac_bits,
        )


def _trunc_material(r: torch.Tensor, frac_bits: int, bound_bits: int) -> dict[str, torch.Tensor]:
    f = frac_bits
    return {
        "neg_r_hi": -((r & ((1 << 63) - 1)) >> f),
        "s": (r >> 63) & (1 << (63 - f)),
    }


def _bilinear_trunc_values(
    op: ring.BilinearOp, frac_bits: int, values: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``c = op(a, b) + r + 2^62`` and the truncation material of ``r``."""
    r = values["r"]
    c = op(values["a"], values["b"]).add_(r)
    c += 1 << 62
    return {"c": c, **_trunc_material(r, frac_bits, 62)}


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

    With ``neg_r_hi``/``s`` as in :class:`TruncPair` for the provider-private ``r``.
    """

    elementwise: ClassVar[bool] = True  # derive() works on any leading batch axis

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    frac_bits: int

    def components(self) -> tuple[Component, ...]:
        out = _shape(ring.broadcast_shapes(self.shape_a, self.shape_b))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("r", Kind.PRIVATE, out),
            Component("c", Kind.DERIVED, out),
            Component("neg_r_hi", Kind.DERIVED, out),
            Component("s", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r = values["r"]
        c = torch.addcmul(r, values["a"], values["b"])
        c += 1 << 62
        return {"c": c, **_trunc_material(r, self.frac_bits, 62)}

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`fused_correction` (same-shape operands only: one pass in all)."""
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
        out = _shape(self.op.out_shape(torch.Size(self.shape_a), torch.Size(self.shape_b)))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("b", Kind.RANDOM, self.shape_b),
            Component("r", Kind.PRIVATE, out),
            Component("c", Kind.DERIVED, out),
            Component("neg_r_hi", Kind.DERIVED, out),
            Component("s", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _bilinear_trunc_values(self.op, self.frac_bits, values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`fused_correction`: 2-D matmuls (the mask sums folded into the limb split)."""
        return _bilinear_trunc_fused(self.op, self.frac_bits, shared, private, partial, out)


@dataclass(frozen=True, slots=True)
class OperandMask:
    """A mask ``b`` for an operand that several products reuse; the provider keeps ``b``.

    Later :class:`KeptBilinearTruncTriple` requests with the same ``key`` build
    their triples on this ``b`` instead of drawing a new one, so the operand's
    masked value ``y - b`` is opened once (a fixed model's weights in inference).
    """

    keeps: ClassVar[str] = "b"

    shape: tuple[int, ...]
    key: int

    def components(self) -> tuple[Component, ...]:
        return (Component("b", Kind.RANDOM, self.shape),)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}


@dataclass(frozen=True, slots=True)
class KeptBilinearTruncTriple:
    """:class:`BilinearTruncTriple` on the kept right mask ``key``: ``c = op(a, b) + r + 2^62``.

    Only ``a`` is drawn; ``b`` is the :class:`OperandMask` of the same key.
    """

    uses: ClassVar[str] = "b"

    op: ring.BilinearOp
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    frac_bits: int
    key: int

    def components(self) -> tuple[Component, ...]:
        out = _shape(self.op.out_shape(torch.Size(self.shape_a), torch.Size(self.shape_b)))
        return (
            Component("a", Kind.RANDOM, self.shape_a),
            Component("r", Kind.PRIVATE, out),
            Component("c", Kind.DERIVED, out),
            Component("neg_r_hi", Kind.DERIVED, out),
            Component("s", Kind.DERIVED, out),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _bilinear_trunc_values(self.op, self.frac_bits, values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`fused_correction` (2-D matmuls; ``b`` comes as one row)."""
        return _bilinear_trunc_fused(self.op, self.frac_bits, shared, private, partial, out)

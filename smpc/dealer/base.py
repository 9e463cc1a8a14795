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

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

import torch

from .. import ring
from ..codec import Codec
from ..errors import DealerError

__all__ = [
    "REQUEST_TYPES",
    "request_codec",
    "fused_correction",
    "kept_values",
    "kept_keys",
    "used_keys",
    "KeptMasks",
    "TRANSIENT_LIMIT",
    "OperandMask",
    "KeptBilinearTruncTriple",
    "KeepingMatmulTruncTriple",
    "LinearBackwardTriple",
    "Batch",
    "poolable",
    "POOL",
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


def kept_keys(req: Request) -> tuple[tuple[str, int], ...]:
    """``(component, key)`` pairs whose plain values the dealer keeps after serving ``req``.

    A request keeps one component with ``keeps = "name"`` and a ``key`` field,
    or several with a ``keeps_keys`` attribute of such pairs.
    """
    name = getattr(req, "keeps", None)
    if name is not None:
        return ((name, req.key),)  # type: ignore[attr-defined]  # requests that keep have a key
    return tuple(getattr(req, "keeps_keys", ()))


def used_keys(req: Request) -> tuple[tuple[str, int], ...]:
    """``(component, key)`` pairs of kept values that ``req`` reuses (``uses`` / ``uses_keys``)."""
    name = getattr(req, "uses", None)
    if name is not None:
        return ((name, req.key),)  # type: ignore[attr-defined]  # requests that use have a key
    return tuple(getattr(req, "uses_keys", ()))


# Transient kept masks (a forward pass's, for its backward) held at most: a forward
# whose backward never comes (a graph dropped unused) must not grow the dealer.
TRANSIENT_LIMIT = 256


class KeptMasks:
    """The plain masks a dealer keeps for later requests, by key.

    Long-lived ones (:class:`OperandMask`: a fixed model's weights) stay for the
    session; *transient* ones (requests with ``transient = True``: a linear
    layer's forward masks) are dropped when a request with ``releases = True``
    has used them, and beyond :data:`TRANSIENT_LIMIT` the oldest are dropped.
    Changes can be journaled and rolled back (the provider's speculation).
    """

    def __init__(self) -> None:
        self._values: dict[int, torch.Tensor] = {}
        self._transient: dict[int, None] = {}  # insertion order = age
        self._journal: list[tuple[int, torch.Tensor | None, bool]] | None = None

    def __len__(self) -> int:
        return len(self._values)

    def keep(self, req: Request, plain: Mapping[str, torch.Tensor]) -> None:
        """Keep the components of ``req`` that later requests reuse (``plain[name]``)."""
        transient = bool(getattr(req, "transient", False))
        for name, key in kept_keys(req):
            self._set(key, plain[name].clone(), transient)
        while len(self._transient) > TRANSIENT_LIMIT:
            self._set(next(iter(self._transient)), None, False)

    def values(self, req: Request) -> dict[str, torch.Tensor]:
        """The kept values ``req`` reuses, by component name.

        Raises:
            DealerError: a key is unknown (never kept, released, or dropped as too old).
        """
        out = {}
        for name, key in used_keys(req):
            value = self._values.get(key)
            if value is None:
                raise DealerError(
                    f"{type(req).__name__}: no kept mask with key {key} (masks of a "
                    f"forward pass are dropped after its backward, or after "
                    f"{TRANSIENT_LIMIT} newer ones)"
                )
            out[name] = value
        return out

    def release(self, req: Request) -> None:
        """Drop the masks ``req`` used, if it releases them (``releases = True``)."""
        if getattr(req, "releases", False):
            for _, key in used_keys(req):
                self._set(key, None, False)

    def _set(self, key: int, value: torch.Tensor | None, transient: bool) -> None:
        if self._journal is not None:
            self._journal.append((key, self._values.get(key), key in self._transient))
        self._put(key, value, transient)

    def _put(self, key: int, value: torch.Tensor | None, transient: bool) -> None:
        self._transient.pop(key, None)
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value
            if transient:
                self._transient[key] = None

    def begin(self) -> None:
        """Start recording changes (for :meth:`rollback`)."""
        self._journal = []

    def commit(self) -> None:
        """Keep the changes made since :meth:`begin`."""
        self._journal = None

    def rollback(self) -> None:
        """Undo every change since :meth:`begin`."""
        journal, self._journal = self._journal or [], None
        for key, old, was_transient in reversed(journal):
            self._put(key, old, was_transient)


def kept_values(req: Request, kept: KeptMasks) -> dict[str, torch.Tensor]:
    """The plain values ``req`` reuses from earlier requests (see :meth:`KeptMasks.values`)."""
    return kept.values(req)


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


@dataclass(frozen=True, slots=True)
class KeepingMatmulTruncTriple:
    """:class:`BilinearTruncTriple` of a 2-D matmul whose masks the dealer keeps.

    A linear layer's forward ``x @ W^T``: ``a`` (the mask of ``x``) is kept
    under ``key`` and ``b`` (the mask of ``W^T``) under ``key + 1``, until the
    layer's :class:`LinearBackwardTriple` uses and releases them (transient).
    """

    transient: ClassVar[bool] = True

    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    frac_bits: int
    key: int

    @property
    def keeps_keys(self) -> tuple[tuple[str, int], ...]:
        """``a`` under ``key``, ``b`` under ``key + 1``."""
        return (("a", self.key), ("b", self.key + 1))

    def triple(self) -> BilinearTruncTriple:
        """The same triple without the keeping (components, values, corrections)."""
        return BilinearTruncTriple(ring.MatmulOp(), self.shape_a, self.shape_b, self.frac_bits)

    def components(self) -> tuple[Component, ...]:
        return self.triple().components()

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.triple().derive(values)

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """See :func:`fused_correction`."""
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

    releases: ClassVar[bool] = True

    shape_g: tuple[int, int]
    shape_x: tuple[int, int]
    frac_bits: int
    key: int
    grad_input: bool
    grad_weight: bool
    truncate_weight: bool

    @property
    def uses_keys(self) -> tuple[tuple[str, int], ...]:
        """The forward's ``a`` (as ``xa``) and ``b`` (as ``wb``)."""
        return (("xa", self.key), ("wb", self.key + 1))

    def components(self) -> tuple[Component, ...]:
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
        """See :func:`fused_correction`: the mask sums folded into the products' limb splits."""
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


# Small elementwise requests are served from pools of POOL instances, drawn in one
# request (see ``poolable``): the same rule in both dealers.
POOLED_NUMEL = 64
POOL = 256


def poolable(req: Request) -> bool:
    """Whether ``req`` is served from a pool of :data:`POOL` instances.

    Elementwise requests whose components have one rank and at most
    :data:`POOLED_NUMEL` elements each, keeping and reusing nothing.
    """
    if not getattr(req, "elementwise", False) or kept_keys(req) or used_keys(req):
        return False
    comps = req.components()
    return len({len(c.shape) for c in comps}) == 1 and all(
        math.prod(c.shape) <= POOLED_NUMEL for c in comps
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` independent instances of an elementwise request, on a leading axis.

    What a dealer draws to fill a pool (:func:`poolable`): instance ``i`` of
    every component is its row ``i``.
    """

    req: Request
    count: int

    def components(self) -> tuple[Component, ...]:
        return tuple(
            Component(c.name, c.kind, (self.count, *c.shape)) for c in self.req.components()
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.req.derive(values)  # elementwise: any leading batch axis

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """The request's own fused form (elementwise: any leading batch axis)."""
        return fused_correction(self.req, shared, private, partial, out)


REQUEST_TYPES: tuple[type, ...] = (
    MulTriple,
    SquarePair,
    BilinearTriple,
    TruncPair,
    MulTruncTriple,
    BilinearTruncTriple,
    OperandMask,
    KeptBilinearTruncTriple,
    KeepingMatmulTruncTriple,
    LinearBackwardTriple,
    Batch,
    ring.MatmulOp,
    ring.Conv2dOp,
    ring.ConvTranspose2dOp,
)
"""The request classes of this module, and the bilinear ops they carry.

What a provider process decodes by default (:func:`request_codec`); protocols
that define request classes of their own pass them as ``extra``.
"""


def request_codec(
    extra: Iterable[type] = (), *, max_bytes: int = 1 << 20, encode_any: bool = False
) -> Codec:
    """The codec of dealer requests: :data:`REQUEST_TYPES` plus ``extra`` (no pickle).

    A request travels as its class name and fields (see :mod:`smpc.codec`); a
    provider builds only classes of this allow-list, checking each field's type.
    ``max_bytes`` bounds an encoded request (they are a few hundred bytes);
    ``encode_any``: encode request classes beyond the list too (a party's side:
    the provider decides what it accepts).
    """
    return Codec((*REQUEST_TYPES, *extra), max_bytes=max_bytes, encode_any=encode_any)

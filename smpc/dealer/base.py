"""The crypto provider interface: requests, kept masks, pools (runtime layer).

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

The request classes live beside the protocols they serve (Beaver triples in
:mod:`smpc.protocols.beaver`, truncation pairs in
:mod:`smpc.protocols.truncation`, ...). A request opts in to more by
implementing a typed protocol of this module: :class:`FusedCorrection` (the
corrections in one fused pass), :class:`KeepsMasks` / :class:`UsesMasks` (plain
masks the dealer keeps for later requests) and :class:`Elementwise` (served
from pools). The dealers test these with ``issubclass`` on the request's class
(cached by :mod:`abc`, a fraction of a microsecond).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, cast, runtime_checkable

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
    "Batch",
    "poolable",
    "POOL",
    "Kind",
    "Component",
    "Request",
    "FusedCorrection",
    "KeepsMasks",
    "UsesMasks",
    "Elementwise",
    "Dealer",
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


@runtime_checkable
class Request(Protocol):
    """A description of correlated randomness (hashable, serialisable).

    Opt-ins: :class:`FusedCorrection`, :class:`KeepsMasks`, :class:`UsesMasks`,
    :class:`Elementwise`.
    """

    def components(self) -> tuple[Component, ...]:
        """Random components first, in a fixed order, then derived ones."""
        ...

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        ...


@runtime_checkable
class FusedCorrection(Request, Protocol):
    """Opt-in: a request that writes its correction shares in one fused pass."""

    def fused_correction(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        partial: Mapping[str, torch.Tensor],
        out: Mapping[str, torch.Tensor],
    ) -> bool:
        """Write the corrections into ``out``; False (nothing written) if it cannot.

        See :func:`fused_correction` for the arguments.
        """
        ...


@runtime_checkable
class KeepsMasks(Request, Protocol):
    """Opt-in: the dealer keeps plain values of this request's components for later requests."""

    def keeps(self) -> tuple[tuple[str, int], ...]:
        """``(component, key)`` pairs whose plain values the dealer keeps after serving it."""
        ...

    def transient(self) -> bool:
        """Whether the kept values are a forward pass's, dropped once used (:class:`KeptMasks`)."""
        ...


@runtime_checkable
class UsesMasks(Request, Protocol):
    """Opt-in: ``derive`` reuses plain values that earlier requests kept (:class:`KeepsMasks`)."""

    def uses(self) -> tuple[tuple[str, int], ...]:
        """``(name, key)`` pairs: the kept value of ``key`` is given to ``derive`` as ``name``."""
        ...

    def releases(self) -> bool:
        """Whether the dealer drops the used values after serving it."""
        ...


@runtime_checkable
class Elementwise(Request, Protocol):
    """Opt-in: every component has independent elements, so small requests are pooled.

    :func:`poolable` requests are served from a :class:`Batch` of :data:`POOL`
    instances, drawn in one request.
    """

    def derive_batch(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``derive`` on components with an extra leading axis of independent instances."""
        ...


def _elementwise(req: Request) -> bool:
    """Whether ``req`` is :class:`Elementwise` (a class check: fast, no ``isinstance`` probe)."""
    return issubclass(type(req), Elementwise)


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
    Returns False (nothing written) when the request has no fused form
    (:class:`FusedCorrection`) or the kernels cannot take these tensors: the
    dealer then uses ``derive``.
    """
    if issubclass(type(req), FusedCorrection):
        return bool(cast(FusedCorrection, req).fused_correction(shared, private, partial, out))
    return False


def kept_keys(req: Request) -> tuple[tuple[str, int], ...]:
    """``(component, key)`` pairs whose plain values the dealer keeps after serving ``req``."""
    return cast(KeepsMasks, req).keeps() if issubclass(type(req), KeepsMasks) else ()


def used_keys(req: Request) -> tuple[tuple[str, int], ...]:
    """``(name, key)`` pairs of kept values that ``req`` reuses (:class:`UsesMasks`)."""
    return cast(UsesMasks, req).uses() if issubclass(type(req), UsesMasks) else ()


# Transient kept masks (a forward pass's, for its backward) held at most: a forward
# whose backward never comes (a graph dropped unused) must not grow the dealer.
TRANSIENT_LIMIT = 256


class KeptMasks:
    """The plain masks a dealer keeps for later requests, by key.

    Long-lived ones (:class:`~smpc.protocols.beaver.OperandMask`: a fixed
    model's weights) stay for the session; *transient* ones (a linear layer's
    forward masks, :meth:`KeepsMasks.transient`) are dropped when a request that
    :meth:`~UsesMasks.releases` them has used them, and beyond
    :data:`TRANSIENT_LIMIT` the oldest are dropped.
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
        if not issubclass(type(req), KeepsMasks):
            return
        keeping = cast(KeepsMasks, req)
        transient = bool(keeping.transient())
        for name, key in keeping.keeps():
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
        """Drop the masks ``req`` used, if it releases them (:meth:`UsesMasks.releases`)."""
        if issubclass(type(req), UsesMasks) and cast(UsesMasks, req).releases():
            for _, key in cast(UsesMasks, req).uses():
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


# Small elementwise requests are served from pools of POOL instances, drawn in one
# request (see ``poolable``): the same rule in both dealers.
POOLED_NUMEL = 64
POOL = 256


def poolable(req: Request) -> bool:
    """Whether ``req`` is served from a pool of :data:`POOL` instances.

    :class:`Elementwise` requests whose components have one rank and at most
    :data:`POOLED_NUMEL` elements each, keeping and reusing nothing.
    """
    if not _elementwise(req) or kept_keys(req) or used_keys(req):
        return False
    comps = req.components()
    return len({len(c.shape) for c in comps}) == 1 and all(
        math.prod(c.shape) <= POOLED_NUMEL for c in comps
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` independent instances of an :class:`Elementwise` request, on a leading axis.

    What a dealer draws to fill a pool (:func:`poolable`): instance ``i`` of
    every component is its row ``i``.
    """

    req: Request
    count: int

    def components(self) -> tuple[Component, ...]:
        if not _elementwise(self.req):
            raise DealerError(
                f"Batch: `req` must be an elementwise request; got a {type(self.req).__name__}"
            )
        return tuple(
            Component(c.name, c.kind, (self.count, *c.shape)) for c in self.req.components()
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if issubclass(type(self.req), Elementwise):
            return cast(Elementwise, self.req).derive_batch(values)
        return self.req.derive(values)  # a transitional elementwise request (see _elementwise)

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
    Batch,
    ring.MatmulOp,
    ring.Conv2dOp,
    ring.ConvTranspose2dOp,
)
"""The request class of this module, and the bilinear ops that requests carry.

What a provider process always decodes (:func:`request_codec`); the request
classes of the protocols (each protocol module's ``REQUEST_TYPES``) come as
``extra``.
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

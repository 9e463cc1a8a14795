"""Dealer-assisted lookup of a public function on a small shared integer (protocol layer).

For a shared ring integer ``s`` known to lie in a window of ``domain``
consecutive values, any public function ``f`` of ``s`` costs one round with a
one-hot vector from the dealer: a one-time truth table (Ishai, Kushilevitz,
Meldgaard, Orlandi, Paskin-Cherniavsky, "On the power of correlated randomness
in secure computation", TCC 2013; Dessouky, Koushanfar, Sadeghi, Schneider,
Zeitouni, Songhori, "Pushing the communication barrier in secure computation
using lookup tables", NDSS 2017), here on additive shares over Z_2^64:

* the dealer hands out ``[r]`` (uniform) and ``[e]``, the one-hot vector of
  ``r mod domain`` (``domain`` a power of two, so ``2^64`` is a multiple of it);
* parties open ``c = s + r`` (uniform, so ``s`` stays hidden);
* ``s == j`` exactly when ``r mod domain == (c - j) mod domain``, so
  ``[f(s)] = sum_j f(j) [e][(c - j) mod domain]``: a public gather.

A product ``f(s) * x`` with another shared value rides in the same round: the
dealer also gives ``[e * a]`` for a Beaver mask ``[a]`` of ``x``, and ``d = x -
a`` is opened beside ``c``; then ``[f(s) x] = d [f(s)] + sum_j f(j) [e a][...]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import data_shape, lead

__all__ = ["OneHotMaterial", "lookup", "eq_public", "cost", "REQUEST_TYPES"]

_MAX_DOMAIN = 1 << 10


@dataclass(frozen=True, slots=True)
class OneHotMaterial:
    """Dealer material for :func:`lookup`: ``[r]``, the one-hot ``[e]`` of ``r mod domain``.

    Components (per element):
        r: uniform additive mask of ``s``.
        a: uniform additive Beaver mask of the multiplicand (only when ``mul``).
        e: ``domain`` words, ``e[j] = [j == r mod domain]``.
        ea: ``domain`` words, ``e[j] * a`` (only when ``mul``).
    """

    shape: tuple[int, ...]
    domain: int
    mul: bool = False

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        sh = self.shape
        wide = (*sh, self.domain)
        comps = [Component("r", Kind.RANDOM, sh)]
        if self.mul:
            comps.append(Component("a", Kind.RANDOM, sh))
        comps.append(Component("e", Kind.DERIVED, wide))
        if self.mul:
            comps.append(Component("ea", Kind.DERIVED, wide))
        return tuple(comps)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        r = values["r"]
        idx = (r & (self.domain - 1)).unsqueeze(-1)
        e = torch.zeros((*r.shape, self.domain), dtype=torch.int64, device=r.device)
        e.scatter_(-1, idx, 1)
        out = {"e": e}
        if self.mul:
            out["ea"] = e * values["a"].unsqueeze(-1)
        return out

    def derive_batch(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``derive`` works unchanged with a leading batch axis (small requests are pooled)."""
        return self.derive(values)


def _check_domain(domain: int) -> None:
    if (
        isinstance(domain, bool)
        or not isinstance(domain, int)
        or domain < 2
        or domain > _MAX_DOMAIN
        or domain & (domain - 1)
    ):
        raise ValueError(f"`domain` must be a power of two in [2, {_MAX_DOMAIN}]; got {domain!r}")


def lookup(
    comm: Communicator,
    dealer: Dealer,
    s: torch.Tensor,
    table: Sequence[int] | torch.Tensor,
    *,
    offset: int = 0,
    mul: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shares of ``table[s - offset]`` (and of ``table[s - offset] * mul``) in one round.

    ``s`` must hold integers in ``[offset, offset + len(table))`` (ring
    elements, unscaled); outside that window the result is
    ``table[(s - offset) mod len(table)]``, silently: callers guarantee the range.

    Protocol (one-time truth table, see the module docstring):
        1. The dealer gives ``[r]``, ``[e]`` (one-hot of ``r mod D``, ``D = len(table)``
           a power of two) and, for the product, ``[a]``, ``[e a]``.
        2. Open ``c = s + r`` (and ``d = mul - a``): 1 round.
        3. ``[table[s - offset]] = sum_j table[j] [e][(c - offset - j) mod D]``; with
           the product, ``d`` times it plus the same sum over ``[e a]``.

    Cost: 1 round; 8 bytes per element to each other party (16 with ``mul``).
    Dealer: ``D`` correction words per element (``2 D`` with ``mul``).

    Security: semi-honest, non-colluding dealer; ``c`` and ``d`` are uniform.

    Args:
        comm: the runtime.
        dealer: the crypto provider.
        s: shares of small ring integers.
        table: the public function's values, ``D`` ints, ``D`` a power of two
            (at most 1024).
        offset: the smallest value ``s`` may take.
        mul: shares of a value to multiply the result with (same shape as ``s``).

    Returns:
        ``(f, f_mul)``: shares of ``table[s - offset]`` (unscaled ring values) and,
        if ``mul`` is given, of ``table[s - offset] * mul`` (else ``None``).
    """
    tab = torch.as_tensor(table, dtype=torch.int64)
    if tab.dim() != 1:
        raise ValueError(f"`table` must be one-dimensional; got shape {tuple(tab.shape)}")
    domain = int(tab.numel())
    _check_domain(domain)
    shape = tuple(data_shape(comm, s))
    if mul is not None and tuple(data_shape(comm, mul)) != shape:
        raise ValueError(
            f"`mul` must have the shape of `s` {shape}; got {tuple(data_shape(comm, mul))}"
        )
    t = dealer.request(OneHotMaterial(shape, domain, mul=mul is not None))
    if mul is not None:
        c, d = comm.open([s + t["r"], mul - t["a"]], "lookup")
    else:
        (c,) = comm.open([s + t["r"]], "lookup")
    # Row q of the rotation picks e[(c - offset - j) mod D] for table entry j.
    j = torch.arange(domain, dtype=torch.int64, device=s.device)
    idx = ((c - offset).unsqueeze(-1) - j) & (domain - 1)  # (*shape, D), public
    ld = lead(comm)
    idx = idx.expand(*t["e"].shape[:ld], *idx.shape)
    tab = tab.to(s.device)
    f = (torch.gather(t["e"], -1, idx) * tab).sum(-1)
    if mul is None:
        return f, None
    fm = d * f + (torch.gather(t["ea"], -1, idx) * tab).sum(-1)
    return f, fm


def eq_public(
    comm: Communicator,
    dealer: Dealer,
    s: torch.Tensor,
    value: int,
    *,
    low: int,
    domain: int,
    mul: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shares of the ring bit ``[s == value]`` for ``s`` in ``[low, low + domain)``, in one round.

    :func:`lookup` with the table of ``j == value - low``. Cost: 1 round, 8 bytes per
    element (16 with ``mul``), ``domain`` (``2 domain``) dealer words per element.
    """
    _check_domain(domain)
    if not low <= value < low + domain:
        raise ValueError(f"`value` must lie in [{low}, {low + domain}); got {value}")
    table = [0] * domain
    table[value - low] = 1
    return lookup(comm, dealer, s, table, offset=low, mul=mul)


REQUEST_TYPES: tuple[type, ...] = (OneHotMaterial,)


def cost(*, mul: bool = False) -> tuple[int, int]:
    """(rounds, bytes sent per element to each other party) of :func:`lookup`."""
    return 1, 16 if mul else 8

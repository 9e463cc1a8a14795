"""Truncations whose outputs are multiplied locally: polynomials in one round (protocol layer).

A truncation by ``d`` bits (:func:`smpc.protocols.truncation.trunc`, after
Escudero, Ghosh, Keller, Rachuri, Scholl, CRYPTO 2020 [EGKRS20]) opens
``c = x + 2^62 + r`` and outputs ``t = p(c) + W(sigma)``, where
``p(c) = (c >>> d) - 2^(62-d)`` and ``sigma = msb(c)`` are public and
``W(sigma) = -R + (1 - 2 sigma) S``, with ``R = (r mod 2^63) >> d`` and
``S = msb(r) 2^(63-d)``, is known to the dealer. A product of such outputs,
``t_1^a_1 t_2^a_2 ...``, expands by the binomial theorem into public
coefficients times products of the ``W``'s; when the dealer also gives shares
of those products (for both values of every ``sigma`` involved, since it
never sees ``c``), the parties compute the product *locally*. So

* "truncate, then square" costs the one round of the truncation (the
  exponential's repeated powers);
* a polynomial of a truncated value is local after the truncation;
* a Newton step ``y (2 - x y)`` is one round once ``x`` has been truncated
  (the dealer multiplies the masks of ``x`` and of each iterate);

all exact modulo ``2^64`` (the products of the opened public parts and of the
masks are ring products), with the truncation error of one unit at each
variable's own scale. The parties then combine monomials with public
integer coefficients; the result must stay below ``2^62`` in magnitude for
the next truncation. Giving out shares of products of a mask so that
powers of a masked value become local is the preprocessing of constant-round
exponentiation and prefix products (Damgård, Fitzi, Kiltz, Nielsen, Toft,
"Unconditionally secure constant-rounds multi-party computation for equality,
comparison, bits and exponentiation", TCC 2006) and, in spirit, of
dealer-assisted evaluation on a masked input (Boyle, Gilboa, Ishai, "Secure
computation with preprocessing via function secret sharing", TCC 2019); here
it is applied to the mask of a truncation.

Security: every opened ``c`` is ``x + 2^62 + r`` with a fresh uniform ``r``
(each opening draws its own), so it is uniform whatever ``x`` is; the dealer
only ever multiplies its own masks (semi-honest, non-colluding dealer, as for
Beaver triples).

:func:`exp_ring`, :func:`softmax_ring` and :func:`reciprocal_ring` are the
exponential, the softmax and the Newton reciprocal built on it (see their
docstrings for the rounds).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import add_public, add_public_, lead
from . import beaver, compare, lookup

__all__ = [
    "TruncProducts",
    "Fused",
    "exp_ring",
    "exp_rounds",
    "softmax_ring",
    "softmax_rounds",
    "SOFTMAX_WIDE_BITS",
    "reciprocal_ring",
    "reciprocal_plan",
    "reciprocal_rounds",
    "EXP_POLY",
    "RECIPROCAL_POLY",
]

_LOW63 = (1 << 63) - 1
_BOUND = 62  # the truncation's shift: |x| < 2^62


def _wrap(v: int) -> int:
    """A Python int as the signed int64 of its residue modulo 2^64."""
    return ((v + (1 << 63)) % (1 << 64)) - (1 << 63)


def _le(a: tuple[int, ...], e: tuple[int, ...]) -> bool:
    return all(x <= y for x, y in zip(a, e, strict=True))


@dataclass(frozen=True, slots=True)
class TruncProducts:
    """Dealer material for several truncations and products of their outputs.

    ``shifts[o]`` lists the truncation shifts of the *variables* of opening
    ``o`` (one mask ``r_o`` per opening: several variables of one opening are
    the same opened value truncated by different amounts). Variables are
    numbered opening by opening; ``monomials`` are exponent vectors over them
    (total degree >= 2) whose values the parties will compute locally.

    Components (per element, ring words):
        ``r{o}``: the uniform mask of opening ``o`` (additively shared).
        ``h{v}``, ``s{v}``: ``-R_v`` and ``S_v`` of variable ``v`` (as in
            :class:`~smpc.dealer.base.TruncPair`).
        ``w{a}_{g}``: ``prod_v W_v(sigma)^(a_v)`` for every exponent vector
            ``a <= m`` (componentwise, total degree >= 2) of a requested
            monomial ``m``, and every assignment ``g`` (bit ``j`` for the
            ``j``-th opening that ``a`` involves) of the public bits ``sigma``.
    """

    shape: tuple[int, ...]
    shifts: tuple[tuple[int, ...], ...]
    monomials: tuple[tuple[int, ...], ...]

    def variables(self) -> list[tuple[int, int]]:
        """``(opening, shift)`` of each variable, in order."""
        return [(o, d) for o, ds in enumerate(self.shifts) for d in ds]

    def closure(self) -> list[tuple[int, ...]]:
        """The exponent vectors of total degree >= 2 below some monomial (sorted)."""
        out: set[tuple[int, ...]] = set()
        for m in self.monomials:
            for a in itertools.product(*(range(e + 1) for e in m)):
                if sum(a) >= 2:
                    out.add(a)
        return sorted(out)

    def involved(self, a: tuple[int, ...]) -> list[int]:
        """The openings whose variables have a positive exponent in ``a`` (sorted)."""
        var = self.variables()
        return sorted({var[v][0] for v, e in enumerate(a) if e})

    @staticmethod
    def name(a: tuple[int, ...], g: int) -> str:
        """The component name of ``prod W^a`` for the sigma assignment ``g``."""
        return "w" + "_".join(map(str, a)) + f"g{g}"

    def components(self) -> tuple[Component, ...]:
        """Random masks first, then the truncation material, then the mask products."""
        sh = self.shape
        comps = [Component(f"r{o}", Kind.RANDOM, sh) for o in range(len(self.shifts))]
        for v in range(len(self.variables())):
            comps += [Component(f"h{v}", Kind.DERIVED, sh), Component(f"s{v}", Kind.DERIVED, sh)]
        for a in self.closure():
            for g in range(1 << len(self.involved(a))):
                comps.append(Component(self.name(a, g), Kind.DERIVED, sh))
        return tuple(comps)

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain masks."""
        out: dict[str, torch.Tensor] = {}
        hs: list[torch.Tensor] = []
        ss: list[torch.Tensor] = []
        for v, (o, d) in enumerate(self.variables()):
            r = values[f"r{o}"]
            h = -((r & _LOW63) >> d)
            s = (r >> 63) & (1 << (63 - d))
            out[f"h{v}"], out[f"s{v}"] = h, s
            hs.append(h)
            ss.append(s)
        var = self.variables()
        for a in self.closure():
            opens = self.involved(a)
            for g in range(1 << len(opens)):
                acc: torch.Tensor | None = None
                for v, e in enumerate(a):
                    if not e:
                        continue
                    sigma = (g >> opens.index(var[v][0])) & 1
                    w = hs[v] - ss[v] if sigma else hs[v] + ss[v]
                    for _ in range(e):
                        acc = w.clone() if acc is None else acc * w
                assert acc is not None
                out[self.name(a, g)] = acc
        return out

    def derive_batch(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`derive` works unchanged with a leading batch axis (small requests are pooled)."""
        return self.derive(values)


class Fused:
    """The parties' side of one :class:`TruncProducts`: open, then evaluate monomials.

    Protocol:
        1. :meth:`open` (one round for any number of openings): shares of
           ``x_o + 2^62 + r_o`` are opened; every variable ``v`` of opening
           ``o`` then has the public part ``p_v = (c_o >>> d_v) - 2^(62-d_v)``
           (minus an optional public ``offset``) and the public bit ``msb(c_o)``.
        2. :meth:`monomial` (local): ``prod_v (p_v + W_v)^(e_v) = sum_{a <= e}
           prod_v C(e_v, a_v) p_v^(e_v - a_v) * [prod_v W_v^(a_v)]``, the last
           factor a public 1 (``a = 0``), the truncation's own ``h + (1 - 2 sigma) s``
           (degree 1) or the dealer's ``w{a}_{g}`` selected by the public bits.

    Cost: one round per :meth:`open` call, one ring element per element per
    opening sent to each other party; the dealer sends, per element, one word
    per opening, two per variable and one per ``(a, g)`` component.
    """

    def __init__(self, comm: Communicator, dealer: Dealer, req: TruncProducts) -> None:
        self.comm = comm
        self.req = req
        self.mat = dealer.request(req)
        self.var = req.variables()
        self.public: dict[int, torch.Tensor] = {}
        self.sigma: dict[int, torch.Tensor] = {}  # opening -> 0/1 int64
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}  # mask products, per opening

    def open(self, xs: Mapping[int, torch.Tensor], label: str = "trunc") -> None:
        """Open ``x_o + 2^62 + r_o`` for the given openings (one round)."""
        keys = sorted(xs)
        self._cache.clear()
        masked = [add_public_(self.comm, xs[o] + self.mat[f"r{o}"], 1 << _BOUND) for o in keys]
        for o, c in zip(keys, self.comm.open(masked, label), strict=True):
            self.sigma[o] = (c >> 63) & 1
            for v, (ov, d) in enumerate(self.var):
                if ov == o:
                    self.public[v] = ((c >> d) & ((1 << (64 - d)) - 1)) - (1 << (_BOUND - d))

    def offset(self, v: int, value: int) -> None:
        """Subtract the public ``value`` from variable ``v`` (``t_v - value`` in monomials)."""
        self.public[v] = self.public[v] - value

    def _w(self, a: tuple[int, ...]) -> torch.Tensor:
        """Shares of ``prod_v W_v^(a_v)`` (degree >= 1) for the opened bits (cached)."""
        hit = self._cache.get(a)
        if hit is None:
            hit = self._cache[a] = self._select(a)
        return hit

    def _select(self, a: tuple[int, ...]) -> torch.Tensor:
        nz = [v for v, e in enumerate(a) if e]
        if len(nz) == 1 and a[nz[0]] == 1:
            v = nz[0]
            sign = 1 - 2 * self.sigma[self.var[v][0]]
            return self.mat[f"h{v}"] + self.mat[f"s{v}"] * sign
        opens = self.req.involved(a)
        out: torch.Tensor | None = None
        for g in range(1 << len(opens)):
            sel: torch.Tensor | None = None
            for j, o in enumerate(opens):
                bit = self.sigma[o] if (g >> j) & 1 else 1 - self.sigma[o]
                sel = bit if sel is None else sel * bit
            assert sel is not None
            term = self.mat[self.req.name(a, g)] * sel
            out = term if out is None else out + term
        assert out is not None
        return out

    def monomial(self, e: tuple[int, ...]) -> torch.Tensor:
        """Shares of ``prod_v t_v^(e_v)`` (exact modulo 2^64). Cost: local."""
        share: torch.Tensor | None = None
        public: torch.Tensor | None = None
        for a in itertools.product(*(range(k + 1) for k in e)):
            coef: torch.Tensor | int = 1
            for v, (ev, av) in enumerate(zip(e, a, strict=True)):
                if ev == av:
                    coef = coef * math.comb(ev, av)
                    continue
                power = self.public[v]
                for _ in range(ev - av - 1):
                    power = power * self.public[v]
                coef = coef * (math.comb(ev, av) * power)
            if sum(a) == 0:
                assert isinstance(coef, torch.Tensor)
                public = coef if public is None else public + coef
                continue
            term = self._w(a) * coef
            share = term if share is None else share + term
        assert share is not None
        return share if public is None else add_public(self.comm, share, public)

    def poly(self, terms: Sequence[tuple[int, tuple[int, ...]]], constant: int = 0) -> torch.Tensor:
        """Shares of ``constant + sum c * monomial(e)`` for public ints ``c``. Cost: local."""
        acc: torch.Tensor | None = None
        for c, e in terms:
            term = self.monomial(e) * _wrap(c)
            acc = term if acc is None else acc + term
        assert acc is not None
        return add_public(self.comm, acc, _wrap(constant)) if constant else acc


# ------------------------------------------------------------------ exponential
# Near-minimax polynomials (relative error, Lawson's iteration on Chebyshev nodes):
# e^t on [-16/81, 10/81], degree 4, max relative error 5.5e-8;
EXP_POLY = (
    0.9999999466905912,
    0.99999946556375,
    0.5000261534569513,
    0.16680692838037928,
    0.04010861261966256,
)
# 1/(8 v + 5.5) (that is 1/s for s = 8 v + 5.5 in [1, 10]) on [-0.5625, 0.5625],
# degree 5, max relative error 0.039.
RECIPROCAL_POLY = (
    0.18896286760570935,
    -0.2748531615676442,
    -0.006665528448443352,
    0.009671201855176679,
    3.4114912783631257,
    -4.962108362027406,
)
_EXP_DIV = 81  # e^x = (e^(x/81))^(3^4): four cubes
_EXP_STAGES = 4
_EXP_LOW = -16.0
_EXP_K = 30  # x/81 is x * round(2^30/81) truncated by 30 bits (to the variable's scale)
# Scales of x/81 for the degree 1-2, 3 and 4 terms; the polynomial's scale.
_EXP_T_BITS = (20, 15, 11)
_EXP_Y_BITS = 60
_MAX_BITS = 20  # most fractional bits of a cubed iterate: (2^20)^3 = 2^60


def _bits_for(max_value: float, power: int, top: float = 61.5) -> int:
    """Most fractional bits ``g`` with ``max_value * 2^(power g) < 2^top``, at most 20."""
    return min(_MAX_BITS, int((top - math.log2(max(max_value, 1.0))) // power))


def _exp_plan(upper: float, sum_terms: int) -> list[int]:
    """Fractional bits of the iterates ``e^(x/27), e^(x/9), e^(x/3), e^x`` before cubing.

    ``y_j`` is ``e^(x 3^(j+1) / 81)`` with ``x <= upper``; its cube at scale
    ``2^(3 g_j)`` must stay below ``2^61.5`` (the last one summed ``sum_terms`` times).
    """
    plan = []
    for j in range(_EXP_STAGES):
        top = math.exp(upper * 3 ** (j + 1) / _EXP_DIV) * 1.01
        if j == _EXP_STAGES - 1:
            top *= sum_terms
        plan.append(_bits_for(top, 3))
    return plan


def exp_rounds() -> int:
    """Rounds of :func:`exp_ring` (without ``wide``): polynomial, four cubes, last scaling."""
    return 1 + _EXP_STAGES + 1


def _exp_request(shape: tuple[int, ...], frac_bits: int, plan: Sequence[int]) -> TruncProducts:
    f = frac_bits
    t_shifts = tuple(_EXP_K + f - g for g in _EXP_T_BITS)
    shifts = [t_shifts]
    y_bits = [_EXP_Y_BITS] + [3 * g for g in plan[:-1]]
    shifts += [(wide - g,) for wide, g in zip(y_bits, plan, strict=True)]
    nvar = 3 + _EXP_STAGES
    mons = [tuple(2 if v == 0 else 0 for v in range(nvar))]
    mons.append(tuple(3 if v == 1 else 0 for v in range(nvar)))
    mons.append(tuple(4 if v == 2 else 0 for v in range(nvar)))
    mons += [tuple(3 if v == 3 + j else 0 for v in range(nvar)) for j in range(_EXP_STAGES)]
    return TruncProducts(shape, tuple(shifts), tuple(mons))


def exp_ring(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    frac_bits: int,
    *,
    upper: float = 10.0,
    sum_terms: int = 1,
    wide: bool = False,
) -> tuple[torch.Tensor, int]:
    """Shares of ``e^x`` for shares of ``x`` (scale ``2^f``) in ``[-16, upper]``.

    Protocol (range reduction with cubes; every power fused into a truncation):
        1. Open ``x * round(2^30 / 81)`` for a truncation to ``t = x / 81`` at
           three scales ``2^20, 2^15, 2^11`` (one opening); locally, the
           near-minimax polynomial ``P(t)`` of degree 4 for ``e^t`` on
           ``[-16/81, 10/81]`` (:data:`EXP_POLY`, relative error 5.5e-8), at
           scale ``2^60``: the degree 1-2 terms from the finest ``t``, degree 3
           and 4 from the coarser ones so that each monomial fits with a
           16-bit coefficient.
        2. Four times: truncate the current value ``e^(x 3^j / 81)`` to a scale
           ``2^g`` with ``g <= 20`` chosen so that its cube fits (from
           ``upper``), and cube it locally (scale ``2^(3g)``).
        3. Unless ``wide``: truncate ``e^x`` to ``2^f``.

    Cost: 6 rounds (5 with ``wide``), one ring element per element per round
    sent to each other party; the dealer sends 44 words per element (42 with ``wide``).
    Error: the polynomial's 5.5e-8 and one unit at ``2^-20`` amplified by
    the 81st power (about 1e-4 relative), the last cube's input at its scale
    (``2^-15`` for ``upper = 10``: 4e-4 relative at ``x = -4.6``), plus the
    final truncation's unit. Inputs below -16 give garbage: clamp first.

    Returns:
        ``(shares, scale_bits)``: ``e^x`` at scale ``2^scale_bits`` (``f``,
        or with ``wide`` the last cube's ``3 g``; at most ``2^61.5 / sum_terms``).
    """
    f = frac_bits
    shape = tuple(int(s) for s in x.shape[lead(comm) :])
    plan = _exp_plan(upper, sum_terms)
    req = _exp_request(shape, f, plan)
    fz = Fused(comm, dealer, req)
    fz.open({0: x * round((1 << _EXP_K) / _EXP_DIV)})
    nvar = 3 + _EXP_STAGES

    def mono(v: int, k: int) -> tuple[int, ...]:
        return tuple(k if i == v else 0 for i in range(nvar))

    g1, g3, g4 = _EXP_T_BITS
    terms = [
        (round(EXP_POLY[1] * 2.0 ** (_EXP_Y_BITS - g1)), mono(0, 1)),
        (round(EXP_POLY[2] * 2.0 ** (_EXP_Y_BITS - 2 * g1)), mono(0, 2)),
        (round(EXP_POLY[3] * 2.0 ** (_EXP_Y_BITS - 3 * g3)), mono(1, 3)),
        (round(EXP_POLY[4] * 2.0 ** (_EXP_Y_BITS - 4 * g4)), mono(2, 4)),
    ]
    y = fz.poly(terms, round(EXP_POLY[0] * 2.0**_EXP_Y_BITS))
    for j in range(_EXP_STAGES):
        fz.open({1 + j: y})
        y = fz.monomial(mono(3 + j, 3))
    scale = 3 * plan[-1]
    if wide:
        return y, scale
    return _trunc_to(comm, dealer, y, scale - f), f


def _trunc_to(comm: Communicator, dealer: Dealer, x: torch.Tensor, bits: int) -> torch.Tensor:
    from .truncation import trunc

    if bits <= 0:
        return x << -bits
    return trunc(comm, dealer, x, bits)


# ------------------------------------------------------------------ softmax
_CLAMP = 16.0  # exponents below -16 are 0 (e^-16 < 2^-23)
_RECIP_V_BITS = (20, 10)  # v = s/8 - 11/16: degree 1-2 terms, degree 3-5 terms
_RECIP_S_BITS = (26, 18)  # s in the Newton step, s in the last step
_RECIP_W_BITS = (16, 12)  # the iterate in the Newton step, in the last step
_RECIP_E_BITS = 18
_RECIP_W0_BITS = 60  # the polynomial's scale (w0 <= 1.05)
_RECIP_W1_BITS = _RECIP_S_BITS[0] + 2 * _RECIP_W_BITS[0]  # 58
_OUT_BITS = _RECIP_E_BITS + _RECIP_S_BITS[1] + 2 * _RECIP_W_BITS[1]  # 60
SOFTMAX_WIDE_BITS = _OUT_BITS
"""The scale (fractional bits) of :func:`softmax_ring`'s result with ``wide=True``."""


def softmax_rounds(compare_rounds: int) -> int:
    """Rounds of :func:`softmax_ring` with comparisons of ``compare_rounds`` rounds."""
    return compare_rounds + 1 + 1 + (1 + _EXP_STAGES) + 4


def softmax_ring(
    comm: Communicator, dealer: Dealer, x: torch.Tensor, frac_bits: int, *, wide: bool = False
) -> torch.Tensor:
    """Softmax over the last axis (``2 <= k <= 32`` classes), all steps fused.

    Protocol:
        1. One batch of comparisons: ``[x_i >= x_j]`` for ``i < j`` (the
           pairwise maximum of :func:`smpc.protocols.maximum.max_pairwise`) and
           the fused ``R_ij = relu(x_i - x_j + 16)`` for all ``i != j``.
        2. The one-hot ``o`` of the maximum, ``o_j = [wins_j == k - 1]``: the wins
           are small integers, so one dealer-assisted table lookup
           (:func:`smpc.protocols.lookup.eq_public`, one round) gives it.
        3. ``z_i = x_i - max(x) `` clamped at -16: ``sum_(j != i) o_j R_ij -
           16 (1 - o_i)``, one Beaver product of the ring bits (no truncation).
        4. ``e_i = e^(z_i)`` by :func:`exp_ring` (``wide``: 5 rounds), at a
           scale where ``s = sum_i e_i`` fits.
        5. One opening of ``s`` (per element: each copy its own mask) and of
           ``e``; locally the near-minimax degree-5 polynomial
           :data:`RECIPROCAL_POLY` in ``v = s/8 - 11/16`` (``1/s`` on [1, 10]
           to 3.9 % relative; ``s`` lies in [1, k]).
        6. One Newton step ``w <- 2w - s w^2`` (one opening: the iterate's
           truncation; ``s w^2`` from the dealer's mask products).
        7. The last Newton step times ``e``: ``2 e w - e s w^2`` (one opening),
           then, unless ``wide``, truncation to ``2^f`` (one round; with
           ``wide`` the result is at scale ``2^60``, for a caller that scales
           it anyway, such as a loss gradient's ``1/n``, to absorb).

    The iterate's own rounding barely matters (a Newton step squares the
    relative error, whatever its source), so it is truncated coarsely to fit
    ``e s w^2`` below ``2^61``; ``e`` and ``s`` keep 18 bits.
    Cost: 1 comparison + 11 rounds; per row, ``k (k-1)/2 + k (k-1)`` ReLUs,
    ``k`` lookups (8 bytes each), a Beaver product on ``k^2 + k`` elements, and
    the openings of ``k`` elements of steps 4-7. Accuracy: absolute error about ``2^-f``
    plus 2e-5 relative (measured in ``tests/smpc/protocols/test_truncpoly.py``).
    Valid for ``k <= 10`` (the polynomial's interval; more classes: the
    caller's other method).
    """
    f = frac_bits
    ld = lead(comm)
    k = x.shape[-1]
    if not 2 <= k <= 10:
        raise ValueError(f"softmax_ring takes 2 to 10 classes; got {k}")
    one = 1 << f
    iu = torch.triu_indices(k, k, 1)
    off = ~torch.eye(k, dtype=torch.bool)
    ii, jj = off.nonzero(as_tuple=True)
    d_lt = x[..., iu[0]] - x[..., iu[1]]
    d_all = add_public(comm, x[..., ii] - x[..., jj], round(_CLAMP * one))
    rel, bit = compare.relu(comm, dealer, torch.cat([d_lt, d_all], dim=-1))
    npair = iu.shape[1]
    ge = bit[..., :npair]  # [x_i >= x_j], i < j
    lt = add_public(comm, -ge, 1)  # [x_i < x_j]
    wins = torch.zeros_like(x)
    wins.index_add_(-1, iu[0], lt, alpha=-1)
    wins.index_add_(-1, iu[1], lt)
    add_public_(comm, wins, -torch.arange(k, dtype=torch.int64))
    r_mat = torch.zeros(*x.shape, k, dtype=torch.int64)
    r_mat[..., ii, jj] = rel[..., npair:]
    # The one-hot o_j = [wins_j == 0] by a table lookup (wins lie in [-(k-1), 0]),
    # then the products o_j R_ij: one Beaver round (cheaper on a slow provider link
    # than one lookup per (i, j) carrying them).
    domain = 1 << max(1, (k - 1).bit_length())
    onehot, _ = lookup.eq_public(comm, dealer, wins, 0, low=-(k - 1), domain=domain)
    prod = beaver.mul(comm, dealer, onehot.unsqueeze(-2), r_mat).sum(-1)
    clamp = round(_CLAMP * one)
    z = add_public(comm, prod + clamp * onehot, -clamp)
    e_wide, e_scale = exp_ring(comm, dealer, z, f, upper=0.0, sum_terms=k, wide=True)
    s_wide = e_wide.sum(-1, keepdim=True).expand_as(e_wide)

    shape = tuple(int(s) for s in x.shape[ld:])
    vh, vl = _RECIP_V_BITS
    sn, sl = _RECIP_S_BITS
    wn, wl = _RECIP_W_BITS
    # variables: 0 v_hi, 1 v_lo, 2 s_newton, 3 s_last (opening 0: s); 4 e (opening 1);
    # 5 w in the Newton step (opening 2); 6 w in the last step (opening 3)
    shifts = (
        (e_scale - vh + 3, e_scale - vl + 3, e_scale - sn, e_scale - sl),
        (e_scale - _RECIP_E_BITS,),
        (_RECIP_W0_BITS - wn,),
        (_RECIP_W1_BITS - wl,),
    )

    def mono(**ex: int) -> tuple[int, ...]:
        names = ("vh", "vl", "sn", "sl", "e", "wn", "wl")
        return tuple(ex.get(n, 0) for n in names)

    mons = (
        mono(vh=2),
        mono(vl=3),
        mono(vl=4),
        mono(vl=5),
        mono(sn=1, wn=2),
        mono(e=1, wl=1),
        mono(e=1, sl=1, wl=2),
    )
    fz = Fused(comm, dealer, TruncProducts(shape, shifts, mons))
    fz.open({0: s_wide, 1: e_wide})
    fz.offset(0, 11 << (vh - 4))  # v = s/8 - 11/16
    fz.offset(1, 11 << (vl - 4))
    c = RECIPROCAL_POLY
    top = _RECIP_W0_BITS
    w0 = fz.poly(
        [
            (round(c[1] * 2.0 ** (top - vh)), mono(vh=1)),
            (round(c[2] * 2.0 ** (top - 2 * vh)), mono(vh=2)),
            (round(c[3] * 2.0 ** (top - 3 * vl)), mono(vl=3)),
            (round(c[4] * 2.0 ** (top - 4 * vl)), mono(vl=4)),
            (round(c[5] * 2.0 ** (top - 5 * vl)), mono(vl=5)),
        ],
        round(c[0] * 2.0**top),
    )
    fz.open({2: w0})
    # w1 = 2 w - s w^2 at scale 2^(sn + 2 wn)
    w1 = fz.poly([(1 << (1 + sn + wn), mono(wn=1)), (-1, mono(sn=1, wn=2))])
    fz.open({3: w1})
    # e w (2 - s w) at scale 2^(e + sl + 2 wl)
    q = fz.poly([(1 << (1 + sl + wl), mono(e=1, wl=1)), (-1, mono(e=1, sl=1, wl=2))])
    return q if wide else _trunc_to(comm, dealer, q, _OUT_BITS - f)


# ------------------------------------------------------------------ reciprocal on [lo, hi]
_RECIP_ITER_BITS = 12  # the Newton iterate's scale (its rounding is squared away)


def reciprocal_plan(lo: float, hi: float, frac_bits: int) -> tuple[int, int, int] | None:
    """``(log2 H, bits of H/lo, scale of u = x/H)`` for :func:`reciprocal_ring`, or None.

    ``H`` is the power of two at or above ``hi``; the iterate ``w ~ H/x`` needs
    ``bits`` integer bits; ``u`` keeps ``37 - bits`` fractional bits. None when
    that leaves fewer than ``frac_bits`` bits of relative precision at ``x = lo``
    (``H / lo`` above about ``2^((37 - f)/2)``: 2^10 at ``f = 16``).
    """
    log_h = max(0, math.ceil(math.log2(hi)))
    bits = math.ceil(math.log2(1.05 * 2.0**log_h / lo))
    gu = 61 - bits - 2 * _RECIP_ITER_BITS
    if gu - bits < frac_bits:
        return None
    return log_h, bits, gu


def reciprocal_rounds(steps: int) -> int:
    """Rounds of :func:`reciprocal_ring` with ``steps`` Newton steps: one each, plus one."""
    return steps + 1


def reciprocal_ring(
    comm: Communicator,
    dealer: Dealer,
    x: torch.Tensor,
    frac_bits: int,
    bounds: tuple[float, float],
    line: tuple[float, float],
    steps: int,
) -> torch.Tensor:
    """Shares of ``1/x`` (scale ``2^f``) for ``x`` in ``bounds = (lo, hi)``, Newton from a line.

    Protocol (in ``u = x/H`` and ``w = H/x`` for the power of two ``H >= hi``):
        1. The start ``w_0 = H (a - b x)`` for the caller's line ``y_0 = a - b x``
           is local at a wide scale (``x`` times a public integer, no
           truncation); one round opens it and ``x`` (two openings): ``w_0``
           truncated to ``2^12`` and ``u`` to ``2^(37 - bits)``, where ``bits``
           bounds ``log2(H/lo)`` (:func:`reciprocal_plan`).
        2. Each Newton step ``w <- 2w - u w^2`` is local from the mask products;
           each next step opens the new iterate (one round).
        3. ``1/x = w/H``: one truncation to ``2^f``.

    The iterate is kept at 12 fractional bits only: a Newton step squares the
    relative error of its input, the rounding included, so that costs nothing;
    ``u`` keeps the precision of ``x``. Cost: ``steps + 1`` rounds, one ring
    element per element per opening (``steps + 1`` openings, the last a plain
    truncation) to each other party; the dealer sends ``12 steps + 4`` words
    per element. Needs :func:`reciprocal_plan` to return a plan.
    """
    f = frac_bits
    lo, hi = bounds
    plan = reciprocal_plan(lo, hi, f)
    if plan is None:
        raise ValueError(f"reciprocal_ring: bounds {bounds} too wide at frac_bits={f}")
    if steps < 1:
        raise ValueError(f"reciprocal_ring needs steps >= 1; got {steps}")
    log_h, bits, gu = plan
    gw = _RECIP_ITER_BITS
    s0 = 61 - bits
    lift = max(0, gu - f - log_h + 1)  # x shifted left so that u is a truncation
    shape = tuple(int(s) for s in x.shape[lead(comm) :])
    wide = gu + 2 * gw
    shifts = ((f + lift + log_h - gu,), *(((s0 if j == 0 else wide) - gw,) for j in range(steps)))
    nvar = 1 + steps

    def mono(**ex: int) -> tuple[int, ...]:
        return tuple(ex.get("u", 0) if v == 0 else ex.get(f"w{v - 1}", 0) for v in range(nvar))

    mons = tuple(mono(u=1, **{f"w{j}": 2}) for j in range(steps))
    fz = Fused(comm, dealer, TruncProducts(shape, shifts, mons))
    a, b = line
    h = 2.0**log_h
    # w0 = H a - H b x at scale 2^s0, from x at 2^f: x times round(H b 2^(s0 - f))
    w0 = add_public(comm, x * -round(h * b * 2.0 ** (s0 - f)), round(h * a * 2.0**s0))
    fz.open({0: x << lift, 1: w0})
    w = torch.empty(0)
    for j in range(steps):
        if j:
            fz.open({1 + j: w})
        w = fz.poly([(1 << (1 + gu + gw), mono(**{f"w{j}": 1})), (-1, mono(u=1, **{f"w{j}": 2}))])
    return _trunc_to(comm, dealer, w, wide + log_h - f)

"""Shamir secret sharing over the prime field GF(2^521 - 1), with gmpy2.

Top layer (``fl``), used by :mod:`fl.secure_aggregation` to share 256-bit
secrets (X25519 private keys and self-mask seeds) t-of-n among clients.
Coefficients come from :mod:`secrets` (a CSPRNG). Any ``t`` shares
reconstruct the secret; ``t - 1`` shares are independent of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

import gmpy2  # type: ignore[import-untyped]  # gmpy2 ships no stubs

from fl.errors import ConfigError, ProtocolError

__all__ = ["PRIME", "SHARE_BYTES", "reconstruct", "split"]

PRIME = gmpy2.mpz(2) ** 521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: int, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Split ``secret`` into shares ``f(x)`` for each ``x`` in ``xs`` (``f`` of degree ``t-1``).

    Raises:
        ConfigError: ``threshold`` < 1, an x is 0 or repeated, or the secret is out of the field.
    """
    points = list(xs)
    if threshold < 1 or threshold > len(points):
        raise ConfigError(f"`threshold` must be in [1, {len(points)}]; got {threshold}")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ConfigError("share points must be distinct and non-zero")
    if not 0 <= secret < PRIME:
        raise ConfigError("secret must be in [0, 2^521 - 1)")
    coeffs = [gmpy2.mpz(secret)] + [
        gmpy2.mpz(secrets.randbelow(int(PRIME))) for _ in range(threshold - 1)
    ]
    out: dict[int, int] = {}
    for x in points:
        acc = gmpy2.mpz(0)
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = int(acc)
    return out


def lagrange_at_zero(xs: tuple[int, ...]) -> list[gmpy2.mpz]:
    """Lagrange coefficients ``l_j(0)`` for the points ``xs``."""
    out = []
    for j, xj in enumerate(xs):
        num, den = gmpy2.mpz(1), gmpy2.mpz(1)
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (-xm) % PRIME
                den = den * (xj - xm) % PRIME
        out.append(num * gmpy2.invert(den, PRIME) % PRIME)
    return out


def reconstruct(
    shares: Mapping[int, int],
    threshold: int,
    cache: dict[tuple[int, ...], list[gmpy2.mpz]] | None = None,
) -> int:
    """Recover the secret from at least ``threshold`` shares (uses the ``threshold`` lowest x).

    Raises:
        ProtocolError: Fewer than ``threshold`` shares.
    """
    if len(shares) < threshold:
        raise ProtocolError(f"need {threshold} shares to reconstruct; got {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    if cache is not None and xs in cache:
        coeffs = cache[xs]
    else:
        coeffs = lagrange_at_zero(xs)
        if cache is not None:
            cache[xs] = coeffs
    acc = gmpy2.mpz(0)
    for x, c in zip(xs, coeffs, strict=True):
        acc = (acc + c * shares[x]) % PRIME
    return int(acc)

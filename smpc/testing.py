"""Plaintext oracles and derived tolerances for tests (top of the smpc layer).

Tolerances are derived from ``frac_bits``: encoding rounds each input by at most
half an ulp (2^-(f+1)); each truncation subtracts at most one ulp (2^-f).
"""

from __future__ import annotations

import torch

from .encoding import FixedPoint

__all__ = ["ulp", "encode_error", "product_tolerance", "matmul_tolerance", "assert_close"]


def ulp(frac_bits: int = 16) -> float:
    """One unit in the last place."""
    return FixedPoint(frac_bits).resolution


def encode_error(frac_bits: int = 16) -> float:
    """Largest rounding error of encoding one value."""
    return ulp(frac_bits) / 2


def product_tolerance(
    x: torch.Tensor, y: torch.Tensor, frac_bits: int = 16, truncations: int = 1
) -> torch.Tensor:
    """Elementwise bound on ``|dec(enc(x)*enc(y)) - x*y|``."""
    e = encode_error(frac_bits)
    x64, y64 = x.double().abs(), y.double().abs()
    return x64 * e + y64 * e + e * e + truncations * ulp(frac_bits) + 1e-12


def matmul_tolerance(x: torch.Tensor, y: torch.Tensor, frac_bits: int = 16) -> torch.Tensor:
    """Bound on ``|dec(enc(x)@enc(y)) - x@y|`` (one truncation after the sum)."""
    e = encode_error(frac_bits)
    x64, y64 = x.double().abs(), y.double().abs()
    k = x.shape[-1]
    return (
        (x64 @ torch.ones_like(y64)) * e
        + (torch.ones_like(x64) @ y64) * e
        + k * e * e
        + ulp(frac_bits)
        + 1e-12
    )


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor | float) -> None:
    """Raise AssertionError with the worst element when ``|got - want| > tol``."""
    diff = (got.double() - want.double()).abs()
    # Both sides may be float32: allow their representation error (2 ulps of float32).
    f32 = 2.4e-7 * (got.double().abs() + want.double().abs())
    tol = torch.as_tensor(tol, dtype=torch.float64) + f32
    bad = diff > tol
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        t = torch.as_tensor(tol, dtype=torch.float64).expand_as(diff).flatten()[i]
        raise AssertionError(
            f"{int(bad.sum())} of {diff.numel()} elements differ; first at {i}: got "
            f"{got.flatten()[i].item()}, want {want.flatten()[i].item()}, tol {t.item():.3g}"
        )

"""Clipping and ring quantization of client updates (top layer, ``fl``).

Secure aggregation sums integers in a ring, so a float update must be bounded
and scaled first. :class:`Quantizer` maps floats in ``[-clip_range, clip_range]``
to ``Z_2^bits`` (32 by default; stored as ``numpy.uint32``) with a scale chosen so that the sum
of ``n_clients`` such values can never wrap around: the decoded sum is always
the true sum of the quantized inputs. A value outside the range is a
:class:`~fl.errors.QuantizationRangeError`, never a silent wrong sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fl.errors import ConfigError, QuantizationRangeError

__all__ = ["Quantizer", "clip_by_l2_norm"]

RING_BITS = 32  # the default ring width; `Quantizer.bits` may narrow it
_WIDTHS = (16, 24, 32)


def clip_by_l2_norm(vector: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale ``vector`` down so its L2 norm is at most ``max_norm`` (unchanged if already).

    Raises:
        ConfigError: ``max_norm`` is not positive and finite.
    """
    if not (max_norm > 0 and math.isfinite(max_norm)):
        raise ConfigError(f"`max_norm` must be a positive finite number; got {max_norm}")
    norm = float(torch.linalg.vector_norm(vector.to(torch.float64)))
    if norm <= max_norm:
        return vector
    return vector * (max_norm / norm)


@dataclass(frozen=True, slots=True)
class Quantizer:
    """Fixed-point quantizer of float vectors into ``Z_2^bits`` for summation.

    Range: every coordinate of every client input must lie in
    ``[-clip_range, clip_range]``. The scale is the largest with
    ``n_clients * (clip_range * scale + 1/2) <= 2^(bits-1) - 1``, so any sum of at
    most ``n_clients`` inputs fits the signed ``bits``-bit range and decodes
    exactly. Resolution is ``1 / scale``: about ``n_clients * clip_range / 2^(bits-1)``
    (4.7e-9 for 10 clients, range 1 and 32 bits; 1.2e-6 with 24 bits).

    Ring elements are held as ``numpy.uint32`` (arithmetic modulo 2^32 is also
    correct modulo ``2^bits``) and travel packed in ``bits/8`` bytes each
    (:meth:`pack`): 24 bits upload 3 bytes per parameter instead of 4.

    Attributes:
        clip_range: Bound on the absolute value of each input coordinate.
        n_clients: Largest number of inputs that will be summed.
        bits: Ring width: 16, 24 or 32 (default).
    """

    clip_range: float
    n_clients: int
    bits: int = RING_BITS

    def __post_init__(self) -> None:
        if self.bits not in _WIDTHS:
            raise ConfigError(f"`bits` must be one of {_WIDTHS}; got {self.bits}")
        if not (self.clip_range > 0 and math.isfinite(self.clip_range)):
            raise ConfigError(
                f"`clip_range` must be a positive finite number; got {self.clip_range}"
            )
        if not 1 <= self.n_clients < self._half // 4:
            raise ConfigError(
                f"`n_clients` must be in [1, 2^{self.bits - 3}) for a {self.bits}-bit ring; "
                f"got {self.n_clients}"
            )

    @property
    def _half(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def bytes_per_element(self) -> int:
        """Bytes of one ring element on the wire (:meth:`pack`)."""
        return self.bits // 8

    @property
    def scale(self) -> float:
        """Ring units per unit of value."""
        # 1 unit of slack per input for rounding, and 2^-20 relative for float32 products
        return ((self._half - 1) / self.n_clients - 1.0) / self.clip_range * (1.0 - 2.0**-20)

    @property
    def resolution(self) -> float:
        """Value of one ring unit."""
        return 1.0 / self.scale

    def quantize(
        self, vector: torch.Tensor, *, multiplier: float = 1.0, name: str = "update"
    ) -> np.ndarray:
        """Encode ``multiplier * vector`` as ``uint32`` ring elements (two's complement).

        The product with the scale is taken in float32, so the rounding error of
        a coordinate is at most ``max(1/2, |x| * scale * 2^-24)`` ring units, no
        coarser than float32 itself. The range check is exact and happens
        before anything is encoded.

        Raises:
            QuantizationRangeError: A coordinate of ``multiplier * vector`` is NaN/inf
                or outside ``[-clip_range, clip_range]``.
        """
        factor = float(multiplier) * self.scale
        v = torch.mul(vector.detach().reshape(-1).to(torch.float32), factor)
        if v.numel():
            lo, hi = torch.aminmax(v)
            peak = max(-float(lo), float(hi))
            limit = self.clip_range * self.scale
            if not math.isfinite(peak) or peak > limit * (1.0 + 2.0**-22):
                raise QuantizationRangeError(
                    f"{name}: every coordinate must lie in [-{self.clip_range}, {self.clip_range}] "
                    f"(the quantizer's documented range); got max |x| = {peak / self.scale:.6g}. "
                    "Clip the update (e.g. DP `clip_norm`) or raise `clip_range`"
                )
        q = v.round_().to(torch.int32).numpy().view(np.uint32)
        if self.bits < 32:
            q &= np.uint32((1 << self.bits) - 1)
        return q

    def dequantize(self, ring: np.ndarray) -> torch.Tensor:
        """Decode a sum of at most ``n_clients`` quantized vectors to float32.

        ``ring`` holds ``uint32`` values taken modulo ``2^bits`` (higher bits are ignored).
        """
        r = np.asarray(ring, dtype=np.uint32)
        if self.bits == 32:
            signed = r.view(np.int32).astype(np.float64)
        else:  # sign-extend the low `bits` bits
            low = (r & np.uint32((1 << self.bits) - 1)).astype(np.int64)
            signed = ((low ^ self._half) - self._half).astype(np.float64)
        return torch.from_numpy(signed / self.scale).to(torch.float32)

    def pack(self, ring: np.ndarray) -> np.ndarray:
        """Ring elements (``uint32``, modulo ``2^bits``) in ``bits/8`` bytes each.

        32 bits: the ``uint32`` array itself. 16 and 24 bits: a ``uint8`` array of
        ``dim * bits/8`` bytes in planes, the low 16 bits of every element
        (little-endian ``uint16``) then, for 24 bits, bits 16-23 of every element:
        contiguous narrowing casts, no byte shuffling.
        """
        r = np.ascontiguousarray(ring, dtype=np.uint32)
        if self.bits == 32:
            return r
        low = r.astype(np.uint16).view(np.uint8)
        if self.bits == 16:
            return low
        return np.concatenate([low, (r >> 16).astype(np.uint8)])

    def unpack(self, packed: np.ndarray, dim: int) -> np.ndarray:
        """Inverse of :meth:`pack`: ``uint32[dim]`` with values in ``[0, 2^bits)``.

        Raises:
            QuantizationRangeError: ``packed`` has the wrong dtype or size.
        """
        want = (np.uint32, dim) if self.bits == 32 else (np.uint8, dim * self.bits // 8)
        if packed.dtype != want[0] or packed.shape != (want[1],):
            raise QuantizationRangeError(
                f"packed ring vector must be {np.dtype(want[0]).name}[{want[1]}] "
                f"for {dim} {self.bits}-bit elements; got {packed.dtype}{list(packed.shape)}"
            )
        if self.bits == 32:
            return packed
        out = packed[: 2 * dim].view(np.uint16).astype(np.uint32)
        if self.bits == 24:
            out |= packed[2 * dim :].astype(np.uint32) << 16
        return out

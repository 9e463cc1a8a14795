"""Clipping and ring quantization of client updates (top layer, ``fl``).

Secure aggregation sums integers in a ring, so a float update must be bounded
and scaled first. :class:`Quantizer` maps floats in ``[-clip_range, clip_range]``
to ``Z_2^32`` (stored as ``numpy.uint32``) with a scale chosen so that the sum
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

RING_BITS = 32
_HALF = 1 << (RING_BITS - 1)


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
    """Fixed-point quantizer of float vectors into ``Z_2^32`` for summation.

    Range: every coordinate of every client input must lie in
    ``[-clip_range, clip_range]``. The scale is the largest with
    ``n_clients * (clip_range * scale + 1/2) <= 2^31 - 1``, so any sum of at most
    ``n_clients`` inputs fits the signed 32-bit range and decodes exactly.
    Resolution is ``1 / scale`` (e.g. 4.7e-9 for 10 clients and range 1).

    Attributes:
        clip_range: Bound on the absolute value of each input coordinate.
        n_clients: Largest number of inputs that will be summed.
    """

    clip_range: float
    n_clients: int

    def __post_init__(self) -> None:
        if not (self.clip_range > 0 and math.isfinite(self.clip_range)):
            raise ConfigError(
                f"`clip_range` must be a positive finite number; got {self.clip_range}"
            )
        if not 1 <= self.n_clients < _HALF // 4:
            raise ConfigError(f"`n_clients` must be in [1, 2^29); got {self.n_clients}")

    @property
    def scale(self) -> float:
        """Ring units per unit of value."""
        # 1 unit of slack per input for rounding, and 2^-20 relative for float32 products
        return ((_HALF - 1) / self.n_clients - 1.0) / self.clip_range * (1.0 - 2.0**-20)

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
        q = v.round_().to(torch.int32)
        return q.numpy().view(np.uint32)

    def dequantize(self, ring: np.ndarray) -> torch.Tensor:
        """Decode a sum of at most ``n_clients`` quantized vectors to float32."""
        signed = np.asarray(ring, dtype=np.uint32).view(np.int32).astype(np.float64)
        return torch.from_numpy(signed / self.scale).to(torch.float32)

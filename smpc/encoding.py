"""Fixed-point encoding of real numbers into Z_2^64 (bottom layer: pure, local).

A real ``v`` is stored as the ring element ``round(v * 2^f)``, read as a signed
64-bit integer; ``f = frac_bits``. The documented range of *inputs* is
``|v| < 2^(31 - f)... `` see :attr:`FixedPoint.max_value`: it leaves room so that
the product of two in-range values (scale 2^(2f)) stays below 2^62, the bound
under which truncation is exact to one unit in the last place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import EncodingOverflowError

__all__ = ["FixedPoint", "as_plain_tensor", "plain_dtype"]

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_ACCEPTED = "a torch.Tensor, a number, a (nested) sequence of numbers or a numpy array"


def as_plain_tensor(value: object, *, name: str = "value") -> torch.Tensor:
    """Convert a plaintext input to a tensor, with typed errors that name ``name``.

    Accepts what ``torch.as_tensor`` accepts for numbers: tensors, Python
    numbers, (nested) sequences of numbers and numpy arrays. A torch
    ``Dataset``/``DataLoader`` is refused (share its tensors or its batches).

    Raises:
        TypeError: ``value`` is not numeric data (a dataset, a string, a dict...).
        EncodingOverflowError: an integer does not fit in 64 bits.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (Dataset, DataLoader)):
        raise TypeError(
            f"`{name}` must be {_ACCEPTED}; got a {type(value).__name__} (a torch data "
            "container): share its tensors, e.g. `sess.share(dataset.tensors[0])`, or each "
            "batch a DataLoader yields"
        )
    if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
        raise EncodingOverflowError(
            f"`{name}` must be within the fixed-point range (an int of at most 64 bits); "
            f"got {value}"
        )
    if isinstance(value, (str, bytes, dict)):
        raise TypeError(f"`{name}` must be {_ACCEPTED}; got {type(value).__name__}")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        if "overflow" in str(err).lower():
            raise EncodingOverflowError(
                f"`{name}` holds an integer beyond 64 bits (and beyond the fixed-point range)"
            ) from err
        raise TypeError(
            f"`{name}` must be {_ACCEPTED}; got {type(value).__name__} ({err})"
        ) from err


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Fixed-point format with ``frac_bits`` fractional bits in a 64-bit ring.

    Attributes:
        frac_bits: number of fractional bits f (0 <= f <= 30). Resolution 2^-f.
    """

    frac_bits: int = 16

    def __post_init__(self) -> None:
        f = self.frac_bits
        if isinstance(f, bool) or not isinstance(f, int):
            raise TypeError(
                f"`frac_bits` must be an int in [0, 30]; got {f!r} ({type(f).__name__})"
            )
        if not 0 <= f <= 30:
            raise ValueError(f"`frac_bits` must be an int in [0, 30]; got {f!r}")

    @property
    def scale(self) -> int:
        """2^frac_bits."""
        return 1 << self.frac_bits

    @property
    def resolution(self) -> float:
        """One unit in the last place: 2^-frac_bits."""
        return 1.0 / self.scale

    @property
    def max_value(self) -> float:
        """Largest magnitude accepted by :meth:`encode`: 2^(31 - f) (2^15 = 32768 for f=16).

        Products of two such values are below 2^62 at scale 2^(2f), which keeps
        truncation exact within one ulp. Sums may grow beyond it (up to 2^(62-2f)... the
        ring holds 2^(63-f)); multiplying such grown values is the caller's risk.
        """
        return float(1 << (31 - self.frac_bits))

    def encode(self, value: torch.Tensor | float | int, *, name: str = "value") -> torch.Tensor:
        """Encode reals (or ints) into int64 ring elements.

        Raises:
            EncodingOverflowError: if any element is NaN/inf or ``|v| > max_value``.
        """
        t = as_plain_tensor(value, name=name)
        if t.is_complex():
            raise TypeError(f"`{name}` must be real; got dtype {t.dtype}")
        if t.dtype == torch.bool:
            t = t.to(torch.int64)
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = t[~finite].flatten()[0].item()
                raise EncodingOverflowError(
                    f"`{name}` must be finite; got {bad} at "
                    f"{int((~finite).flatten().nonzero()[0])} (flat index)"
                )
            t64 = t.to(torch.float64)
            if t64.numel() and float(t64.abs().max()) > self.max_value:
                raise EncodingOverflowError(
                    f"`{name}` must satisfy |v| <= {self.max_value:g} for frac_bits="
                    f"{self.frac_bits}; got {float(t64.abs().max()):g}"
                )
            return torch.round(t64 * self.scale).to(torch.int64)
        t = t.to(torch.int64)
        if t.numel():
            # Python ints: abs() of int64's minimum -2^63 would wrap to itself in torch.
            lo, hi = int(t.min()), int(t.max())
            worst = hi if hi >= -lo else lo
            if abs(worst) > self.max_value:
                raise EncodingOverflowError(
                    f"`{name}` must satisfy |v| <= {self.max_value:g} for frac_bits="
                    f"{self.frac_bits}; got {worst}"
                )
        return t * self.scale

    def decode(self, ring_value: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode int64 ring elements (signed interpretation) into ``dtype``.

        Floating ``dtype``: the ring value is converted to float64 (exact while
        ``|ring_value| < 2^53``, i.e. ``|v| < 2^(53 - f)``: every bit the ring
        holds; beyond, rounded to the nearest float64) and multiplied by the exact
        power of two ``2^-f``; a narrower float (float32...) then rounds that once
        more. Integer or bool ``dtype``: the ring value is rounded to the nearest
        integer in int64 arithmetic (exact: ``(r + 2^(f-1)) >> f``), then cast.
        """
        if dtype.is_floating_point:
            out = ring_value.to(torch.float64).mul_(self.resolution)
            return out if dtype == torch.float64 else out.to(dtype)
        if dtype.is_complex:
            raise TypeError(f"`dtype` must be a real dtype; got {dtype}")
        f = self.frac_bits
        rounded = ((ring_value + (1 << (f - 1))) >> f) if f else ring_value
        return rounded.to(dtype)


def plain_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype :meth:`SharedTensor.reveal` returns for a shared plaintext ``t``.

    Floating tensors keep their dtype (float16, bfloat16, float32, float64);
    integer and bool tensors reveal as int64 (the ring's integer type).
    """
    return t.dtype if t.is_floating_point() else torch.int64

"""Differential privacy for aggregation: clipping, Gaussian noise, RDP accounting.

Top layer (``fl``). DP is an option of every aggregator
(``PlainAggregator(dp=DifferentialPrivacy(...))``), following DP-FedAvg
(McMahan et al., ICLR 2018):

1. each client's update is clipped to L2 norm ``clip_norm`` (``C``);
2. the server averages with a fixed denominator ``m`` (the number of clients
   selected in the round), so one client changes the average by at most ``C/m``;
3. Gaussian noise of standard deviation ``z * C / m`` is added to the average,
   where ``z`` is the noise multiplier.

Privacy is per client (user-level): neighbouring datasets differ in one
client's whole data. Clients are sampled each round with probability ``q``
(the strategy's fraction); the accountant treats sampling as Poisson, as
Opacus and TF-Privacy do for fixed-size sampling.

:class:`RdpAccountant` is the Rényi-DP accountant of the sampled Gaussian
mechanism (Mironov, Talwar, Zhang 2019) over integer orders 2..256, with the
RDP -> (epsilon, delta) conversion of Balle et al. (2020) that Opacus uses.
Integer orders only make it at most slightly more conservative than Opacus,
which also tries fractional orders (a test compares the two when Opacus is
installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fl.errors import PrivacyError

__all__ = [
    "DifferentialPrivacy",
    "RdpAccountant",
    "calibrate_noise_multiplier",
    "compute_epsilon",
]

DEFAULT_ORDERS: tuple[int, ...] = tuple(range(2, 257))


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


def _rdp_sampled_gaussian(q: float, z: float, order: int) -> float:
    """RDP of order ``order`` of one step of the sampled Gaussian mechanism."""
    if q == 0:
        return 0.0
    if z == 0:
        return math.inf
    if q == 1.0:
        return order / (2 * z * z)
    log_a = -math.inf
    log_q, log_1q = math.log(q), math.log1p(-q)
    for i in range(order + 1):
        log_coef = math.lgamma(order + 1) - math.lgamma(i + 1) - math.lgamma(order - i + 1)
        term = log_coef + i * log_q + (order - i) * log_1q + (i * i - i) / (2 * z * z)
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


def compute_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    orders: Sequence[int] = DEFAULT_ORDERS,
) -> float:
    """Epsilon after ``steps`` sampled-Gaussian steps, at ``delta``.

    Raises:
        PrivacyError: Parameters out of range.
    """
    if not 0 < delta < 1:
        raise PrivacyError(f"`delta` must be in (0, 1); got {delta}")
    if not 0 <= sampling_rate <= 1:
        raise PrivacyError(f"`sampling_rate` must be in [0, 1]; got {sampling_rate}")
    if not noise_multiplier >= 0:  # also refuses NaN
        raise PrivacyError(f"`noise_multiplier` must be >= 0; got {noise_multiplier}")
    if steps == 0 or sampling_rate == 0:
        return 0.0
    best = math.inf
    for a in orders:
        rdp = steps * _rdp_sampled_gaussian(sampling_rate, noise_multiplier, a)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sampling_rate: float, steps: int
) -> float:
    """Smallest noise multiplier (to 0.1 %) that keeps epsilon <= target after ``steps``.

    Raises:
        PrivacyError: The target is not positive, or unreachable below ``z = 1e4``.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyError(
            f"`target_epsilon` must be a positive finite number; got {target_epsilon} "
            "(for no privacy, use no DP)"
        )
    lo, hi = 0.0, 1.0
    while compute_epsilon(hi, sampling_rate, steps, delta) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyError(
                f"cannot reach epsilon={target_epsilon} at delta={delta} with {steps} rounds"
            )
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if compute_epsilon(mid, sampling_rate, steps, delta) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


class RdpAccountant:
    """Tracks the privacy spent by a sequence of sampled Gaussian steps."""

    __slots__ = ("history",)

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []  # (noise multiplier, q, steps)

    def step(self, noise_multiplier: float, sampling_rate: float) -> None:
        """Record one step (one round)."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sampling_rate):
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + 1)
        else:
            self.history.append((noise_multiplier, sampling_rate, 1))

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        if not self.history:
            return 0.0
        best = math.inf
        for a in DEFAULT_ORDERS:
            rdp = sum(n * _rdp_sampled_gaussian(q, z, a) for z, q, n in self.history)
            eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
            best = min(best, eps)
        return max(best, 0.0)

    def state_dict(self) -> dict[str, list[tuple[float, float, int]]]:
        """Serialisable state (for checkpoints)."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, list[tuple[float, float, int]]]) -> None:
        """Restore :meth:`state_dict` output."""
        self.history = [tuple(h) for h in state["history"]]  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class DifferentialPrivacy:
    """Client-level DP option of an aggregator (DP-FedAvg).

    Give either ``noise_multiplier`` directly, or ``target_epsilon`` and the
    aggregator calibrates ``z`` for the run's rounds and sampling rate when the
    server starts (:meth:`resolve`).

    Attributes:
        clip_norm: L2 bound ``C`` applied to each client's update.
        noise_multiplier: ``z``; the noise std on the average is ``z * C / m``.
        target_epsilon: Epsilon to reach at the end of the run (instead of ``z``).
        target_delta: Delta of the reported epsilon.
        distributed: Masking aggregator only: each client adds its share of the
            noise (variance ``(zC/m)^2 / t``, ``t`` the threshold) before masking,
            so the server never sees an un-noised sum while at least ``t``
            clients survive. Noise is continuous Gaussian rounded to the ring
            grid (not a discrete Gaussian), a documented approximation.
        seed: Seed of the noise generator for reproducible tests only; ``None``
            seeds it from ``os.urandom`` (use this in real runs).
    """

    clip_norm: float
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    target_delta: float = 1e-5
    distributed: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise PrivacyError(
                f"`clip_norm` must be a positive finite number; got {self.clip_norm}"
            )
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise PrivacyError("give exactly one of `noise_multiplier` and `target_epsilon`")
        z = self.noise_multiplier
        if z is not None and not (z >= 0 and math.isfinite(z)):
            raise PrivacyError(
                f"`noise_multiplier` must be a finite number >= 0; got {z} "
                "(an infinite noise multiplier would make the average infinite)"
            )
        eps = self.target_epsilon
        if eps is not None and not (eps > 0 and math.isfinite(eps)):
            raise PrivacyError(
                f"`target_epsilon` must be a positive finite number; got {eps} "
                "(for no privacy, use no DP)"
            )
        if not 0 < self.target_delta < 1:
            raise PrivacyError(f"`target_delta` must be in (0, 1); got {self.target_delta}")

    def resolve(self, *, num_rounds: int, sampling_rate: float) -> float:
        """The noise multiplier to use for a run of ``num_rounds`` at ``sampling_rate``."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None
        return calibrate_noise_multiplier(
            self.target_epsilon, self.target_delta, sampling_rate, num_rounds
        )

    def generator(self) -> torch.Generator:
        """A fresh noise generator (seeded from ``seed`` or from ``os.urandom``)."""
        import os

        g = torch.Generator()
        g.manual_seed(
            self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")
        )
        return g

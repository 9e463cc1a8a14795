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

Noise comes from a cryptographically secure generator (:class:`GaussianNoise`:
AES-128-CTR keystream turned Gaussian by the Box-Muller transform), never from
torch's Mersenne Twister, whose state an observer of enough noised outputs
could recover and so subtract the noise. ``DifferentialPrivacy(seed=...)`` is
the testing switch: it derives the key from the seed (reproducible runs);
without it every key comes from ``os.urandom``. As in every floating-point
implementation of the Gaussian mechanism (Opacus's included), the noise is a
float64 sample rounded to the update's dtype, not an exact real Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fl.errors import PrivacyError
from smpc.prg import KEY_BYTES, AesPrg, key_from_seed

__all__ = [
    "DifferentialPrivacy",
    "GaussianNoise",
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

    def generator(self, stream: str = "central") -> GaussianNoise:
        """A fresh noise source (CSPRNG; keyed from ``seed`` under the testing switch).

        ``stream`` names the noise stream (e.g. one per client for distributed
        noise) so that seeded streams are independent; without ``seed`` every
        call draws a fresh key from ``os.urandom``.
        """
        if self.seed is None:
            return GaussianNoise()
        return GaussianNoise(key_from_seed(self.seed, label=f"fl/dp-noise/{stream}"))


class GaussianNoise:
    """Gaussian noise from a CSPRNG: AES-128-CTR keystream, Box-Muller transform.

    Each pair of uniform 64-bit words ``(w1, w2)`` gives two independent normal
    samples ``sqrt(-2 ln u1) * (cos, sin)(2 pi u2)``, with ``u1 = 1 - w1 / 2^64``
    in ``(0, 1]`` and ``u2 = w2 / 2^64`` in ``[0, 1)`` (53-bit precision),
    computed in float64.

    Args:
        key: 16-byte AES key; ``None`` draws one from ``os.urandom`` (the secure
            default). A key from a seed is for reproducible tests only
            (:meth:`DifferentialPrivacy.generator`).
    """

    __slots__ = ("_prg",)

    def __init__(self, key: bytes | None = None) -> None:
        self._prg = AesPrg(key)

    def __repr__(self) -> str:
        return "GaussianNoise(<key hidden>)"

    def normal(
        self, std: float, shape: Sequence[int] | torch.Size, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Samples of ``N(0, std^2)`` of ``shape`` (float64 internally, then ``dtype``)."""
        if not (std >= 0 and math.isfinite(std)):
            raise PrivacyError(f"`std` must be a finite number >= 0; got {std}")
        n = math.prod(shape)
        half = (n + 1) // 2
        words = self._prg.random_int64(2 * half)
        mant = torch.bitwise_and(words >> 11, (1 << 53) - 1).to(torch.float64) * 2.0**-53
        u1 = 1.0 - mant[:half]  # (0, 1]: the log is finite
        theta = mant[half:] * (2 * math.pi)
        r = torch.sqrt(-2.0 * torch.log(u1))
        z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n]
        return (z * std).to(dtype).reshape(tuple(shape))

    def get_state(self) -> torch.Tensor:
        """The stream's key and position, as uint8 (for checkpoints: keep it secret)."""
        pos = self._prg.tell().to_bytes(8, "little")
        return torch.frombuffer(bytearray(self._prg._key + pos), dtype=torch.uint8).clone()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore :meth:`get_state` output.

        Raises:
            PrivacyError: ``state`` is not a noise stream's state.
        """
        if (
            not isinstance(state, torch.Tensor)
            or state.dtype != torch.uint8
            or state.numel() != KEY_BYTES + 8
        ):
            got = type(state).__name__
            if isinstance(state, torch.Tensor):
                got = f"a {state.dtype} tensor of {state.numel()} elements"
            raise PrivacyError(
                f"a noise generator state must be {KEY_BYTES + 8} uint8 values; got {got}"
            )
        raw = bytes(state.reshape(-1).tolist())
        self._prg = AesPrg(raw[:KEY_BYTES])
        self._prg.seek(int.from_bytes(raw[KEY_BYTES:], "little"))

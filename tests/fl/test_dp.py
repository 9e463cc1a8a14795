"""Differential privacy: accountant, calibration, clipping and the noise actually added."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fl
from fl.aggregators import Stage
from fl.dp import GaussianNoise, compute_epsilon
from fl.types import ClientUpdate


def test_full_participation_matches_the_gaussian_mechanism_closed_form() -> None:
    z, steps, delta = 1.3, 10, 1e-5
    # RDP of the Gaussian mechanism is a / (2 z^2) per step; same conversion as the accountant
    best = min(
        steps * a / (2 * z * z) + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a in range(2, 257)
    )
    assert compute_epsilon(z, 1.0, steps, delta) == pytest.approx(best)


@pytest.mark.parametrize(("q", "z", "steps"), [(1.0, 1.0, 20), (0.1, 1.1, 100), (0.3, 0.8, 50)])
def test_accountant_agrees_with_opacus(q: float, z: float, steps: int) -> None:
    rdp_mod = pytest.importorskip("opacus.accountants.analysis.rdp")
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = rdp_mod.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=orders)
    theirs = rdp_mod.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0]
    ours = compute_epsilon(z, q, steps, 1e-5)
    assert theirs <= ours <= theirs * 1.05  # integer orders only: slightly conservative


def test_calibration_hits_the_target() -> None:
    z = fl.calibrate_noise_multiplier(2.0, 1e-5, 0.5, 30)
    assert compute_epsilon(z, 0.5, 30, 1e-5) <= 2.0
    assert compute_epsilon(z * 0.99, 0.5, 30, 1e-5) > 2.0
    acc = fl.RdpAccountant()
    for _ in range(30):
        acc.step(z, 0.5)
    assert acc.get_epsilon(1e-5) == pytest.approx(compute_epsilon(z, 0.5, 30, 1e-5))


def test_invalid_settings() -> None:
    with pytest.raises(fl.PrivacyError):
        fl.DifferentialPrivacy(clip_norm=1.0)
    with pytest.raises(fl.PrivacyError):
        fl.DifferentialPrivacy(clip_norm=0.0, noise_multiplier=1.0)
    with pytest.raises(fl.PrivacyError):
        fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0, target_epsilon=1.0)
    with pytest.raises(fl.ConfigError):
        fl.SecretSharingAggregator(
            dp=fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0, distributed=True)
        )


def _zeros(m: int, dim: int) -> list[ClientUpdate]:
    return [ClientUpdate(i, torch.zeros(dim), 10 + i) for i in range(m)]


@pytest.mark.parametrize(
    "make",
    [
        lambda dp: fl.PlainAggregator(dp=dp),
        lambda dp: fl.MaskingAggregator(clip_range=1.0, dp=dp),
    ],
    ids=["plain-central", "masking-central"],
)
def test_central_noise_scale_matches_calibration(make: object) -> None:
    m, dim, clip, z = 5, 40_000, 2.0, 1.5
    agg = make(fl.DifferentialPrivacy(clip_norm=clip, noise_multiplier=z, seed=0))  # type: ignore[operator]
    res = agg.aggregate(_zeros(m, dim))
    expected = z * clip / m
    assert res.noise_std == pytest.approx(expected)
    assert float(res.mean.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(res.mean.mean())) < 5 * expected / math.sqrt(dim)


def test_distributed_noise_is_split_among_clients() -> None:
    m, dim, clip, z = 6, 40_000, 1.0, 2.0
    dp = fl.DifferentialPrivacy(clip_norm=clip, noise_multiplier=z, distributed=True, seed=3)
    agg = fl.MaskingAggregator(clip_range=1.0, dp=dp)
    t = m // 2 + 1
    res = agg.aggregate(_zeros(m, dim), dropouts={Stage.INPUT: [0, 1]})  # 4 = t survive
    per_client = z * clip / m / math.sqrt(t)
    assert res.noise_std == pytest.approx(per_client * math.sqrt(4))
    assert float(res.mean.std()) == pytest.approx(res.noise_std, rel=0.03)
    assert res.noise_std >= z * clip / m  # at least the calibrated noise while >= t survive


def test_updates_are_clipped_per_client() -> None:
    clip = 0.5
    ups = [ClientUpdate(i, torch.full((100,), 3.0 * (i + 1)), 1) for i in range(3)]
    dp = fl.DifferentialPrivacy(clip_norm=clip, noise_multiplier=0.0)
    res = fl.PlainAggregator(dp=dp).aggregate(ups)
    # every clipped update is the same vector of norm `clip`, so is their mean
    assert float(res.mean.norm()) == pytest.approx(clip, rel=1e-5)


def test_epsilon_is_reported_per_round() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 4, generator=g), torch.randint(0, 2, (60,), generator=g)
    clients = [fl.Client(i, x[i * 10 : (i + 1) * 10], y[i * 10 : (i + 1) * 10]) for i in range(6)]
    dp = fl.DifferentialPrivacy(clip_norm=1.0, target_epsilon=3.0, seed=0)
    agg = fl.PlainAggregator(dp=dp)
    torch.manual_seed(0)
    h = fl.run_simulation(
        torch.nn.Linear(4, 2),
        clients,
        num_rounds=4,
        aggregator=agg,
        strategy=fl.FedAvg(fraction_fit=0.5),
    )
    eps = h.epsilon
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert eps[-1] <= 3.0 and eps[-1] > 2.5


def test_infinite_settings_are_clear_errors() -> None:
    with pytest.raises(fl.PrivacyError, match="`target_epsilon` must be a positive finite"):
        fl.DifferentialPrivacy(clip_norm=1.0, target_epsilon=math.inf)
    with pytest.raises(fl.PrivacyError, match="`target_epsilon` must be a positive finite"):
        fl.calibrate_noise_multiplier(math.inf, 1e-5, 1.0, 10)
    for z in (math.inf, math.nan, -1.0):
        with pytest.raises(fl.PrivacyError, match="`noise_multiplier` must be a finite"):
            fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=z)
    with pytest.raises(fl.PrivacyError, match="noise_multiplier"):
        compute_epsilon(math.nan, 0.5, 10, 1e-5)


# ----------------------------------------------------------------- CSPRNG noise
@settings(max_examples=10, deadline=None)
@given(st.floats(0.01, 100.0), st.integers(1, 3000))
def test_gaussian_noise_moments_match(std: float, n: int) -> None:
    # Prepare / Execute: a large sample, then a sample of the drawn size
    noise = GaussianNoise()
    big = noise.normal(std, (200_000,), torch.float64)
    small = noise.normal(std, (n,))
    # Assert: mean 0, std `std` (within 6 sigma of the estimators), the shape and dtype asked
    assert abs(float(big.mean())) < 6 * std / math.sqrt(big.numel())
    assert float(big.std()) == pytest.approx(std, rel=0.02)
    assert small.shape == (n,) and small.dtype == torch.float32
    assert torch.isfinite(small).all()


def test_gaussian_noise_is_normal() -> None:
    # Kolmogorov-Smirnov distance to the standard normal CDF, and tail masses
    z = GaussianNoise().normal(1.0, (100_000,), torch.float64)
    x, _ = torch.sort(z)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    ecdf = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
    assert float((cdf - ecdf).abs().max()) < 1.95 / math.sqrt(x.numel()) * 1.5
    assert float((z.abs() > 3).double().mean()) == pytest.approx(0.0027, abs=0.0012)


def test_noise_is_not_torch_global_rng() -> None:
    dp = fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0)
    torch.manual_seed(0)
    first = dp.generator().normal(1.0, (64,))
    torch.manual_seed(0)
    second = dp.generator().normal(1.0, (64,))
    assert not torch.equal(first, second)  # fresh os.urandom keys, whatever torch's seed
    assert "key" not in repr(dp.generator()).replace("key hidden", "")


def test_seeded_noise_is_reproducible_and_streams_differ() -> None:
    dp = fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0, seed=5)
    a, b = dp.generator().normal(1.0, (32,)), dp.generator().normal(1.0, (32,))
    assert torch.equal(a, b)
    assert not torch.equal(a, dp.generator("client/1").normal(1.0, (32,)))
    # the state (key and position) resumes the stream exactly
    g = dp.generator()
    g.normal(1.0, (7,))
    state = g.get_state()
    nxt = g.normal(1.0, (5,))
    h = GaussianNoise()
    h.set_state(state)
    assert torch.equal(h.normal(1.0, (5,)), nxt)
    with pytest.raises(fl.PrivacyError, match="noise generator state"):
        h.set_state(torch.zeros(3))
    with pytest.raises(fl.PrivacyError, match="`std`"):
        h.normal(float("nan"), (2,))

"""Every aggregator equals the plaintext reference (exactly / within fixed point)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fl
from fl.aggregators import Stage
from fl.types import ClientUpdate


def _updates(n: int, dim: int, seed: int, scale: float = 1.0) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 100, (n,), generator=g).tolist()
    return [
        ClientUpdate(i, (torch.rand(dim, generator=g) * 2 - 1) * scale, counts[i]) for i in range(n)
    ]


def test_fedavg_equals_hand_computed_weighted_average() -> None:
    ups = [
        ClientUpdate(0, torch.tensor([1.0, 0.0]), 10),
        ClientUpdate(1, torch.tensor([0.0, 2.0]), 30),
        ClientUpdate(2, torch.tensor([4.0, -4.0]), 60),
    ]
    expected = torch.tensor([0.1 * 1 + 0.6 * 4, 0.3 * 2 - 0.6 * 4])
    assert torch.allclose(fl.weighted_mean([u.delta for u in ups], [10, 30, 60]), expected)
    assert fl.fedavg_weights(ups) == [0.1, 0.3, 0.6]
    res = fl.PlainAggregator().aggregate(ups)
    assert torch.allclose(res.mean, expected, atol=1e-6)
    assert res.survivors == (0, 1, 2) and res.upload_bytes[0] == 8


def _masking_oracle(
    ups: list[ClientUpdate], agg: fl.MaskingAggregator, survivors: list[int]
) -> torch.Tensor:
    """Plain sum of the *quantized* weighted updates of the survivors."""
    weights = agg.weights({u.client_id: u.num_examples for u in ups})
    q = agg.quantizer(len(ups))
    total = np.zeros(ups[0].delta.numel(), dtype=np.uint32)
    for u in ups:
        if u.client_id in survivors:
            total += q.quantize(u.delta, multiplier=weights[u.client_id])
    return q.dequantize(total) / sum(weights[c] for c in survivors)


@settings(max_examples=12)
@given(st.integers(1, 7), st.integers(1, 40), st.integers(0, 10_000), st.sampled_from([16, 24, 32]))
def test_masking_equals_plain_exactly_on_quantized_values(
    n: int, dim: int, seed: int, bits: int
) -> None:
    ups = _updates(n, dim, seed)
    agg = fl.MaskingAggregator(clip_range=1.0, bits=bits)
    res = agg.aggregate(ups)
    assert torch.equal(res.mean, _masking_oracle(ups, agg, list(range(n))))
    plain = fl.PlainAggregator().aggregate(ups).mean
    assert torch.allclose(res.mean, plain, atol=2 * n * agg.quantizer(n).resolution + 1e-6)
    # Upload: bits/8 bytes per parameter for the masked vector, plus the key material.
    masked = dim * bits // 8
    assert all(masked < b <= masked + 400 * n for b in res.upload_bytes.values())


@settings(max_examples=20)
@given(st.sampled_from([16, 24, 32]), st.integers(1, 50), st.integers(0, 2**32 - 1))
def test_quantizer_pack_round_trip(bits: int, dim: int, seed: int) -> None:
    q = fl.Quantizer(1.0, 4, bits)
    rng = np.random.default_rng(seed)
    ring = rng.integers(0, 2**32, size=dim, dtype=np.uint64).astype(np.uint32)
    packed = q.pack(ring)
    assert packed.nbytes == dim * bits // 8
    low = ring & np.uint32((1 << bits) - 1) if bits < 32 else ring
    assert np.array_equal(q.unpack(packed, dim), low)
    with pytest.raises(fl.QuantizationRangeError, match="packed ring vector"):
        q.unpack(packed[:-1], dim)


def test_quantizer_rejects_unsupported_width() -> None:
    with pytest.raises(fl.ConfigError, match="`bits` must be one of"):
        fl.MaskingAggregator(bits=20)


@settings(max_examples=5)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 10_000), st.sampled_from([2, 3]))
def test_secret_sharing_equals_plain_within_fixed_point(
    n: int, dim: int, seed: int, parties: int
) -> None:
    ups = _updates(n, dim, seed)
    agg = fl.SecretSharingAggregator(parties, frac_bits=16)
    res = agg.aggregate(ups)
    plain = fl.PlainAggregator().aggregate(ups).mean
    assert (res.mean - plain).abs().max() <= agg.tolerance(n)
    assert res.upload_bytes[0] == 8 * parties * dim


@pytest.mark.parametrize("stage", list(Stage))
def test_masking_survives_dropouts_at_every_stage(stage: Stage) -> None:
    ups = _updates(7, 25, seed=1)
    agg = fl.MaskingAggregator()
    dropped = [1, 4, 6]  # leaves 4 = threshold (7 // 2 + 1)
    res = agg.aggregate(ups, dropouts={stage: dropped})
    # a client that drops while unmasking already sent its input: it stays in the sum
    survivors = list(range(7)) if stage is Stage.UNMASK else [0, 2, 3, 5]
    assert list(res.survivors) == survivors
    assert torch.equal(res.mean, _masking_oracle(ups, agg, survivors))


@pytest.mark.parametrize("stage", list(Stage))
def test_masking_too_many_dropouts_is_a_clear_error(stage: Stage) -> None:
    ups = _updates(7, 10, seed=2)
    with pytest.raises(fl.InsufficientClientsError, match=stage.value) as info:
        fl.MaskingAggregator().aggregate(ups, dropouts={stage: [0, 1, 2, 3]})
    assert info.value.threshold == 4 and info.value.alive == 3


def test_dropouts_in_several_stages_and_neighbour_graph() -> None:
    ups = _updates(12, 30, seed=3)
    # The ring is random per round: with 5 of 12 clients lost, a secret may keep
    # only 2 live holders (its owner and one neighbour), so t = 2 always suffices.
    agg = fl.MaskingAggregator(neighbours=6, threshold=2)
    plan = {
        Stage.ADVERTISE_KEYS: [0],
        Stage.SHARE_KEYS: [5],
        Stage.INPUT: [7, 9],
        Stage.UNMASK: [11],
    }
    res = agg.aggregate(ups, dropouts=plan)
    survivors = [c for c in range(12) if c not in (0, 5, 7, 9)]
    assert list(res.survivors) == survivors
    assert torch.equal(res.mean, _masking_oracle(ups, agg, survivors))


@pytest.mark.parametrize(
    "make", [fl.PlainAggregator, lambda: fl.SecretSharingAggregator(2), fl.MaskingAggregator]
)
def test_plain_and_secret_sharing_drop_absent_clients(make: object) -> None:
    ups = _updates(5, 8, seed=4)
    agg = make()  # type: ignore[operator]
    res = agg.aggregate(ups, dropouts={Stage.INPUT: [2]})
    ref = fl.PlainAggregator().aggregate([u for u in ups if u.client_id != 2]).mean
    assert res.survivors == (0, 1, 3, 4)
    assert torch.allclose(res.mean, ref, atol=1e-4)


def test_out_of_range_update_is_an_error_not_a_wrong_sum() -> None:
    ups = _updates(3, 5, seed=5, scale=1.0)
    big = ClientUpdate(3, torch.full((5,), 50.0), 1000)
    with pytest.raises(fl.QuantizationRangeError, match="clip_range"):
        fl.MaskingAggregator(clip_range=1.0).aggregate([*ups, big])
    nan = ClientUpdate(3, torch.full((5,), float("nan")), 1)
    with pytest.raises(fl.AggregationError, match="client 3's update holds 5 NaN/inf"):
        fl.MaskingAggregator().aggregate([*ups, nan])


def test_aggregate_input_errors() -> None:
    with pytest.raises(fl.ConfigError):
        fl.PlainAggregator().aggregate([])
    with pytest.raises(fl.ConfigError, match="values"):
        fl.PlainAggregator().aggregate(
            [ClientUpdate(0, torch.zeros(3), 1), ClientUpdate(1, torch.zeros(4), 1)]
        )
    with pytest.raises(fl.ConfigError):
        fl.MaskingAggregator(clip_range=-1)
    with pytest.raises(fl.ConfigError):
        fl.MaskingAggregator(threshold=9).aggregate(_updates(3, 2, 0))


_ALL = {
    "plain": lambda dp: fl.PlainAggregator(dp=dp),
    "secret-sharing": lambda dp: fl.SecretSharingAggregator(2, dp=dp, seed=0),
    "masking": lambda dp: fl.MaskingAggregator(clip_range=100.0, dp=dp),
}
_DP = {"no-dp": None, "dp": fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=0.0)}


@settings(max_examples=12)
@given(
    st.sampled_from(sorted(_ALL)),
    st.sampled_from(sorted(_DP)),
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.integers(2, 5),
    st.integers(1, 20),
    st.data(),
)
def test_a_non_finite_update_is_refused_naming_the_client(
    name: str, dp: str, bad: float, n: int, dim: int, data: st.DataObject
) -> None:
    ups = _updates(n, dim, seed=1, scale=0.1)
    who = data.draw(st.integers(0, n - 1))
    where = data.draw(st.integers(0, dim - 1))
    delta = ups[who].delta.clone()
    delta[where] = bad
    ups[who] = ClientUpdate(who, delta, ups[who].num_examples)
    agg = _ALL[name](_DP[dp])
    with pytest.raises(fl.AggregationError, match=rf"round 4: client {who}'s update holds 1 NaN"):
        agg.aggregate(ups, round_index=4)
    # the client side refuses it too (networked mode runs only that side)
    session = agg.client_session(who, delta)
    if name != "masking":
        from fl.aggregators import InputRequest

        channel = None
        if name == "secret-sharing":
            import smpc

            channel = smpc.Session(parties=2, seed=0)
        with pytest.raises(fl.AggregationError, match=f"client {who}'s update holds 1 NaN"):
            session.respond(InputRequest(weight=0.5, dim=dim, channel=channel))


def test_overflowing_mean_is_an_error_not_inf() -> None:
    ups = [ClientUpdate(i, torch.full((50,), 1e38), 1) for i in range(3)]
    dp = fl.DifferentialPrivacy(clip_norm=1e38, noise_multiplier=10.0, seed=0)  # std 3.3e38
    with pytest.raises(fl.AggregationError, match="not finite"):
        fl.PlainAggregator(dp=dp).aggregate(ups)


def test_hostile_update_metadata_is_refused() -> None:
    ups = _updates(3, 4, seed=0)
    neg = [*ups[:2], ClientUpdate(2, ups[2].delta, -5)]
    for make in _ALL.values():
        with pytest.raises(fl.ConfigError, match=r"client 2's `num_examples` must be an int >= 0"):
            make(None).aggregate(neg)
    cplx = [*ups[:2], ClientUpdate(2, ups[2].delta.to(torch.complex64) * 1j, 1)]
    for make in _ALL.values():
        with pytest.raises(fl.ConfigError, match="client 2's update must be a real"):
            make(None).aggregate(cplx)
    for make in _ALL.values():
        with pytest.raises(fl.ConfigError, match="client 7 at stage input"):
            make(None).aggregate(ups, dropouts={Stage.INPUT: [7]})
    with pytest.raises(fl.ConfigError, match="stages"):
        fl.PlainAggregator().aggregate(ups, dropouts={"later": [0]})


@pytest.mark.parametrize("name", sorted(_ALL))
def test_zero_length_updates_aggregate_to_an_empty_mean(name: str) -> None:
    ups = [ClientUpdate(i, torch.zeros(0), 3) for i in range(4)]
    res = _ALL[name](None).aggregate(ups, dropouts={Stage.INPUT: [1]})
    assert res.mean.shape == (0,) and res.survivors == (0, 2, 3)

"""Clipping and ring quantization of client updates (``fl.clipping``).

Against plaintext oracles: clipped norms, hand-computed encodings, and sums of
up to ``n_clients`` quantized vectors that decode to the true sum (no
wrap-around), for every ring width.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.clipping import Quantizer, clip_by_l2_norm
from fl.errors import ConfigError, QuantizationRangeError

_floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(_floats, min_size=1, max_size=50), max_norm=st.floats(1e-3, 1e3))
def test_clipped_norm_is_at_most_the_bound_and_direction_is_kept(
    values: list[float], max_norm: float
) -> None:
    v = torch.tensor(values, dtype=torch.float32)
    out = clip_by_l2_norm(v, max_norm)
    norm = float(torch.linalg.vector_norm(v.double()))
    assert float(torch.linalg.vector_norm(out.double())) <= max_norm * (1 + 1e-6)
    if norm <= max_norm:
        assert out is v  # unchanged below the bound
    else:
        expected = v.double() * (max_norm / norm)  # the plaintext oracle
        assert torch.allclose(out.double(), expected, rtol=1e-6, atol=1e-12)


def test_clipping_matches_a_hand_computation() -> None:
    v = torch.tensor([3.0, 4.0])  # norm 5
    assert torch.allclose(clip_by_l2_norm(v, 1.0), torch.tensor([0.6, 0.8]))
    assert torch.allclose(clip_by_l2_norm(v, 2.5), torch.tensor([1.5, 2.0]))
    assert clip_by_l2_norm(v, 5.0) is v
    assert clip_by_l2_norm(torch.zeros(3), 1.0).abs().sum() == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_clipping_rejects_a_bad_bound(bad: float) -> None:
    with pytest.raises(ConfigError, match="`max_norm` must be a positive finite number"):
        clip_by_l2_norm(torch.ones(2), bad)


def test_quantize_matches_a_hand_computation() -> None:
    q = Quantizer(1.0, 1, 16)
    assert q.scale == pytest.approx(32766 * (1 - 2**-20))  # (2^15 - 1) / 1 - 1, per unit
    ring = q.quantize(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    assert ring.dtype == np.uint32
    # round(x * scale), two's complement modulo 2^16
    assert ring.tolist() == [16383, (1 << 16) - 16383, 0, 32766]
    assert q.bytes_per_element == 2


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([16, 24, 32]),
    n_clients=st.integers(1, 20),
    clip_range=st.floats(0.01, 100.0),
    dim=st.integers(1, 30),
    seed=st.integers(0, 2**31),
)
def test_sum_of_quantized_vectors_decodes_to_the_true_sum(
    bits: int, n_clients: int, clip_range: float, dim: int, seed: int
) -> None:
    q = Quantizer(clip_range, n_clients, bits)
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(n_clients, dim, generator=g, dtype=torch.float64) * 2 - 1) * clip_range
    xs[0, 0] = clip_range  # the edges of the documented range
    xs[-1, -1] = -clip_range
    total = np.zeros(dim, dtype=np.uint32)
    for x in xs:
        total += q.quantize(x.to(torch.float32))  # uint32 arithmetic wraps like the ring
    got = q.dequantize(total).double()
    # Each input is off by at most half a unit plus float32 rounding; decoding rounds to float32.
    tol = n_clients * q.resolution * (0.5 + 2**-23 * q.scale * clip_range) + 1e-6 * (
        n_clients * clip_range
    )
    assert torch.allclose(got, xs.to(torch.float32).double().sum(0), rtol=0, atol=tol)


@pytest.mark.parametrize("bits", [16, 24, 32])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_worst_case_sum_never_wraps(bits: int, sign: float) -> None:
    n = 7
    q = Quantizer(2.0, n, bits)
    one = q.quantize(torch.full((4,), sign * 2.0))
    total = np.zeros(4, dtype=np.uint32)
    for _ in range(n):
        total += one
    assert torch.allclose(q.dequantize(total), torch.full((4,), sign * 2.0 * n), rtol=1e-5)


@pytest.mark.parametrize("bad", [1.5, -1.5, math.nan, math.inf])
def test_out_of_range_coordinates_are_refused(bad: float) -> None:
    q = Quantizer(1.0, 3)
    with pytest.raises(QuantizationRangeError, match=r"every coordinate must lie in \[-1.0, 1.0\]"):
        q.quantize(torch.tensor([0.0, bad]))


def test_multiplier_is_part_of_the_range_check() -> None:
    q = Quantizer(1.0, 3)
    assert q.dequantize(q.quantize(torch.tensor([0.4]), multiplier=2.0)).item() == pytest.approx(
        0.8, abs=1e-6
    )
    with pytest.raises(QuantizationRangeError):
        q.quantize(torch.tensor([0.6]), multiplier=2.0)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([16, 24, 32]), values=st.lists(st.integers(0, 2**32 - 1), max_size=40))
def test_pack_unpack_round_trip(bits: int, values: list[int]) -> None:
    q = Quantizer(1.0, 2, bits)
    ring = np.array(values, dtype=np.uint32)
    packed = q.pack(ring)
    assert packed.nbytes == len(values) * bits // 8
    assert np.array_equal(q.unpack(packed, len(values)), ring & np.uint32((1 << bits) - 1))


def test_unpack_rejects_a_wrong_size_or_dtype() -> None:
    q = Quantizer(1.0, 2, 24)
    with pytest.raises(QuantizationRangeError, match=r"must be uint8\[12\] for 4 24-bit elements"):
        q.unpack(np.zeros(11, dtype=np.uint8), 4)
    with pytest.raises(QuantizationRangeError):
        q.unpack(np.zeros(12, dtype=np.uint16), 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_range": 1.0, "n_clients": 2, "bits": 8}, "`bits` must be one of"),
        ({"clip_range": 0.0, "n_clients": 2}, "`clip_range` must be a positive finite number"),
        ({"clip_range": math.inf, "n_clients": 2}, "`clip_range` must be a positive finite"),
        ({"clip_range": 1.0, "n_clients": 0}, r"`n_clients` must be in \[1, 2\^29\)"),
        (
            {"clip_range": 1.0, "n_clients": 1 << 13, "bits": 16},
            r"`n_clients` must be in \[1, 2\^13\)",
        ),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Quantizer(**kwargs)  # type: ignore[arg-type]

"""Fixed-point encoding: round trip, range and NaN/inf checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smpc import EncodingOverflowError, FixedPoint


@given(st.integers(0, 24), st.lists(st.floats(-1000, 1000), min_size=1, max_size=20))
def test_round_trip_within_half_ulp(frac_bits: int, values: list[float]) -> None:
    fp = FixedPoint(frac_bits)
    t = torch.tensor(values, dtype=torch.float64)
    t = t.clamp(-fp.max_value, fp.max_value)
    got = fp.decode(fp.encode(t), dtype=torch.float64)
    assert float((got - t).abs().max()) <= fp.resolution / 2 + 1e-12


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rejects_non_finite(bad: float) -> None:
    with pytest.raises(EncodingOverflowError, match="finite"):
        FixedPoint().encode(torch.tensor([1.0, bad]), name="x")


def test_rejects_out_of_range_with_limit_in_message() -> None:
    fp = FixedPoint(16)
    with pytest.raises(EncodingOverflowError, match=r"\|v\| <= 32768.*got 40000"):
        fp.encode(torch.tensor([40000.0]))
    fp.encode(torch.tensor([32768.0]))  # the limit itself is accepted


def test_integers_and_bools() -> None:
    fp = FixedPoint(8)
    assert fp.encode(torch.tensor([3, -2])).tolist() == [768, -512]
    assert fp.encode(torch.tensor([True, False])).tolist() == [256, 0]


def test_bad_frac_bits() -> None:
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(40)


_INT64 = st.integers(-(2**63), 2**63 - 1)


@given(
    st.integers(0, 30),
    st.lists(st.one_of(_INT64, st.sampled_from([-(2**63), 2**63 - 1, 0])), min_size=1),
)
def test_int64_inputs_encode_exactly_or_raise(frac_bits: int, values: list[int]) -> None:
    # Prepare: int64 values, the minimum -2^63 (whose torch abs() wraps) included
    fp = FixedPoint(frac_bits)
    t = torch.tensor(values, dtype=torch.int64)
    worst = max(abs(v) for v in values)
    # Execute / Assert: exactly v * 2^f (oracle: Python ints), or a range error
    if worst > fp.max_value:
        with pytest.raises(EncodingOverflowError, match=rf"name.*got -?{worst}|got -?{worst}"):
            fp.encode(t, name="name")
    else:
        assert fp.encode(t).tolist() == [v * fp.scale for v in values]


@given(st.integers(2**63, 2**80) | st.integers(-(2**80), -(2**63) - 1))
def test_python_ints_beyond_64_bits_raise_a_range_error(value: int) -> None:
    with pytest.raises(EncodingOverflowError, match="`x`"):
        FixedPoint().encode(value, name="x")
    with pytest.raises(EncodingOverflowError, match="`x`"):
        FixedPoint().encode([1, value], name="x")


@pytest.mark.parametrize("bad", [True, False, 16.0, "16"])
def test_frac_bits_must_be_an_int_not_a_bool(bad: object) -> None:
    with pytest.raises(TypeError, match=r"`frac_bits` must be an int.*got"):
        FixedPoint(bad)  # type: ignore[arg-type]

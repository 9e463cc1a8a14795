"""Session: argument validation and what ``share`` accepts (hostile inputs included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Subset, TensorDataset

import smpc
from tests.strategies import party_counts


@pytest.mark.parametrize("bad", [True, False, 16.0, "16"])
def test_frac_bits_must_be_an_int(bad: object) -> None:
    with pytest.raises(TypeError, match=r"`frac_bits` must be an int in \[0, 30\]"):
        smpc.Session(parties=2, frac_bits=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0, -1.0])
def test_timeout_must_be_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match=r"`timeout` must be a finite positive number"):
        smpc.Session(parties=2, timeout=bad)


@pytest.mark.parametrize("bad", [True, "60", None])
def test_timeout_must_be_a_number(bad: object) -> None:
    with pytest.raises(TypeError, match=r"`timeout` must be a finite positive number"):
        smpc.Session(parties=2, timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.5, True, [1]])
def test_seed_must_be_int_bytes_or_str(bad: object) -> None:
    with pytest.raises(TypeError, match=r"`seed` must be an int, bytes or str"):
        smpc.Session(parties=2, seed=bad)  # type: ignore[arg-type]


def test_seed_beyond_256_bits_is_named() -> None:
    with pytest.raises(ValueError, match="`seed` must fit in 256 bits"):
        smpc.Session(parties=2, seed=2**300)


@given(party_counts, st.integers(-(2**70), 2**70) | st.sampled_from([-(2**63), 2**63 - 1, 2**63]))
def test_share_of_any_int_is_exact_or_a_range_error(n: int, value: int) -> None:
    # Prepare / Execute / Assert: the int itself comes back, or a range error naming `tensor`
    with smpc.Session(parties=n) as sess:
        if abs(value) > sess.encoding.max_value:
            with pytest.raises(smpc.EncodingOverflowError, match="`tensor`"):
                sess.share(value)
            with pytest.raises(smpc.EncodingOverflowError, match="`tensor`"):
                sess.share([value])
        else:
            got = sess.share(torch.tensor([value])).reveal()
            assert got is not None
            assert got.double().tolist() == [float(value)]


def test_share_of_int64_min_is_a_range_error_not_zero() -> None:
    with smpc.Session(parties=2) as sess:
        with pytest.raises(smpc.EncodingOverflowError, match=r"`tensor`.*-9223372036854775808"):
            sess.share(torch.tensor([-(2**63)]))
        with pytest.raises(smpc.EncodingOverflowError, match="`tensor`"):
            sess.share(2**70)


def _datasets() -> list[object]:
    ds = TensorDataset(torch.zeros(3, 2), torch.zeros(3))
    return [ds, Subset(ds, [0, 1]), DataLoader(ds, batch_size=2)]


@pytest.mark.parametrize("data", _datasets(), ids=lambda d: type(d).__name__)
def test_share_refuses_torch_data_containers_with_what_it_accepts(data: object) -> None:
    with (
        smpc.Session(parties=2) as sess,
        pytest.raises(TypeError, match=r"`tensor` must be a torch.Tensor, a number.*numpy"),
    ):
        sess.share(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", ["abc", {"a": 1}, object()], ids=repr)
def test_share_refuses_non_numeric_data(data: object) -> None:
    with smpc.Session(parties=2) as sess, pytest.raises(TypeError, match="`tensor` must be"):
        sess.share(data)  # type: ignore[arg-type]


@given(party_counts, st.lists(st.floats(-1000, 1000), min_size=1, max_size=6))
def test_share_accepts_numpy_arrays_and_nested_lists(n: int, values: list[float]) -> None:
    want = torch.tensor(values, dtype=torch.float64)
    with smpc.Session(parties=n) as sess:
        for data in (np.array(values), values, [values]):
            got = sess.share(data).reveal()  # type: ignore[arg-type]
            assert got is not None
            # half an ulp of the encoding, then float32's rounding of the revealed value
            torch.testing.assert_close(got.double().reshape(-1), want, atol=2.0**-17, rtol=2.0**-23)

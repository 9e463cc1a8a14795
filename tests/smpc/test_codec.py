"""The schema-checked codec: round trips, and refusal of every malformed input."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smpc import ProtocolError, ring
from smpc.codec import TENSOR_DTYPES, Codec, check_length, decode_tensor, encode_tensor
from smpc.dealer.base import Batch
from smpc.protocols.beaver import BilinearTriple, MulTriple
from smpc.protocols.truncation import TruncPair


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: float
    tags: tuple[str, ...] = ()
    colour: Colour = Colour.RED


@dataclasses.dataclass(frozen=True)
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("`n` must be >= 0")


CODEC = Codec([Point, Colour, Checked])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
keys = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(values)
def test_values_round_trip(value: object) -> None:
    assert CODEC.decode(CODEC.encode(value)) == value


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(TENSOR_DTYPES)),
    st.lists(st.integers(0, 4), max_size=4),
    st.integers(0, 2**31),
)
def test_tensors_round_trip(code: int, shape: list[int], seed: int) -> None:
    dtype = TENSOR_DTYPES[code]
    g = torch.Generator().manual_seed(seed)
    t = (
        torch.randint(0, 2, shape, generator=g).to(dtype)
        if dtype is torch.bool
        else (torch.randint(-100, 100, shape, generator=g).to(dtype))
    )
    for got in (decode_tensor(encode_tensor(t)), CODEC.decode(CODEC.encode({"t": t}))["t"]):  # type: ignore[index]
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
        got.add_(0) if dtype is not torch.bool else None  # writable, not a read-only view


def test_numpy_arrays_and_dataclasses_round_trip() -> None:
    arr = np.arange(12, dtype=np.uint32).reshape(3, 4)
    obj = {"arr": arr, "p": Point(1, 2.5, ("a",), Colour.BLUE), "big": -(2**100)}
    got = CODEC.decode(CODEC.encode(obj))
    assert isinstance(got, dict)
    assert np.array_equal(got["arr"], arr) and got["arr"].dtype == arr.dtype
    assert got["p"] == obj["p"] and got["big"] == obj["big"]


def test_dealer_requests_round_trip() -> None:
    codec = Codec([MulTriple, BilinearTriple, TruncPair, Batch, ring.MatmulOp, ring.Conv2dOp])
    for req in (
        MulTriple((2, 3), (3,)),
        BilinearTriple(ring.Conv2dOp((2, 2), (1, 1)), (1, 2, 5, 5), (4, 2, 3, 3)),
        BilinearTriple(ring.MatmulOp(), (3, 4), (4, 5)),
        Batch(TruncPair((7,), 16), 64),
    ):
        assert codec.decode(codec.encode(req)) == req


def test_unknown_types_are_refused_both_ways() -> None:
    @dataclasses.dataclass
    class Other:
        x: int

    with pytest.raises(TypeError, match="not an allowed type"):
        CODEC.encode(Other(1))
    with pytest.raises(TypeError, match="cannot travel"):
        CODEC.encode(object())
    # a peer that names a class outside the allow-list gets nothing built
    forged = Codec([Other]).encode(Other(1))
    with pytest.raises(ProtocolError, match="not allowed"):
        CODEC.decode(forged, peer="mallory")


def test_field_types_are_checked() -> None:
    # Prepare: a Point whose x is a str (a sender that bypasses the annotations)
    bad = CODEC.encode(Point(1, 2.0)).replace(
        b"i" + struct.pack("<q", 1), b"s" + struct.pack("<I", 1) + b"z" + b"\0" * 3
    )
    with pytest.raises(ProtocolError, match="Point.x must be int"):
        CODEC.decode(bad, peer="mallory")
    # the class's own validation refuses, as a ProtocolError
    neg = CODEC.encode(Checked(1)).replace(struct.pack("<q", 1), struct.pack("<q", -1))
    with pytest.raises(ProtocolError, match="invalid .*Checked"):
        CODEC.decode(neg)


def test_pickle_is_not_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (marker.touch, ())  # type: ignore[return-value]

    payload = pickle.dumps(Evil())
    with pytest.raises(ProtocolError, match="mallory"):
        CODEC.decode(payload, peer="mallory")
    with pytest.raises(ProtocolError, match="mallory"):
        CODEC.decode_message(payload, seq=0, kinds=("x",), peer="mallory")
    assert not marker.exists()


def test_lengths_are_checked_before_allocating() -> None:
    # a tensor frame whose byte count claims 2**40 bytes, with 8 bytes present
    frame = struct.pack("<BBQQ", 1, 1, 2**40, 2**40) + b"\0" * 8
    with pytest.raises(ProtocolError, match="limit"):
        decode_tensor(frame, peer="mallory", max_bytes=1 << 20)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_tensor(frame, peer="mallory", max_bytes=1 << 50)
    # byte count inconsistent with the shape
    with pytest.raises(ProtocolError, match="does not match shape"):
        decode_tensor(struct.pack("<BBQQ", 5, 1, 3, 16) + b"\0" * 16)
    # a list claiming 2**32 - 1 items in a few bytes
    with pytest.raises(ProtocolError, match="more than the bytes left"):
        CODEC.decode(b"l" + struct.pack("<I", 2**32 - 1))
    with pytest.raises(ProtocolError, match="limit"):
        Codec(max_bytes=16).decode(b"b" + struct.pack("<I", 100) + b"x" * 100)
    with pytest.raises(ProtocolError, match="announced"):
        check_length(2**40, 1 << 30, peer="mallory", what="a frame")


@settings(max_examples=80, deadline=None)
@given(values, st.data())
def test_truncated_or_corrupted_bytes_never_crash(value: object, data: st.DataObject) -> None:
    raw = CODEC.encode({"v": value, "t": torch.arange(3)})
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        CODEC.decode(raw[:cut])
    # any byte flipped: a clean ProtocolError or some allowed value, never another exception
    i = data.draw(st.integers(0, len(raw) - 1))
    flipped = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    with contextlib.suppress(ProtocolError):
        CODEC.decode(flipped)


def test_envelope_refuses_replays_and_unexpected_kinds() -> None:
    msg = CODEC.encode_message(3, "fit", {"round": 1})
    assert CODEC.decode_message(msg, seq=3, kinds=("fit",)) == ("fit", {"round": 1})
    with pytest.raises(ProtocolError, match="replayed"):
        CODEC.decode_message(msg, seq=4, kinds=("fit",), peer="client 2")
    with pytest.raises(ProtocolError, match="out of order"):
        CODEC.decode_message(msg, seq=2, kinds=("fit",), peer="client 2")
    with pytest.raises(ProtocolError, match="unexpected message 'fit'"):
        CODEC.decode_message(msg, seq=3, kinds=("stop",), peer="client 2")
    with pytest.raises(ProtocolError, match="envelope"):
        CODEC.decode_message(b"GARBAGE-GARBAGE-GARBAGE", seq=0, kinds=("fit",))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="`types`"):
        Codec([int])
    with pytest.raises(ValueError, match="`max_bytes`"):
        Codec(max_bytes=0)
    with pytest.raises(ValueError, match="limit"):
        Codec(max_bytes=8).encode(b"x" * 100)

"""Masks a dealer keeps for later requests (``smpc.dealer.base.KeptMasks``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smpc.dealer import base
from smpc.dealer.base import KeptMasks
from smpc.errors import DealerError
from smpc.protocols.beaver import KeepingMatmulTruncTriple, LinearBackwardTriple, OperandMask


def _forward(key: int) -> KeepingMatmulTruncTriple:
    return KeepingMatmulTruncTriple((2, 3), (3, 4), 16, key)


def _backward(key: int) -> LinearBackwardTriple:
    return LinearBackwardTriple((2, 4), (2, 3), 16, key, True, True, False)


def _plain(v: int) -> dict[str, torch.Tensor]:
    return {"a": torch.full((2, 3), v), "b": torch.full((3, 4), v + 1)}


def test_a_backward_uses_and_releases_its_forward_masks() -> None:
    kept = KeptMasks()
    kept.keep(_forward(-2), _plain(5))
    kept.keep(OperandMask((3, 4), 1), {"b": torch.ones(3, 4)})  # long-lived
    got = kept.values(_backward(-2))
    assert torch.equal(got["xa"], torch.full((2, 3), 5))
    assert torch.equal(got["wb"], torch.full((3, 4), 6))
    kept.release(_backward(-2))
    assert len(kept) == 1  # only the operand mask is left
    with pytest.raises(DealerError, match="no kept mask with key -2"):
        kept.values(_backward(-2))


def test_forward_masks_without_a_backward_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "TRANSIENT_LIMIT", 6)  # masks: three forward passes
    kept = KeptMasks()
    kept.keep(OperandMask((3, 4), 1), {"b": torch.ones(3, 4)})
    for i in range(10):  # ten forward passes whose graphs were dropped unused
        kept.keep(_forward(-2 * (i + 1)), _plain(i))
    assert len(kept) == 6 + 1  # the six newest transient masks, and the long-lived one
    assert torch.equal(kept.values(_backward(-20))["xa"], torch.full((2, 3), 9))
    with pytest.raises(DealerError, match="after 6 newer ones"):
        kept.values(_backward(-2))


def test_rollback_undoes_keeps_releases_and_evictions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "TRANSIENT_LIMIT", 4)  # masks: two forward passes
    kept = KeptMasks()
    kept.keep(_forward(-2), _plain(1))
    kept.begin()
    kept.keep(_forward(-4), _plain(2))  # 4 masks: nothing evicted
    kept.release(_backward(-2))
    kept.keep(_forward(-2), _plain(3))  # the same keys again, new values
    kept.keep(_forward(-6), _plain(4))  # 6 masks: the oldest pair (-4) evicted
    assert len(kept) == 4
    with pytest.raises(DealerError):
        kept.values(_backward(-4))
    kept.rollback()
    assert len(kept) == 2
    assert torch.equal(kept.values(_backward(-2))["xa"], torch.full((2, 3), 1))
    with pytest.raises(DealerError):
        kept.values(_backward(-4))
    kept.begin()
    kept.release(_backward(-2))
    kept.commit()
    assert len(kept) == 0


# ----------------------------------------------------------------- typed opt-ins
def test_each_request_class_declares_its_opt_ins() -> None:
    from smpc import ring
    from smpc.protocols import beaver, compare, convert, truncation

    want = {  # class: (fused, keeps, uses, elementwise)
        beaver.MulTriple: (False, False, False, True),
        beaver.SquarePair: (False, False, False, True),
        beaver.BilinearTriple: (False, False, False, False),
        beaver.MulTruncTriple: (True, False, False, True),
        beaver.BilinearTruncTriple: (True, False, False, False),
        beaver.OperandMask: (False, True, False, False),
        beaver.KeptBilinearTruncTriple: (True, False, True, False),
        beaver.KeepingMatmulTruncTriple: (True, True, False, False),
        beaver.LinearBackwardTriple: (True, False, True, False),
        truncation.TruncPair: (True, False, False, True),
        base.Batch: (True, False, False, False),
    }
    for cls, flags in want.items():
        got = tuple(
            issubclass(cls, p)
            for p in (base.FusedCorrection, base.KeepsMasks, base.UsesMasks, base.Elementwise)
        )
        assert got == flags, cls.__name__
    for cls in (*want, *beaver.REQUEST_TYPES, *truncation.REQUEST_TYPES):
        assert issubclass(cls, base.Request)
    for cls in (compare.LtzMaterial, convert.BitPair):
        assert issubclass(cls, base.Request)
    # comparison material (elementwise) is pooled; a product's triple of many elements is not
    assert base.poolable(compare.LtzMaterial((4,))) and base.poolable(
        compare.LtzMaterial((4,), True)
    )
    assert not base.poolable(compare.LtzMaterial((100,)))
    assert not issubclass(ring.MatmulOp, base.Request)  # carried by requests, not one itself


def test_a_request_without_opt_ins_gets_the_defaults() -> None:
    from dataclasses import dataclass

    from smpc.dealer.base import Component, Kind, fused_correction, kept_keys, poolable, used_keys

    @dataclass(frozen=True)
    class Plain:
        shape: tuple[int, ...]

        def components(self) -> tuple[Component, ...]:
            return (Component("a", Kind.RANDOM, self.shape),)

        def derive(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {}

    req = Plain((3,))
    assert kept_keys(req) == () and used_keys(req) == () and not poolable(req)
    assert not fused_correction(req, {}, {}, {}, {})
    kept = KeptMasks()
    kept.keep(req, {})
    kept.release(req)
    assert len(kept) == 0 and kept.values(req) == {}
    with pytest.raises(DealerError, match="must be an elementwise request; got a Plain"):
        base.Batch(req, 4).components()


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=0, max_size=3),
    broadcast=st.booleans(),
)
def test_small_elementwise_requests_are_pooled(shape: list[int], broadcast: bool) -> None:
    from smpc import ring
    from smpc.protocols.beaver import BilinearTriple, MulTriple, OperandMask

    a = tuple(shape)
    b = a[1:] if broadcast and a else a
    numel = max(1, int(torch.tensor(a).prod()) if a else 1)
    same_rank = len(a) == len(b)
    assert base.poolable(MulTriple(a, b)) == (same_rank and numel <= base.POOLED_NUMEL)
    if len(a) == 2:
        assert not base.poolable(BilinearTriple(ring.MatmulOp(), a, a[::-1]))  # not elementwise
    assert not base.poolable(OperandMask(a, 1))  # keeps its mask

"""Masks a dealer keeps for later requests (``smpc.dealer.base.KeptMasks``)."""

from __future__ import annotations

import pytest
import torch

from smpc.dealer import base
from smpc.dealer.base import (
    KeepingMatmulTruncTriple,
    KeptMasks,
    LinearBackwardTriple,
    OperandMask,
)
from smpc.errors import DealerError


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

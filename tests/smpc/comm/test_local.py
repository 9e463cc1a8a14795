"""The in-process communicator (smpc/comm/local.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smpc.comm.local import LocalCommunicator
from smpc.errors import SessionClosedError


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=g, dtype=torch.int64)


@given(st.integers(2, 5), st.sampled_from([1, 7, 4096, 5000]), st.integers(0, 2**31))
def test_open_masked_equals_open_of_differences(n: int, size: int, seed: int) -> None:
    """Fused (large) or not (small), a masked opening reconstructs ``x - m`` and is
    counted exactly as the opening of the differences."""
    pairs = [(_rand((n, size), seed), _rand((n, size), seed + 1)), (_rand((n, 3), seed + 2),) * 2]
    a, b = LocalCommunicator(n), LocalCommunicator(n)
    got = a.open_masked(pairs, "mul")
    want = b.open([x - m for x, m in pairs], "mul")
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert a.stats == b.stats and a.stats.rounds == 1


def test_open_masked_after_close_raises() -> None:
    comm = LocalCommunicator(2)
    comm.close()
    with pytest.raises(SessionClosedError):
        comm.open_masked([(torch.zeros(2, 1, dtype=torch.int64),) * 2], "mul")

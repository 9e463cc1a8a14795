"""Fixtures for the autograd / nn tests."""

from __future__ import annotations

import pytest

from tests.smpc.autograd import fake_nonlinear


@pytest.fixture
def nonlinear(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Real nonlinear kernels where they exist, reveal-and-reshare fakes where not."""
    return fake_nonlinear.install(monkeypatch)

"""Shared fixtures and hypothesis profiles ("ci": derandomised, few examples; "dev")."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=[2, 3], ids=lambda n: f"n{n}")
def world_size(request: pytest.FixtureRequest) -> int:
    """Number of parties."""
    return int(request.param)

"""Helpers of the benchmarks that a wrong figure would hide in."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    ("df", "exact"),
    # Student's t, one-sided 95 % (printed tables, e.g. Abramowitz and Stegun table 26.10)
    [(4, 2.131847), (5, 2.015048), (9, 1.833113), (19, 1.729133), (29, 1.699127), (49, 1.676551)],
)
def test_t_quantile_of_the_non_inferiority_bound(df: int, exact: float) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("bench_fedamp")
    finally:
        sys.path.remove(str(BENCH))
    assert bench.t_quantile_95(df) == pytest.approx(exact, abs=2e-3)

"""Shared helpers of the benchmarks: timing and a measure of CPU steal by the hypervisor."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies from /proc/stat (0, 0 where unavailable)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0, 0
    vals = [int(v) for v in fields]
    steal = vals[7] if len(vals) > 7 else 0
    return steal, sum(vals[:8])


class StealMeter:
    """Fraction of CPU time stolen by the hypervisor while the block ran."""

    def __enter__(self) -> StealMeter:
        self._start = cpu_times()
        self.fraction = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        s1, t1 = cpu_times()
        ds, dt = s1 - self._start[0], t1 - self._start[1]
        self.fraction = ds / dt if dt > 0 else 0.0


def timings(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(median, best) wall seconds of ``fn`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)

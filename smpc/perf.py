"""Process-level speed settings, applied only when a program asks (session layer helpers).

Settings for processes this package starts itself (the party and provider
processes of :func:`smpc.run` and of ``smpc-launch``), never applied at
import: :func:`keep_freed_memory`, :func:`batch_scheduling` (parties) and
:func:`idle_scheduling` (the provider of :func:`smpc.run`).

Every large torch tensor on CPU is a fresh ``mmap`` by default (glibc hands
blocks above a threshold back to the kernel when freed), so each new
multi-megabyte share is first touched page by page: on this project's 2-core
VM that page-faulting was about half the time of a 1M-element product. Keeping
freed memory in the heap removes it. This changes the allocator of the whole
process, so nothing here runs at import: benchmarks, the demos and the party
processes of :func:`smpc.run` call :func:`keep_freed_memory` explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

__all__ = [
    "keep_freed_memory",
    "batch_scheduling",
    "idle_scheduling",
    "ContentionMonitor",
    "adaptive_policy",
    "ThreadPolicy",
    "thread_policy",
    "current_thread_policy",
]

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(max_block_bytes: int = 1 << 31) -> bool:
    """Ask glibc to serve blocks up to ``max_block_bytes`` from the heap and keep freed memory.

    Returns:
        True if the setting was applied (glibc on Linux), False otherwise (no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    cap = min(max_block_bytes, (1 << 31) - 1)
    ok = mallopt(_M_MMAP_THRESHOLD, cap) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    ok &= mallopt(_M_TOP_PAD, 1 << 26) == 1
    return bool(ok)


def batch_scheduling() -> bool:
    """Run this thread, and the threads it starts afterwards, under ``SCHED_BATCH`` (Linux).

    Every message of a protocol round wakes a thread of the peer process (gloo's
    network thread, then the thread waiting for the message). Under the default
    policy the woken thread preempts the one that woke it when they share a
    core, so a party is switched out in the middle of each send and switched
    back later. ``SCHED_BATCH`` keeps CFS fairness but skips that wake-up
    preemption. Where the party and provider processes share cores (2 parties +
    provider on a 2-core machine) this halves the latency of a round (440 ->
    220 µs) and cuts a training step by 15-25 %; with a core per process it
    changes little. It needs no privilege and affects only this process.

    Returns:
        True if the policy was applied, False where the platform lacks it.
    """
    return _set_policy("SCHED_BATCH")


def idle_scheduling() -> bool:
    """Run this thread, and the threads it starts afterwards, under ``SCHED_IDLE`` (Linux).

    For the crypto provider when it shares cores with the parties (all of
    :func:`smpc.run`'s processes are on one machine): it then computes only on a
    core no party wants, and any party that wakes up takes the core back at
    once (idle-policy tasks are preempted on every wake-up). The provider's
    work (computing the next correction ahead, see
    :class:`~smpc.dealer.trusted.TrustedDealer`) moves into the moments when a
    party waits for the other; when a party waits for the provider, a core is
    free for it. On this project's 2-core VM a W4 MSE step went from 52-59 to
    47-54 ms (interleaved runs). The policy is not a hard starvation: an idle
    task still gets a small share of a busy CPU, so a machine loaded by other
    work slows the provider down but cannot stop it. No privilege needed; this
    process only (it cannot be undone without privilege).

    Returns:
        True if the policy was applied, False where the platform lacks it.
    """
    return _set_policy("SCHED_IDLE")


def _set_policy(name: str) -> bool:
    """Set the scheduling policy ``os.<name>`` on the calling thread, if the platform has it."""
    policy = getattr(os, name, None)
    setter = getattr(os, "sched_setscheduler", None)
    if policy is None or setter is None:
        return False
    try:
        setter(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True


# ----------------------------------------------------------------- intra-op threads
def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, CPU ticks of this process), or None off Linux."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        with open("/proc/self/stat", "rb") as f:
            own = f.read()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu" or len(fields) < 5:
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user..steal; guest time is already in user
    # /proc/self/stat: "pid (comm) state ..." -- comm may hold spaces; fields after ")".
    rest = own[own.rindex(b")") + 2 :].split()
    mine = int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    return busy, mine


class ContentionMonitor:
    """How many cores other processes keep busy, sampled from ``/proc`` (Linux).

    Every ``interval`` seconds (at most), :meth:`others_busy` reads the machine's
    busy CPU time (``/proc/stat``) and this process's own (``/proc/self/stat``)
    and returns the cores the *other* processes used over the last window: 0
    on an idle machine, about 1 beside one busy process. Reading both files
    costs some tens of microseconds; between samples the last figure is
    returned at the cost of a clock read. Off Linux it always returns 0.

    Args:
        interval: seconds between samples (the kernel counts in 10 ms ticks, so
            windows much shorter than 0.1 s are noisy).
    """

    __slots__ = ("interval", "_tick", "_last", "_when", "_busy")

    def __init__(self, interval: float = 0.1) -> None:
        if not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"`interval` must be a positive number of seconds; got {interval!r}")
        self.interval = float(interval)
        self._tick = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
        self._last = _cpu_ticks()
        self._when = time.monotonic()
        self._busy = 0.0

    def others_busy(self) -> float:
        """Cores busy with other processes' work over the last window (>= 0)."""
        now = time.monotonic()
        if now - self._when < self.interval or self._last is None:
            return self._busy
        sample = _cpu_ticks()
        if sample is not None:
            busy = (sample[0] - self._last[0]) - (sample[1] - self._last[1])
            self._busy = max(0.0, busy * self._tick / (now - self._when))
        self._last, self._when = sample, now
        return self._busy


@dataclass(frozen=True, slots=True)
class ThreadPolicy:
    """How many torch intra-op threads an op uses, by its size (and, if adaptive, the load).

    Attributes:
        min_elements: ops whose largest shared operand holds fewer elements (per
            party) run on ``small_threads`` threads; larger ops on ``threads``.
        small_threads: threads for small ops (1: no fork-join barrier to wait on).
        threads: threads for large ops.
        monitor: for the ``"adaptive"`` policy: every op runs on ``threads``
            threads less one per core that other processes keep busy (at
            least one); ``None`` for the fixed policies.
        cores: the cores this process may run on (for the adaptive policy).
    """

    min_elements: int
    small_threads: int
    threads: int
    monitor: ContentionMonitor | None = None
    cores: int = 1

    def threads_for(self, numel: int) -> int:
        """The thread count for an op on ``numel`` elements."""
        if self.monitor is not None:
            return self.threads_now()
        return self.small_threads if numel < self.min_elements else self.threads

    def threads_now(self) -> int:
        """Adaptive policy: ``threads``, less the cores other processes keep busy."""
        if self.monitor is None:
            return self.threads
        others = self.monitor.others_busy()
        free = self.cores - math.floor(others + 0.5)  # a core counts from half busy
        return max(1, min(self.threads, free))


def adaptive_policy(threads: int | None = None, interval: float = 0.1) -> ThreadPolicy:
    """The ``"adaptive"`` :class:`ThreadPolicy`: all threads when idle, fewer beside busy work.

    Args:
        threads: the most threads an op uses (default ``torch.get_num_threads()``).
        interval: seconds between samples of the machine's load.
    """
    big = torch.get_num_threads() if threads is None else threads
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return ThreadPolicy(1, big, big, monitor=ContentionMonitor(interval), cores=cores)


_POLICY: ContextVar[ThreadPolicy | None] = ContextVar("smpc_thread_policy", default=None)


def current_thread_policy() -> ThreadPolicy | None:
    """The :class:`ThreadPolicy` in force here (``None``: torch's setting for every op)."""
    return _POLICY.get()


@contextmanager
def thread_policy(
    policy: str = "by-size", *, min_elements: int = 1 << 18, threads: int | None = None
) -> Iterator[ThreadPolicy | None]:
    """Choose the intra-op thread count of the shared ops run inside the block.

    A product on a small tensor does microseconds of work per thread, and each
    parallel region ends on a barrier: when another process keeps a core busy,
    the thread that lost its core holds every other one at that barrier until
    the scheduler gives it back (milliseconds), so a step of many small ops
    slows down many times over, while one thread per small op keeps going.
    Large ops still gain from several threads.

    Args:
        policy: ``"adaptive"``: every op on ``threads`` threads, less one per
            core that other processes keep busy (sampled from ``/proc`` every
            0.1 s; the count stays until the next op, so the bookkeeping
            between ops follows it too) -- what a :class:`~smpc.session.Session`
            uses by default; ``"by-size"``: ops on fewer than ``min_elements``
            elements run on one thread, larger ones on ``threads``; ``"single"``:
            every op on one thread; ``"default"``: no change (torch's thread
            count for every op).
        min_elements: the size from which an op uses ``threads`` threads.
        threads: threads for large ops (default: ``torch.get_num_threads()`` on entry).

    With ``"by-size"`` and ``"single"`` torch runs on one thread (``small_threads``)
    inside the block: everything
    that is not a large shared op (the provider's material for small ops,
    autograd and optimizer bookkeeping, sharing) too; a shared op on at least
    ``min_elements`` elements raises the count to ``threads`` for its duration.
    The thread count before the block is restored after it. The thread count
    is process-wide (``torch.set_num_threads``): use the policy from one thread.

    Yields:
        The policy in force (``None`` for ``"default"``).

    Raises:
        ValueError: an unknown ``policy`` or a non-positive count.
    """
    if policy not in ("adaptive", "by-size", "single", "default"):
        raise ValueError(
            f"`policy` must be 'adaptive', 'by-size', 'single' or 'default'; got {policy!r}"
        )
    if isinstance(min_elements, bool) or not isinstance(min_elements, int) or min_elements < 1:
        raise ValueError(f"`min_elements` must be a positive int; got {min_elements!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"`threads` must be a positive int or None; got {threads!r}")
    big = torch.get_num_threads() if threads is None else threads
    chosen = {
        "adaptive": adaptive_policy(big) if policy == "adaptive" else None,
        "by-size": ThreadPolicy(min_elements, 1, big),
        "single": ThreadPolicy(1, 1, 1),
        "default": None,
    }[policy]
    token = _POLICY.set(chosen)
    prev = torch.get_num_threads()
    if chosen is not None:
        torch.set_num_threads(chosen.small_threads)  # all work outside large ops
    try:
        yield chosen
    finally:
        if chosen is not None:
            torch.set_num_threads(prev)
        _POLICY.reset(token)

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
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

__all__ = [
    "keep_freed_memory",
    "batch_scheduling",
    "idle_scheduling",
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
@dataclass(frozen=True, slots=True)
class ThreadPolicy:
    """How many torch intra-op threads an op uses, by its size.

    Attributes:
        min_elements: ops whose largest shared operand holds fewer elements (per
            party) run on ``small_threads`` threads; larger ops on ``threads``.
        small_threads: threads for small ops (1: no fork-join barrier to wait on).
        threads: threads for large ops.
    """

    min_elements: int
    small_threads: int
    threads: int

    def threads_for(self, numel: int) -> int:
        """The thread count for an op on ``numel`` elements."""
        return self.small_threads if numel < self.min_elements else self.threads


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
        policy: ``"by-size"``: ops on fewer than ``min_elements`` elements run on
            one thread, larger ones on ``threads``; ``"single"``: every op on one
            thread; ``"default"``: no change (torch's thread count for every op).
        min_elements: the size from which an op uses ``threads`` threads.
        threads: threads for large ops (default: ``torch.get_num_threads()`` on entry).

    Inside the block torch runs on one thread (``small_threads``): everything
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
    if policy not in ("by-size", "single", "default"):
        raise ValueError(f"`policy` must be 'by-size', 'single' or 'default'; got {policy!r}")
    if isinstance(min_elements, bool) or not isinstance(min_elements, int) or min_elements < 1:
        raise ValueError(f"`min_elements` must be a positive int; got {min_elements!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"`threads` must be a positive int or None; got {threads!r}")
    big = torch.get_num_threads() if threads is None else threads
    chosen = {
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

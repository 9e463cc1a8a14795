"""Process-level speed settings (smpc/perf.py)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

import smpc
from smpc import perf
from tests.smpc.comm.dist_programs import scheduling_policy

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux settings")


@linux
def test_batch_scheduling_applies_to_the_calling_thread_only() -> None:
    """The policy is set on the thread that asks (and on threads it starts later)."""
    seen: dict[str, int] = {}

    def worker() -> None:
        seen["ok"] = int(perf.batch_scheduling())
        seen["self"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(0)))
        child.start()
        child.join()

    before = os.sched_getscheduler(0)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"ok": 1, "self": os.SCHED_BATCH, "child": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == before  # this (main) thread is untouched


@linux
def test_run_processes_use_batch_scheduling() -> None:
    """smpc.run's party processes run under SCHED_BATCH; the caller's process does not change."""
    before = os.sched_getscheduler(0)
    assert smpc.run(scheduling_policy, parties=2) == [os.SCHED_BATCH] * 2
    assert os.sched_getscheduler(0) == before


@linux
def test_idle_scheduling_applies_to_the_calling_thread_and_its_children() -> None:
    """The provider's policy: set on the asking thread and inherited by threads it starts."""
    seen: dict[str, int] = {}

    def worker() -> None:
        seen["ok"] = int(perf.idle_scheduling())
        seen["self"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(0)))
        child.start()
        child.join()

    before = os.sched_getscheduler(0)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"ok": 1, "self": os.SCHED_IDLE, "child": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == before


@linux
@pytest.mark.parametrize("provider, policy", [(True, "SCHED_IDLE"), (False, "SCHED_BATCH")])
def test_run_gives_the_provider_idle_and_the_parties_batch_scheduling(
    provider: bool, policy: str
) -> None:
    """What smpc.run's workers apply before starting any thread."""
    from smpc.launch import role_scheduling

    seen: dict[str, int] = {}

    def worker() -> None:
        seen["ok"] = int(role_scheduling(provider=provider))
        seen["self"] = os.sched_getscheduler(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"ok": 1, "self": getattr(os, policy)}

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
@pytest.mark.parametrize(
    "setter, policy", [("batch_scheduling", "SCHED_BATCH"), ("idle_scheduling", "SCHED_IDLE")]
)
def test_scheduling_applies_to_the_calling_thread_and_its_children(
    setter: str, policy: str
) -> None:
    """The policy is set on the thread that asks (and on threads it starts later), not on others."""
    seen: dict[str, int] = {}

    def worker() -> None:
        seen["ok"] = int(getattr(perf, setter)())
        seen["self"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(0)))
        child.start()
        child.join()

    before = os.sched_getscheduler(0)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    want = getattr(os, policy)
    assert seen == {"ok": 1, "self": want, "child": want}
    assert os.sched_getscheduler(0) == before  # this (main) thread is untouched


@linux
def test_run_processes_use_batch_scheduling() -> None:
    """smpc.run's party processes run under SCHED_BATCH; the caller's process does not change."""
    before = os.sched_getscheduler(0)
    assert smpc.run(scheduling_policy, parties=2) == [os.SCHED_BATCH] * 2
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

"""Process-level speed settings (smpc/perf.py)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import perf
from smpc.perf import current_thread_policy, thread_policy
from smpc.tensor import tag_results
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


# ----------------------------------------------------------------- thread policy
def _probe_namespace() -> dict[str, Any]:
    """A module-like namespace with one op that records the threads it ran on."""
    seen: list[int] = []

    def probe(x: smpc.SharedTensor) -> smpc.SharedTensor:
        seen.append(torch.get_num_threads())
        return x.session.from_shares(x.share.clone())

    ns: dict[str, Any] = {"probe": probe, "seen": seen}
    tag_results(ns, ["probe"])
    return ns


def test_thread_policy_by_size_runs_small_ops_on_one_thread() -> None:
    ns = _probe_namespace()
    outer = torch.get_num_threads()
    with smpc.Session(parties=2, threads="torch") as sess:
        small, big = sess.share(torch.zeros(99)), sess.share(torch.zeros(100))
        with thread_policy("by-size", min_elements=100, threads=3) as pol:
            assert pol is not None and current_thread_policy() is pol
            ns["probe"](small)
            ns["probe"](big)
            assert torch.get_num_threads() == 1  # one thread between large ops
        assert torch.get_num_threads() == outer  # restored after the block
        with thread_policy("single"):
            ns["probe"](big)
        with thread_policy("default") as none:
            assert none is None
            ns["probe"](big)
        ns["probe"](small)  # no policy: torch's setting
    assert ns["seen"] == [1, 3, 1, outer, outer]
    assert current_thread_policy() is None


@given(st.integers(1, 300), st.sampled_from(["adaptive", "by-size", "single", "default"]))
@settings(max_examples=10, deadline=None)
def test_thread_policy_keeps_results(n: int, policy: str) -> None:
    x = torch.linspace(-2, 2, n)
    with smpc.Session(parties=2, seed=3) as a, smpc.Session(parties=2, seed=3) as b:
        with thread_policy(policy, min_elements=64):
            got = (a.share(x) * a.share(x)).relu().reveal()
        want = (b.share(x) * b.share(x)).relu().reveal()
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "fast"}, "'adaptive', 'by-size', 'single' or 'default'; got 'fast'"),
        ({"min_elements": 0}, "`min_elements` must be a positive int"),
        ({"threads": 0}, "`threads` must be a positive int"),
    ],
)
def test_thread_policy_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match), thread_policy(**kwargs):
        pass


class _FixedLoad(perf.ContentionMonitor):
    """A monitor that reports a fixed number of busy cores."""

    def __init__(self, busy: float) -> None:
        super().__init__()
        self.busy = busy

    def others_busy(self) -> float:
        return self.busy


@given(
    busy=st.floats(0, 16, allow_nan=False),
    cores=st.integers(1, 16),
    threads=st.integers(1, 16),
)
@settings(max_examples=50, deadline=None)
def test_adaptive_policy_gives_one_thread_less_per_busy_core(
    busy: float, cores: int, threads: int
) -> None:
    pol = perf.ThreadPolicy(1, threads, threads, monitor=_FixedLoad(busy), cores=cores)
    got = pol.threads_now()
    assert got == max(1, min(threads, cores - int(busy + 0.5)))
    assert pol.threads_for(10**9) == got and pol.threads_for(1) == got


@linux
def test_contention_monitor_sees_a_busy_process() -> None:
    mon = perf.ContentionMonitor(interval=0.05)
    assert mon.others_busy() >= 0.0
    import subprocess
    import time

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        mon.others_busy()  # opens a window with the spinner running
        time.sleep(0.3)
        seen = mon.others_busy()
    finally:
        spin.kill()
        spin.wait()
    # The spinner alone keeps one core busy (other work on the machine adds to it).
    assert seen >= 0.5


def test_session_adapts_threads_to_load_and_restores_them() -> None:
    ns = _probe_namespace()
    outer = torch.get_num_threads()
    with smpc.Session(parties=2) as sess:
        pol = sess.thread_policy
        assert pol is not None and pol.monitor is not None
        x = sess.share(torch.zeros(10))
        object.__setattr__(pol, "monitor", _FixedLoad(float(pol.cores)))  # every core busy
        ns["probe"](x)
        assert torch.get_num_threads() == 1  # stays between ops
        object.__setattr__(pol, "monitor", _FixedLoad(0.0))  # idle again
        ns["probe"](x)
        assert torch.get_num_threads() == min(outer, pol.cores)
        object.__setattr__(pol, "monitor", _FixedLoad(float(pol.cores)))
        ns["probe"](x)
    assert torch.get_num_threads() == outer  # restored when the session closes
    assert ns["seen"] == [1, min(outer, pol.cores), 1]
    with smpc.Session(parties=2, threads="torch") as plain:
        assert plain.thread_policy is None


@pytest.mark.parametrize("bad", ["fast", 2, None])
def test_session_bad_threads(bad: Any) -> None:
    with pytest.raises(ValueError, match="`threads` must be 'adaptive' or 'torch'"):
        smpc.Session(parties=2, threads=bad)

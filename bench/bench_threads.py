"""Threads under contention: W4 MSE step and W1 product, idle and beside a busy process.

For each intra-op thread policy (``torch``: torch's thread count for every op,
what sessions did before; ``adaptive``, a session's default: one thread less per
core that other processes keep busy; ``by-size`` (:func:`smpc.perf.thread_policy`):
ops under 2^18 elements on one thread), it times a W4 MSE training step (MLP
784-128-64-10, batch 64, 2 simulated parties) and W1 (a 10^6-element shared product), first with the
machine as it is, then with one competing busy process (a Python spin loop),
and prints the slowdown. Plain torch is timed in the same run. On a machine
shared with other work the "idle" figures are not idle: say so when quoting.

    python bench/bench_threads.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import smpc
import smpc.perf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timings  # noqa: E402
from bench_training import _plain_step_ms, w4_program  # noqa: E402


def _w1_seconds(repeat: int, threads: str) -> float:
    with smpc.Session(parties=2, threads=threads) as sess:
        x, y = sess.share(torch.rand(10**6)), sess.share(torch.rand(10**6))
        return timings(lambda: x * y, repeat)[0]


def _measure(policy: str, steps: int) -> tuple[float, float]:
    session_policy = policy if policy in ("torch", "adaptive") else "torch"
    block = "default" if policy in ("torch", "adaptive") else policy
    with smpc.perf.thread_policy(block):
        with smpc.Session(parties=2, threads=session_policy) as sess:
            w4_ms = w4_program("mse", steps, sess)["ms"]
        w1 = _w1_seconds(max(3, steps // 2), session_policy)
    return w4_ms, w1


def main() -> None:
    """Parse arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    smpc.perf.keep_freed_memory()
    rows = {}
    for load in ("as is", "1 busy process"):
        busy = None
        if load != "as is":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            plain = statistics.median(_plain_step_ms("mse", args.steps) for _ in range(3))
            for policy in ("torch", "adaptive", "by-size"):
                rows[(load, policy)] = (*_measure(policy, args.steps), plain)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(f"torch threads {args.threads}; the machine may be shared with other work")
    print("slowdown: against the same policy as is; vs torch: against the torch policy as is")
    head = ["W4 slowdown", "W1 slowdown", "W4 vs torch", "W1 vs torch"]
    print(f"{'load':15} {'policy':8} {'W4 ms':>8} {'x plain':>8} {'W1 s':>8} "
          + " ".join(f"{h:>11}" for h in head))  # fmt: skip
    t4, t1, _ = rows[("as is", "torch")]
    for (load, policy), (w4_ms, w1, plain) in rows.items():
        i4, i1, _ = rows[("as is", policy)]
        print(
            f"{load:15} {policy:8} {w4_ms:8.1f} {w4_ms / plain:8.0f} {w1:8.3f} "
            f"{w4_ms / i4:11.2f} {w1 / i1:11.2f} {w4_ms / t4:11.2f} {w1 / t1:11.2f}"
        )


if __name__ == "__main__":
    main()

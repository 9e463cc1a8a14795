"""Memory benchmark: peak RSS of a product and a ReLU on 10^6, 10^7, 10^8 elements.

Each (op, size, chunking) runs in a fresh subprocess (2 simulated parties). The
child builds its inputs' ring shares chunk by chunk (so building the input does
not set the peak), notes its resident set size, runs the op once, and reports;
the parent reads the child's peak RSS from ``getrusage(RUSAGE_CHILDREN)``. It
prints seconds, the peak, the extra memory of the op (peak minus the memory
held before it) per element and as a multiple of the op's output (2 parties ×
8 bytes per element), rounds and bytes, and the ratio to plain float32 torch
timed in the same child. ``--compare`` adds runs with chunking switched off (a
chunk as large as the input) for the sizes that fit.

    python bench/bench_memory.py [--sizes 1e6 1e7 1e8] [--ops mul relu] [--compare]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

import smpc

_CHILD = "--child"
_MEASURE = "--measure"


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _shares(sess: smpc.Session, n: int, seed: int) -> tuple[smpc.SharedTensor, torch.Tensor]:
    """A shared uniform input in [-1, 1) of ``n`` elements, built in chunks, and its plaintext."""
    g = torch.Generator().manual_seed(seed)
    plain = torch.empty(n)
    shares = torch.empty((sess.world_size, n), dtype=torch.int64)
    step = 1 << 22
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        chunk = torch.rand(hi - lo, generator=g) * 2 - 1
        plain[lo:hi] = chunk
        enc = sess.encoding.encode(chunk)
        mask = torch.randint(-(2**63), 2**63 - 1, (hi - lo,), generator=g, dtype=torch.int64)
        shares[0, lo:hi] = enc - mask  # two additive shares of enc (benchmark inputs only)
        shares[1, lo:hi] = mask
    return sess.from_shares(shares), plain


def child(op: str, n: int, chunk: int | None) -> None:
    """Run one op in this (fresh) process and print a JSON line."""
    torch.set_num_threads(1)
    with smpc.Session(parties=2, seed=0, chunk_size=chunk) as sess:
        x, px = _shares(sess, n, 1)
        y, py = _shares(sess, n, 2) if op == "mul" else (None, None)
        before_kib = _rss_kib()
        before = sess.stats.snapshot()
        t0 = time.perf_counter()
        z = x * y if y is not None else x.relu()
        secs = time.perf_counter() - t0
        d = sess.stats - before
        del z
        t0 = time.perf_counter()
        _ = px * py if py is not None else px.relu()
        plain_secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "before_kib": before_kib,
                "secs": secs,
                "plain_secs": plain_secs,
                "rounds": d.rounds,
                "bytes": d.bytes,
            }
        )
    )


def measure(op: str, n: int, chunk: int | None) -> None:
    """Run ``child`` in a fresh subprocess; print its JSON line with its peak RSS added.

    A process of its own per measurement, so ``RUSAGE_CHILDREN`` holds that child alone.
    """
    cmd = [sys.executable, __file__, _CHILD, op, str(n), str(chunk or 0)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["peak_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(res))


def run_one(op: str, n: int, chunk: int | None) -> dict[str, float]:
    """Measure one (op, size, chunking) in a fresh pair of processes."""
    cmd = [sys.executable, __file__, _MEASURE, op, str(n), str(chunk or 0)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    """Parse arguments and print one line per (op, size, chunking)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["1e6", "1e7", "1e8"])
    parser.add_argument("--ops", nargs="+", default=["mul", "relu"], choices=["mul", "relu"])
    parser.add_argument("--compare", action="store_true", help="also run unchunked (<= 1e7)")
    args = parser.parse_args()
    print("2 simulated parties; the machine may be shared (peak RSS is not affected, time is)")
    print(f"{'op':5} {'n':>6} {'chunks':>8} {'s':>8} {'x torch':>8} {'peak GB':>8} "
          f"{'extra B/el':>10} {'x output':>8} {'rounds':>6} {'bytes':>12}")  # fmt: skip
    runs = [(int(float(s)), None) for s in args.sizes]
    if args.compare:
        runs += [(n, n) for n, _ in runs if n <= 10**7]
    for op in args.ops:
        for n, chunk in runs:
            r = run_one(op, n, chunk)
            extra = (r["peak_kib"] - r["before_kib"]) * 1024
            print(
                f"{op:5} {n:6.0e} {'off' if chunk else 'on':>8} {r['secs']:8.2f} "
                f"{r['secs'] / max(r['plain_secs'], 1e-9):8.0f} {r['peak_kib'] / 2**20:8.2f} "
                f"{extra / n:10.1f} {extra / (16 * n):8.2f} {int(r['rounds']):6d} "
                f"{int(r['bytes']):12d}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in (_CHILD, _MEASURE):
        run = child if sys.argv[1] == _CHILD else measure
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) or None)
    else:
        main()

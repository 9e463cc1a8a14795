"""Core benchmark: W1 elementwise product, W2 matmul, one-element product (docs/performance.md).

Prints median (and best) seconds, rounds, bytes per party, the provider's bytes
and the ratio to plain float32 torch measured in the same run, in simulation and
(unless --no-distributed) with 2 party processes + the provider (over Unix
sockets, or with --transport tcp over gloo on loopback TCP as across
machines). It also prints the share of CPU time the hypervisor stole during
each measurement: on a shared VM that share inflates every figure, the
plain-torch baseline included.

    python bench/bench_core.py [--repeat 15] [--no-distributed] [--transport tcp]
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import smpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StealMeter, timings  # noqa: E402

WORKLOADS: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = {
    "W1 mul 1e6": ((1_000_000,), (1_000_000,), "mul"),
    "W2 matmul 64x784 @ 784x128": ((64, 784), (784, 128), "matmul"),
    "mul 1 element": ((1,), (1,), "mul"),
}


def _op(kind: str) -> Callable[[Any, Any], Any]:
    return (lambda a, b: a * b) if kind == "mul" else (lambda a, b: a @ b)


def _reps(kind: str, shape: tuple[int, ...], repeat: int) -> int:
    return repeat * 20 if kind == "mul" and shape[0] == 1 else repeat


def _row(name: str, med: float, best: float, plain: float, extra: str, steal: float) -> str:
    return (
        f"{name:28s} median {med * 1e3:8.3f} ms  best {best * 1e3:8.3f} ms  {extra}  "
        f"plain {plain * 1e6:8.1f} us  ratio {med / plain:7.0f}x  steal {steal:4.0%}"
    )


def run_simulation(repeat: int) -> dict[str, float]:
    """Time each workload with both parties simulated in this process; return the medians."""
    print("== simulation (2 parties + provider, one process) ==")
    medians: dict[str, float] = {}
    for name, (sx, sy, kind) in WORKLOADS.items():
        op = _op(kind)
        xp, yp = torch.randn(sx), torch.randn(sy)
        with smpc.Session(parties=2) as sess, StealMeter() as steal:
            plain, _ = timings(lambda: op(xp, yp), repeat)
            x, y = sess.share(xp), sess.share(yp)
            med, best = timings(lambda: op(x, y), _reps(kind, sx, repeat))
            before = sess.stats.snapshot()
            op(x, y)
            d = sess.stats - before
        extra = (
            f"rounds {d.rounds}  bytes/party {d.bytes_per_party[0]:,}  "
            f"provider {d.dealer_bytes:,} B"
        )
        print(_row(name, med, best, plain, extra, steal.fraction))
        medians[name] = med
    return medians


def _dist_program(sess: smpc.Session, repeat: int) -> dict[str, tuple[float, float, int, int]]:
    out = {}
    for name, (sx, sy, kind) in WORKLOADS.items():
        op = _op(kind)
        g = torch.Generator().manual_seed(0)
        xp, yp = torch.randn(sx, generator=g), torch.randn(sy, generator=g)
        x = sess.share(xp if sess.rank == 0 else None, src=0)
        y = sess.share(yp if sess.rank == 1 else None, src=1)
        sess.comm.barrier()
        med, best = timings(lambda: op(x, y), _reps(kind, sx, repeat))
        before = sess.stats.snapshot()
        op(x, y)
        d = sess.stats - before
        out[name] = (med, best, d.rounds, d.bytes)
    return out


def run_distributed(
    repeat: int, sim: dict[str, float] | None = None, transport: str = "auto"
) -> None:
    """Time each workload with 2 party processes + the provider (Unix sockets or gloo TCP)."""
    how = "gloo over loopback TCP" if transport == "tcp" else "Unix sockets"
    print(f"== distributed (2 party processes + provider process, {how}) ==")
    with StealMeter() as steal:
        try:
            results = smpc.run(
                functools.partial(_dist_program, repeat=repeat), parties=2, transport=transport
            )
        except Exception as err:  # report, do not hide: the figures are simply missing
            print(f"distributed run failed: {type(err).__name__}: {err}")
            return
    for name, (sx, sy, kind) in WORKLOADS.items():
        op = _op(kind)
        xp, yp = torch.randn(sx), torch.randn(sy)
        plain, _ = timings(lambda: op(xp, yp), repeat)
        # The slower party's time is the program's time.
        med = max(r[name][0] for r in results)
        best = max(r[name][1] for r in results)
        _, _, rounds, nbytes = results[0][name]
        extra = f"rounds {rounds}  bytes/party {nbytes:,}"
        if sim and name in sim:
            extra += f"  dist/sim {med / sim[name]:.2f}"
        print(_row(name, med, best, plain, extra, steal.fraction))


def main() -> None:
    """Entry point."""
    smpc.perf.keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-distributed", action="store_true")
    parser.add_argument(
        "--transport",
        choices=("auto", "unix", "tcp"),
        default="auto",
        help="distributed runs: Unix sockets (auto, on one host) or gloo over loopback TCP",
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    sim = run_simulation(args.repeat)
    if not args.no_distributed:
        run_distributed(args.repeat, sim, args.transport)


if __name__ == "__main__":
    main()

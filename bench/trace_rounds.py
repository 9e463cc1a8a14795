"""The online rounds of one W4 training step, in order: op label, bytes, calling protocol.

A diagnostic beside ``bench_training.py`` (docs/performance.md, W4): it wraps
``Stats.record`` in this process to log every communication round with the
protocol function that caused it, runs two SGD steps of the MLP 784-128-64-10
(batch 64, model and data shared) and prints the second step's rounds. Run::

    python bench/trace_rounds.py            # MSE
    python bench/trace_rounds.py --loss ce  # cross-entropy
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

import smpc
import smpc.nn as snn
import smpc.optim
from smpc.comm.stats import Stats
from smpc.demo import build_model


def _caller() -> str:
    """The innermost protocol-layer function on the stack (else the innermost smpc one)."""
    frames = [f for f in traceback.extract_stack()[:-3] if "/smpc/" in f.filename]
    frames = [f for f in frames if "/comm/" not in f.filename]
    proto = [f for f in frames if "/protocols/" in f.filename]
    f = (proto or frames or [None])[-1]
    return "?" if f is None else f"{f.filename.split('/smpc/')[-1]}:{f.name}"


def trace_step(loss: str) -> tuple[list[tuple[str, int, str]], Stats]:
    """``(label, bytes, caller)`` per round of the second step, and its stats."""
    log: list[tuple[str, int, str]] = []
    record: Callable[..., None] = Stats.record

    def logged(self: Stats, label: str, sent: Any, *, rounds: int = 1) -> None:
        total = sum(sent.values()) if isinstance(sent, dict) else sum(sent)
        log.extend([(label, total, _caller())] * rounds)
        record(self, label, sent, rounds=rounds)

    torch.manual_seed(0)
    x = torch.rand(64, 784)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 10, (64,)), 10).float()
    Stats.record = logged  # type: ignore[method-assign]  # this process only, undone below
    try:
        with smpc.Session(("alice", "bob")) as sess:
            enc = snn.encrypt(build_model("mlp", 0)[1:], sess, src=0)
            xs, ys = sess.share(x, src=1), sess.share(onehot, src=1)
            opt = smpc.optim.SGD(enc.parameters(), lr=0.05, momentum=0.9)
            loss_fn: snn.Module = snn.CrossEntropyLoss() if loss == "ce" else snn.MSELoss()
            for _ in range(2):
                log.clear()
                before = sess.stats.snapshot()
                opt.zero_grad()
                loss_fn(enc(xs), ys).backward()
                opt.step()
                used = sess.stats - before
    finally:
        Stats.record = record  # type: ignore[method-assign]
    return log, used


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loss", choices=("mse", "ce"), default="mse")
    args = p.parse_args(argv)
    log, used = trace_step(args.loss)
    print("round  label    bytes (all parties)  protocol")
    for i, (label, nbytes, caller) in enumerate(log, 1):
        print(f"{i:5d}  {label:8s} {nbytes:>19,d}  {caller}")
    print(
        f"W4 {args.loss}: {used.rounds} rounds, {max(used.bytes_per_party):,d} bytes per party, "
        f"{used.dealer_bytes:,d} provider bytes per step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The classic tutorial flow: alice, bob (and bill) share numbers with a crypto provider.

Run: python examples/share_tensors.py            (simulation, then real processes)
     python examples/share_tensors.py --no-distributed
"""

from __future__ import annotations

import argparse

import torch

import smpc


def tutorial(sess: smpc.Session) -> dict[str, torch.Tensor]:
    """The same program for simulation and for one process per party."""
    x = sess.share(torch.tensor([25.0]), src="alice")
    y = sess.share(torch.tensor([5.0]), src="bob")
    a = sess.share(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), src="alice")
    b = sess.share(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), src="bob")
    out = {
        "x + y": (x + y).reveal(),
        "x - y": (x - y).reveal(),
        "x * y": (x * y).reveal(),
        "a @ b": (a @ b).reveal(),
        "x * 3 + 1": (x * 3 + 1).reveal(),
    }
    return {k: v for k, v in out.items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    """Run the tutorial in simulation, then over torch.distributed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parties", default="alice,bob,bill", help="comma-separated names")
    parser.add_argument("--no-distributed", action="store_true", help="skip the multi-process run")
    args = parser.parse_args(argv)
    parties = tuple(args.parties.split(","))

    with smpc.Session(parties=parties) as sess:
        x = sess.share(torch.tensor([25.0]), src="alice")
        print("a shared tensor shows no value:", x)
        print("its shares look random:", [s.tolist() for s in x.shares])
        for name, value in tutorial(sess).items():
            print(f"[simulation] {name} = {value.tolist()}")
        print(f"[simulation] rounds={sess.stats.rounds} bytes={sess.stats.bytes}")

    if not args.no_distributed:
        try:
            results = smpc.run(tutorial, parties=parties)
        except (ImportError, NotImplementedError) as err:
            print("distributed runtime unavailable:", err)
            return
        for name, value in results[0].items():
            print(f"[{len(parties)} processes] {name} = {value.tolist()}")


if __name__ == "__main__":
    main()

"""Encrypted inference: a model owner's network on a data owner's images.

Walkthrough: docs/tutorial_inference.md.

* ``alice`` (model owner) trains a network in plaintext on her own data, then
  secret-shares its weights;
* ``bob`` (data owner) secret-shares his images, batch by batch;
* the parties (with a crypto provider) run the network and an argmax on
  shares; only the predicted classes are revealed, and only to ``bob``.

The script checks that the encrypted predictions give the plaintext model's
accuracy on the same images, and prints time, rounds and bytes per image::

    python examples/encrypted_inference.py                  # MLP and LeNet-5, batch 100
    python examples/encrypted_inference.py --model cnn --batch-size 1 --test-size 50
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

import smpc
import smpc.nn as snn
from smpc.data import load_mnist
from smpc.demo import build_model, encrypted_predict, lenet


def train_plain(kind: str, epochs: int, train_size: int, seed: int = 0) -> torch.nn.Module:
    """The model owner's plaintext training (SGD, momentum 0.9, cross-entropy)."""
    x, y = load_mnist("train")
    if train_size < len(x):
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))[:train_size]
        x, y = x[keep], y[keep]
    torch.manual_seed(seed)
    model = build_model("mlp", seed) if kind == "mlp" else lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def run(kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Encrypted inference of one trained model; returns the figures."""
    model = train_plain(kind, args.epochs, args.train_size)
    xt, yt = load_mnist("test")
    if args.test_size < len(xt):  # a fixed random subset: the file is sorted by label
        keep = torch.randperm(len(xt), generator=torch.Generator().manual_seed(4321))[
            : args.test_size
        ]
        xt, yt = xt[keep], yt[keep]
    if kind == "mlp":
        model = model[1:]  # the data owner sends flattened images
        xt = xt.reshape(len(xt), -1)
    with torch.no_grad():
        plain_pred = model(xt).argmax(1)
    names = ("alice", "bob", "carol")[: args.parties]
    with smpc.Session(parties=names) as sess:
        enc = snn.encrypt(model, sess, src="alice")
        before = sess.stats.snapshot()
        t0 = time.perf_counter()
        pred = encrypted_predict(
            sess, enc, xt, n=len(xt), batch_size=args.batch_size, data_owner="bob"
        )
        seconds = time.perf_counter() - t0
        used = sess.stats - before
    assert pred is not None
    n = len(xt)
    acc = float((pred == yt).float().mean())
    plain_acc = float((plain_pred == yt).float().mean())
    agree = float((pred == plain_pred).float().mean())
    out = {
        "accuracy": acc,
        "plain_accuracy": plain_acc,
        "agreement": agree,
        "ms_per_image": 1e3 * seconds / n,
        "rounds_per_batch": used.rounds / -(-n // args.batch_size),
        "bytes_per_image": max(used.bytes_per_party) / n,
    }
    print(
        f"{kind.upper():4s} {n} images, batch {args.batch_size}: "
        f"encrypted accuracy {100 * acc:.2f} % "
        f"(plaintext {100 * plain_acc:.2f} %, same prediction on {100 * agree:.1f} %); "
        f"{out['ms_per_image']:.2f} ms/image, {out['rounds_per_batch']:.0f} rounds/batch, "
        f"{out['bytes_per_image'] / 1e3:.1f} kB/image per party"
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    smpc.perf.keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn", "both"), default="both")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument(
        "--train-size", type=int, default=4000, help="model owner's plaintext training set"
    )
    p.add_argument("--epochs", type=int, default=5, help="model owner's plaintext training epochs")
    p.add_argument("--parties", type=int, choices=(2, 3), default=2)
    args = p.parse_args(argv)
    for kind in ("mlp", "cnn") if args.model == "both" else (args.model,):
        run(kind, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

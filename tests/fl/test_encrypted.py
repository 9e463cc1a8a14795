"""fl.encrypted_inference / fl.encrypted_training against plaintext torch."""

from __future__ import annotations

import pytest
import torch

import fl
import smpc


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_inference_matches_plaintext_predictions() -> None:
    model = _net(0).eval()
    x = torch.randn(37, 6)
    with smpc.Session(parties=("model", "data")) as sess:
        pred = fl.encrypted_inference(model, x, sess, batch_size=16)
    assert pred is not None
    with torch.no_grad():
        want = model(x).argmax(1)
    assert (pred == want).float().mean() >= 0.97  # ties within 2^-16 may flip


def test_training_tracks_plaintext_sgd() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    plain = _net(2)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    for i in range(0, 64, 16):
        idx = order[i : i + 16]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(plain(x[idx]), y[idx]).backward()
        opt.step()
    with smpc.Session(parties=3) as sess:
        trained, report = fl.encrypted_training(
            _net(2), x, y, sess, epochs=1, batch_size=16, lr=0.1, num_classes=3, log_every=2
        )
    assert report.steps == 4 and len(report.losses) == 2 and report.rounds > 0
    for a, b in zip(trained.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a, b, atol=2e-3)


def test_bad_arguments_are_clear_errors() -> None:
    with smpc.Session(parties=2) as sess:
        with pytest.raises(fl.ConfigError, match="loss"):
            fl.encrypted_training(_net(0), torch.randn(4, 6), torch.zeros(4), sess, loss="hinge")
        with pytest.raises(fl.ConfigError, match="same length"):
            fl.encrypted_training(_net(0), torch.randn(4, 6), torch.zeros(3).long(), sess)
        with pytest.raises(fl.ConfigError, match="batch_size"):
            fl.encrypted_inference(_net(0), torch.randn(4, 6), sess, batch_size=0)

"""The MNIST demo's recipe helpers: augmentation and learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from smpc.demo import Config, augment, lr_at, parse_args


def test_augment_shifts_whole_images_within_bounds_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 10:18, 10:18] = torch.rand(50, 1, 8, 8, generator=g) + 0.5  # content away from borders
    out = augment(x, 2, epoch=3, seed=1)
    assert out.shape == x.shape
    assert torch.equal(out, augment(x, 2, epoch=3, seed=1))  # same epoch and seed: same images
    assert not torch.equal(out, augment(x, 2, epoch=4, seed=1))  # a new draw each epoch
    for i in range(len(x)):  # each image is x[i] moved by some (dy, dx) in [-2, 2]^2
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                if torch.equal(out[i], torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))):
                    found = True
        assert found
    assert torch.equal(augment(x, 0, epoch=0, seed=0), x)


def test_lr_schedules() -> None:
    cfg = Config(lr=0.1, schedule="linear")
    assert lr_at(cfg, 0, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 50, 100) == pytest.approx(0.05)
    assert lr_at(cfg, 99, 100) == pytest.approx(0.001)
    assert lr_at(Config(lr=0.1, schedule="constant"), 99, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_at(Config(schedule="cosine"), 0, 10)


def test_cli_flags_for_the_recipe() -> None:
    cfg = parse_args(["--schedule", "constant", "--augment", "0", "--lr", "0.2"])
    assert (cfg.schedule, cfg.augment, cfg.lr) == ("constant", 0, 0.2)
    default = parse_args([])
    assert (default.schedule, default.augment, default.lr) == ("linear", 1, 0.05)
    assert default.normalize and not parse_args(["--no-normalize"]).normalize
    assert parse_args(["--model", "cnn"]).lr == 0.1 and parse_args(["--loss", "mse"]).lr == 0.5


def test_input_stats_standardise_with_the_training_set() -> None:
    from smpc.demo import input_stats

    x = torch.rand(50, 1, 28, 28) * 0.8
    mean, std = input_stats(Config(), x)
    assert abs(mean - float(x.mean())) < 1e-6 and abs(std - float(x.std())) < 1e-6
    assert input_stats(Config(normalize=False), x) == (0.0, 1.0)

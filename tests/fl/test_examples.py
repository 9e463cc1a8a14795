"""Smoke-run the fl examples at tiny size."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_fedavg_mnist_example_default_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default configuration, shortened only by rounds (the whole recipe otherwise)."""
    monkeypatch.chdir(tmp_path)
    main = runpy.run_path(str(EXAMPLES / "fedavg_mnist.py"))["main"]
    # one intra-op thread: batches of 32 gain nothing from more, and on a busy 2-core
    # machine spinning threads multiplied this test's wall time by ten (not the recipe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        histories = main(["--rounds", "5"])
    finally:
        torch.set_num_threads(threads)
    assert len(histories) == 8 and (tmp_path / "fedavg_mnist.png").exists()
    for label, h in histories.items():
        assert len(h) == 5 and not h.failed_rounds, label
        assert all(map(math.isfinite, [*h.accuracy, *h.loss])), label
    for split in ("iid", "non-iid"):
        plain = histories[f"{split}/plain"].accuracy[-1]
        assert plain > 0.7
        for secure in ("masking", "secret-sharing"):
            assert abs(histories[f"{split}/{secure}"].accuracy[-1] - plain) < 0.02
    # DP trails, but learns (chance is 0.1); the exact figure depends on the noise drawn
    assert histories["iid/masking+dp"].accuracy[-1] > 0.6
    assert histories["non-iid/masking+dp"].accuracy[-1] > 0.2
    assert 0 < histories["iid/masking+dp"].epsilon[-1] < math.inf


def test_secure_aggregation_boston_example() -> None:
    main = runpy.run_path(str(EXAMPLES / "secure_aggregation_boston.py"))["main"]
    results = main(["--rounds", "2"])
    assert abs(results["secret sharing"] - results["plain"]) < 1e-3
    assert results["max_weight_difference"] < 1e-3


def test_vertical_mnist_example() -> None:
    main = runpy.run_path(str(EXAMPLES / "vertical_mnist.py"))["main"]
    results = main(["--epochs", "1", "--subsample", "20", "--batch-size", "50"])
    assert results["steps"] == 4  # 200 images, batch 50
    assert 0.0 < results["centralised"] <= 1.0
    # 4 steps from the same start: the secret-shared run tracks the plaintext one closely
    # (50 test images: one image is 2 points).
    assert abs(results["difference"]) <= 0.04 + 1e-9

"""Smoke-run the fl examples at tiny size."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_fedavg_mnist_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main = runpy.run_path(str(EXAMPLES / "fedavg_mnist.py"))["main"]
    histories = main(["--rounds", "2", "--subsample", "8", "--out", str(tmp_path / "p.png")])
    assert len(histories) == 8 and (tmp_path / "p.png").exists()
    plain, masking = histories["iid/plain"].accuracy, histories["iid/masking"].accuracy
    assert abs(plain[-1] - masking[-1]) < 0.02


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

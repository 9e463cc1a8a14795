"""Smoke-run every example script at a tiny size (they must work end to end)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert exit_.value.code in (0, None)


def test_mnist_training_mlp_ce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    png = tmp_path / "plot.png"
    _run(
        "encrypted_mnist_training.py",
        [
            "--epochs",
            "2",
            "--train-size",
            "64",
            "--test-size",
            "40",
            "--batch-size",
            "32",
            "--log-every",
            "1",
            "--plot",
            str(png),
        ],
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert "test accuracy: encrypted" in out and "rounds" in out and "ms encrypted" in out
    assert png.stat().st_size > 1000


def test_mnist_training_cnn_mse_3_parties(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    _run(
        "encrypted_mnist_training.py",
        [
            "--model",
            "cnn",
            "--loss",
            "mse",
            "--parties",
            "3",
            "--epochs",
            "1",
            "--train-size",
            "8",
            "--test-size",
            "10",
            "--batch-size",
            "8",
            "--no-progress",
            "--plot",
            "",
        ],
        monkeypatch,
    )
    assert "test accuracy" in capsys.readouterr().out


def test_console_script_entry_point() -> None:
    from smpc.demo import main, parse_args

    cfg = parse_args(["--loss", "mse"])
    assert cfg.loss == "mse" and cfg.lr == 0.5 and callable(main)
    with pytest.raises(SystemExit):
        parse_args(["--epochs", "0"])


def test_encrypted_inference(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    _run(
        "encrypted_inference.py",
        [
            "--model",
            "both",
            "--test-size",
            "6",
            "--batch-size",
            "3",
            "--epochs",
            "1",
            "--train-size",
            "300",
        ],
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert "MLP" in out and "CNN" in out and "same prediction on 100.0 %" in out


@pytest.mark.distributed
def test_mnist_training_distributed(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    pytest.importorskip("smpc.launch")
    _run(
        "encrypted_mnist_training.py",
        [
            "--distributed",
            "--epochs",
            "1",
            "--train-size",
            "32",
            "--test-size",
            "20",
            "--batch-size",
            "32",
            "--no-progress",
            "--plot",
            "",
        ],
        monkeypatch,
    )
    assert "distributed" in capsys.readouterr().out

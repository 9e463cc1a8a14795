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


# ----------------------------------------------------------------- the smpc-mnist CLI
def test_help_documents_every_option_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    from smpc.demo import build_parser

    parser = build_parser()
    # Execute
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    out = capsys.readouterr().out
    # Assert: every option has a help text that states its default
    assert exit_info.value.code == 0
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, action.option_strings
        assert action.option_strings[0] in out


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_parties_accepts_any_count_of_at_least_two(n: int) -> None:
    from smpc.demo import party_names

    assert parse_args(["--parties", str(n)]).parties == n
    names = party_names(n)
    assert len(set(names)) == n and names[:2] == ("alice", "bob")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--lr", "abc"),
        ("--parties", "1"),
        ("--parties", "two"),
        ("--epochs", "0"),
        ("--momentum", "1.5"),
        ("--weight-decay", "nan"),
        ("--augment", "-1"),
        ("--log-every", "-2"),
    ],
)
def test_bad_values_are_usage_errors(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "usage: smpc-mnist" in err and f"argument {flag}" in err


def test_progress_bars_only_on_a_terminal_or_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from smpc.demo import _show_progress

    assert parse_args([]).progress is None
    assert parse_args(["--progress"]).progress is True
    assert parse_args(["--no-progress"]).progress is False

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not _show_progress(Config()) and _show_progress(Config(progress=True))
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert _show_progress(Config()) and not _show_progress(Config(progress=False))


def _tiny_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    return x, y, x[:4], y[:4]


@pytest.mark.parametrize("progress", [None, True])
def test_training_logs_stay_clean_off_a_terminal(
    progress: bool | None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 4 parties (the demo takes any n >= 2), one step, stderr captured (no tty)
    import smpc
    from smpc.demo import party_names, train_encrypted

    cfg = Config(
        epochs=1, train_size=8, test_size=4, batch_size=8, parties=4, progress=progress, plot=None
    )
    # Execute
    with smpc.Session(parties=party_names(cfg.parties)) as sess:
        hist = train_encrypted(sess, cfg, _tiny_data())
    err = capsys.readouterr().err
    # Assert: a progress bar only when asked for
    assert hist.steps == 1
    assert ("epoch 1/1" in err) is bool(progress)

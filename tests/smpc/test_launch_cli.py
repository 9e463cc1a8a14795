"""The ``smpc-launch`` command line: bad arguments and environment are usage errors.

Every case runs :func:`smpc.launch.main` in this process and expects what argparse
does for a bad flag: a ``usage:`` line, a message naming the argument, exit code 2
(never a traceback). The launcher's runtime is tested in ``test_distributed.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import smpc.perf
from smpc import launch


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "prog.py"
    path.write_text("def main(sess):\n    return sess.rank\n")
    return str(path)


@pytest.fixture(autouse=True)
def _no_scheduling_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this test process's scheduling policy (a launched role sets SCHED_BATCH)."""
    monkeypatch.setattr(smpc.perf, "batch_scheduling", lambda: False)
    for var in ("RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        launch.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("usage: smpc-launch"), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("parties", "why"),
    [
        ("alice", "at least 2"),
        ("alice,alice", "distinct"),
        ("0", "at least 2"),
        ("1", "at least 2"),
        ("alice,,bob", "empty"),
        ("alice,dealer", "dealer"),
    ],
)
def test_bad_parties(
    parties: str, why: str, script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["--parties", parties, "--role", "alice", script], capsys)
    assert "argument --parties" in err and why in err


@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({"RANK": "abc"}, [], "RANK"),
        ({"RANK": "7"}, [], "rank must be in [0, 2]"),
        ({"RANK": "0", "WORLD_SIZE": "abc"}, [], "WORLD_SIZE"),
        ({"RANK": "0", "MASTER_PORT": "notaport"}, [], "MASTER_PORT"),
        ({"RANK": "0", "MASTER_PORT": "70000"}, [], "MASTER_PORT"),
        ({}, ["--role", "carol"], "--role"),
        ({}, [], "give --role or set RANK"),
        ({}, ["--role", "alice", "--master-port", "notaport"], "argument --master-port"),
        ({}, ["--role", "alice", "--timeout", "nan"], "argument --timeout"),
        ({}, ["--role", "alice", "--timeout", "-1"], "argument --timeout"),
        ({}, ["--role", "alice", "--frac-bits", "40"], "argument --frac-bits"),
        ({}, ["--role", "alice", "--truncation", "exact"], "argument --truncation"),
    ],
)
def test_bad_role_environment_and_options(
    env: dict[str, str],
    argv: list[str],
    named: str,
    script: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    err = _usage_error(["--parties", "alice,bob", *argv, script], capsys)
    assert named in err


@pytest.mark.parametrize("local", [False, True])
def test_missing_script(local: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.py")
    argv = ["--parties", "2", *(["--local"] if local else ["--role", "party0"]), missing]
    err = _usage_error(argv, capsys)
    assert "nope.py" in err and "not found" in err


def test_a_party_without_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error(["--parties", "2", "--role", "party0"], capsys)
    assert "needs a script" in err


_NAME = st.sampled_from(["alice", "bob", "carol", "dealer", "", " dan "])


@given(st.lists(_NAME, max_size=5) | st.integers(0, 6).map(lambda n: [str(n)]))
def test_parties_parse_like_the_engine_or_a_usage_error(items: list[str]) -> None:
    # Oracle: launch._names (what smpc.run accepts), on the stripped names or the count
    text = ",".join(items)
    stripped = [i.strip() for i in items]
    try:
        if len(items) == 1 and items[0].isdigit():
            want: tuple[str, ...] | None = launch._names(int(items[0]))
        else:
            want = None if not all(stripped) else launch._names(stripped)
    except (TypeError, ValueError):
        want = None
    try:
        got: tuple[str, ...] | None = launch._parse(["--parties", text]).parties
    except SystemExit as exc:
        assert exc.code == 2
        got = None
    assert got == want

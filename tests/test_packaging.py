"""Packaging: what the extras hold, and what the setup script installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def _names(requirements: object) -> set[str]:
    assert isinstance(requirements, list)
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_opacus_is_a_test_dependency_and_mlxtend_only_a_demo_one() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert "opacus" in _names(extras["test"])  # the accountant's cross-check runs in CI
    assert "mlxtend" not in _names(project["dependencies"])
    assert "mlxtend" in _names(extras["demo"])


def test_setup_script_installs_the_extras_the_readme_commands_need() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', setup)
    assert extras is not None
    assert {"test", "demo"} <= set(extras.group(1).split(","))

"""Run the python snippets of docs/comparison.md and docs/approximations.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["docs/comparison.md", "docs/approximations.md"]


def _snippets(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_snippets_run(page: str) -> None:
    blocks = _snippets(page)
    assert blocks, f"{page} has no python snippet"
    for block in blocks:
        exec(compile(block, f"{page}:snippet", "exec"), {"__name__": "__doc_snippet__"})

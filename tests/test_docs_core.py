"""Run the python snippets of the core docs (README, concepts) so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/concepts.md", "docs/several_machines.md"]


def _snippets(page: str) -> list[str]:
    text = (ROOT / page).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_snippets_run(page: str) -> None:
    blocks = _snippets(page)
    assert blocks, f"{page} has no python snippet"
    for block in blocks:
        if "smpc.run(" in block and "def program" in block:
            continue  # multi-process snippets are exercised by tests/smpc/test_distributed.py
        exec(compile(block, f"{page}:snippet", "exec"), {"__name__": "__doc_snippet__"})

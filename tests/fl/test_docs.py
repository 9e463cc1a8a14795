"""Run every ```python block of docs/fl*.md (the docs are tested code)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[2] / "docs").glob("fl*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
CASES = [(doc, i, code) for doc in DOCS for i, code in enumerate(BLOCK.findall(doc.read_text()))]


def test_docs_exist() -> None:
    names = {d.name for d in DOCS}
    assert {"fl.md", "fl_secure_aggregation.md", "fl_vertical.md"} <= names
    assert len(CASES) >= 5


@pytest.mark.parametrize(
    ("doc", "index", "code"), CASES, ids=[f"{d.name}-{i}" for d, i, _ in CASES]
)
def test_doc_snippet_runs(
    doc: Path, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc.name}[{index}]", "exec"), {"__name__": f"doc_{index}"})

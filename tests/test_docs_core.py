"""Run the python snippets of the core docs (README, concepts, ...) so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/concepts.md",
    "docs/architecture.md",
    "docs/costs.md",
    "docs/performance.md",
    "docs/tutorial_mnist.md",
    "docs/several_machines.md",
]


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


DOC_PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
SOURCES = sorted(
    p.relative_to(ROOT).as_posix()
    for d in ("smpc", "fl", "bench", "examples")
    for p in (ROOT / d).rglob("*.py")
)
# Files a user of the repository does not have, and the work notes of its authors.
OUTSIDE = re.compile(
    r"\.\./shared|/work/|\bshared/\w+\.md|DESIGN\.md|API\.md|STYLE\.md"
    r"|\bissue \d+|\(issue\b|\bthe issue\b|\bissue's",
    re.I,
)
DIARY = re.compile(
    r"tried here and reverted|this 2-core machine|same day|same session|targets from the",
    re.I,
)


@pytest.mark.parametrize("path", ["README.md", *DOC_PAGES, *SOURCES])
def test_no_reference_outside_the_repository(path: str) -> None:
    text = (ROOT / path).read_text()
    hits = [m.group(0) for m in OUTSIDE.finditer(text)]
    assert not hits, f"{path} refers outside the repository: {hits}"


@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_page_opens_with_a_python_snippet(page: str) -> None:
    # what the capability does, then a snippet: in the page's first section at the latest
    text = (ROOT / page).read_text()
    first = text.find("```python")
    headings = [m.start() for m in re.finditer(r"^## ", text, flags=re.M)]
    assert first >= 0, f"{page} has no python snippet"
    assert len([h for h in headings if h < first]) <= 1, f"{page}: the first snippet comes late"


@pytest.mark.parametrize("page", [p for p in DOC_PAGES if p != "docs/performance.md"])
def test_measurement_diaries_live_in_the_performance_page(page: str) -> None:
    hits = [m.group(0) for m in DIARY.finditer((ROOT / page).read_text())]
    assert not hits, f"{page}: move measurement notes to docs/performance.md: {hits}"


def test_performance_page_defines_every_workload() -> None:
    text = (ROOT / "docs/performance.md").read_text()
    for name in [f"W{i}" for i in range(1, 8)] + ["F1", "F3"]:
        assert re.search(rf"^\| {name} \|", text, flags=re.M), name
    assert "60,000" in text and "5 epochs" in text  # W7: full Fashion-MNIST, 5 epochs
    assert "docs/performance.md" in (ROOT / "README.md").read_text()

"""Run the python snippets of the autograd/nn and tutorial pages so they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
# Names the pages leave to the reader's context, bound to small real values.
CONTEXT = {
    "docs/autograd_nn.md": lambda: {
        "images": torch.rand(128, 784),
        "labels": torch.randint(0, 10, (128,)),
    },
    "docs/tutorial_inference.md": dict,
}


@pytest.mark.parametrize("page", sorted(CONTEXT))
def test_snippets_run(page: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    assert blocks, f"{page} has no python snippet"
    for block in blocks:
        scope = {"__name__": "__doc_snippet__", **CONTEXT[page]()}
        exec(compile(block, f"{page}:snippet", "exec"), scope)

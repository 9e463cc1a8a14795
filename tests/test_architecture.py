"""The layer order of docs/architecture.md, enforced by import-linter's contracts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install -e .[test])")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_nothing_happens_at_import() -> None:
    """Importing the packages starts no thread, process or network connection."""
    code = (
        "import threading, multiprocessing, smpc, fl; "
        "assert threading.active_count() == 1, threading.enumerate(); "
        "assert not multiprocessing.active_children()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""fl/__init__.py: ``import fl`` is lazy (PEP 562) and every public name still resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fl

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_fl_does_not_import_smpc() -> None:
    out = _python(
        "import sys, fl\n"
        "assert 'smpc' not in sys.modules, 'import fl imported smpc'\n"
        "loaded = sorted(m for m in sys.modules if m == 'fl' or m.startswith('fl.'))\n"
        "print(' '.join(loaded))\n"
    )
    assert out.split() == ["fl", "fl.errors", "fl.partition"]


@pytest.mark.parametrize(
    "name,needs_smpc",
    [("FedAvg", False), ("Client", False), ("History", False), ("PlainAggregator", True)],
)
def test_a_name_loads_its_module_on_first_use(name: str, needs_smpc: bool) -> None:
    out = _python(
        f"import sys, fl\nobj = fl.{name}\n"
        f"print(obj.__module__, 'smpc' in sys.modules, '{name}' in vars(fl))\n"
    )
    module, smpc_loaded, cached = out.split()
    assert module.startswith("fl.") and cached == "True"
    assert smpc_loaded == str(needs_smpc)


def test_every_public_name_resolves_and_is_what_its_module_defines() -> None:
    import importlib

    for name in fl.__all__:
        obj = getattr(fl, name)
        module = getattr(obj, "__module__", None)
        assert module is not None and module.startswith("fl."), name
        assert getattr(importlib.import_module(module), name) is obj, name
    assert set(fl.__all__) <= set(dir(fl))


def test_api_names_in_the_docs_resolve() -> None:
    """Every ``fl.Name`` written in the README and docs is an attribute of ``fl``."""
    text = "\n".join(
        p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    names = set(re.findall(r"(?<![\w/])fl\.([A-Za-z_]\w*)", text))
    names -= {"md", "secagg"}  # the docs' own file names; a Flower record's name
    missing = sorted(n for n in names if not hasattr(fl, n))
    assert not missing, missing


def test_partition_stays_the_function_after_its_module_is_imported() -> None:
    out = _python(
        "import sys, fl, fl.client, fl.simulation\n"
        "m = sys.modules['fl.partition']\n"
        "print(callable(fl.partition) and fl.partition is m.partition,\n"
        "      fl.Partition is m.Partition)\n"
    )
    assert out.split() == ["True", "True"]


def test_star_import_and_submodules() -> None:
    out = _python(
        "from fl import *\nimport fl\n"
        "print(FedAvg is fl.FedAvg, fl.dp.__name__, fl.network.__name__)\n"
    )
    assert out.split() == ["True", "fl.dp", "fl.network"]


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = fl.NoSuchThing  # type: ignore[attr-defined]
    assert not hasattr(fl, "_private")

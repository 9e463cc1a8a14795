"""Packaging: what the extras hold, and what the setup script installs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def test_demo_packages_are_only_in_the_demo_extra() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    demo = {"mlxtend", "tqdm", "matplotlib"}
    assert not demo & _names(project["dependencies"])
    assert demo <= _names(extras["demo"])


def test_demo_script_installs_the_demo_extra() -> None:
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "scripts/setup.sh" in demo  # which installs [test,demo,flower] (checked above)


# Run in a fresh interpreter with the demo extra's packages made unimportable
# (None in sys.modules: `import tqdm` raises ModuleNotFoundError, find_spec finds nothing).
_WITHOUT_DEMO_EXTRA = """
import sys
for name in ("tqdm", "matplotlib", "mlxtend"):
    sys.modules[name] = None

import pytest
import torch
from torch import nn

import fl
import smpc
import smpc.demo
from smpc.data import DatasetNotFoundError, load_mnist

# smpc: share, compute, reveal
with smpc.Session(parties=3, seed=0) as sess:
    x = sess.share(torch.tensor([1.5, -2.0]))
    y = sess.share(torch.tensor([2.0, 0.25]))
    got = (x * y + 1).reveal()
assert torch.allclose(got, torch.tensor([4.0, 0.5])), got

# fl: a federated run (no bar unless asked; asking names the extra)
g = torch.Generator().manual_seed(0)
xs = torch.randn(60, 4, generator=g)
ys = (xs @ torch.randn(4, 2, generator=g)).argmax(1)
clients = fl.make_clients(fl.partition(ys, 3, seed=0), xs, ys)
hist = fl.run_simulation(nn.Linear(4, 2), clients, num_rounds=2, strategy=fl.FedAvg(lr=0.1))
assert len(hist.rounds) == 2
with pytest.raises(ImportError, match=r"smpc-fl\\[demo\\]"):
    fl.run_simulation(nn.Linear(4, 2), clients, num_rounds=1, progress=True)
with pytest.raises(ImportError, match=r"smpc-fl\\[demo\\]"):
    fl.plot_histories({"a": hist}, "out.png")
with pytest.raises(ImportError, match=r"smpc-fl\\[demo\\]"):
    fl.partition(ys, 3, seed=0).plot("out.png")

# the demo and the data loader say what to install, before any training
with pytest.raises(DatasetNotFoundError, match=r"smpc-fl\\[demo\\]"):
    load_mnist()
cfg = smpc.demo.Config(progress=True)
with pytest.raises(ImportError, match=r"tqdm.*matplotlib.*mlxtend.*smpc-fl\\[demo\\]"):
    smpc.demo.run_demo(cfg)
assert not smpc.demo._show_progress(smpc.demo.Config())
assert all(sys.modules[m] is None for m in ("tqdm", "matplotlib", "mlxtend"))
print("ok")
"""


def test_smpc_and_fl_work_without_the_demo_extra(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEMO_EXTRA],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert not (tmp_path / "out.png").exists()

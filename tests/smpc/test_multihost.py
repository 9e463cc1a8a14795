"""Runs across "machines": each role in its own Linux network namespace.

alice, bob and the crypto provider each run ``smpc-launch`` in a network
namespace of their own, linked by veth pairs to a bridge (in a fourth
namespace): addresses 10.213.0.1-3 exist only inside them, and Unix sockets
cannot cross them, as between separate machines. Checked:

* over TLS (the default with credentials) the results and ``sess.stats`` equal
  those of the same program run on one host (Unix sockets), with the same seed;
* with ``--insecure`` the gloo TCP transport starts too (its device is resolved
  from the address each rank advertises) and gives the same results;
* without credentials every role refuses to start, saying how to create them;
* a cut link (bob's veth down) makes every role, the provider included, exit
  within the timeout.

Needs root and ``ip netns`` (skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smpc.credentials import main as credentials_main
from smpc.launch import _ScriptProgram, run

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("alice", "bob", "dealer")
PORT = 29533

SCRIPT = """
import json, os, time
import torch

def main(sess):
    g = torch.Generator().manual_seed(1)
    xp, wp = torch.randn(5, 4, generator=g), torch.randn(4, 3, generator=g)
    x = sess.share(xp if sess.rank == 0 else None, src="alice")
    w = sess.share(wp if sess.rank == 1 else None, src="bob")
    out = {
        "mm": (x @ w).reveal().tolist(),
        "gt": (x > 0.1).reveal().tolist(),
        "relu": x.relu().reveal().tolist(),
        "sq": (x * x).reveal(to="bob"),
    }
    out["sq"] = None if out["sq"] is None else out["sq"].tolist()
    s = sess.stats.snapshot()
    out["stats"] = {
        "rounds": s.rounds, "bytes": s.bytes, "per_party": list(s.bytes_per_party),
        "by_op": {k: [v.rounds, v.bytes, v.calls] for k, v in sorted(s.by_op.items())},
    }
    folder = os.environ.get("SMPC_TEST_OUT")
    for step in range(int(os.environ.get("SMPC_TEST_STEPS", "0"))):
        (x * x).reveal()
        if step == 3 and folder:
            open(os.path.join(folder, f"{sess.rank}.running"), "w").close()
        time.sleep(0.02)
    if folder:
        with open(os.path.join(folder, f"{sess.rank}.json"), "w") as f:
            json.dump(out, f)
    return out
"""


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _namespaces_work() -> str | None:
    """``None`` if network namespaces can be made here, else why not."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"smpcprobe{secrets.token_hex(3)}"
    try:
        _sh("ip", "netns", "add", probe)
        _sh("ip", "netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"`ip netns add` failed here: {e}"
    return None


class Net:
    """Three role namespaces on one bridge; ``cut(role)`` takes a role's link down."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.ns = {role: f"smpc{tag}{role[0]}" for role in ROLES}
        self.bridge = f"smpc{tag}br"
        self.addr = {role: f"10.213.0.{i + 1}" for i, role in enumerate(ROLES)}
        self.port = {role: f"b{tag}{role[0]}" for role in ROLES}  # bridge-side veth ends
        made: list[str] = []
        try:
            for name in [*self.ns.values(), self.bridge]:
                _sh("ip", "netns", "add", name)
                made.append(name)
            _sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
            for role, ns in self.ns.items():
                inner = f"v{self.port[role][1:]}"
                _sh("ip", "link", "add", inner, "type", "veth", "peer", "name", self.port[role])
                _sh("ip", "link", "set", inner, "netns", ns)
                _sh("ip", "link", "set", self.port[role], "netns", self.bridge)
                _sh("ip", "-n", ns, "addr", "add", f"{self.addr[role]}/24", "dev", inner)
                _sh("ip", "-n", ns, "link", "set", inner, "up")
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
                _sh("ip", "-n", self.bridge, "link", "set", self.port[role], "master", "br0")
                _sh("ip", "-n", self.bridge, "link", "set", self.port[role], "up")
        except BaseException:
            for name in made:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            raise
        self.names = made

    def cut(self, role: str) -> None:
        _sh("ip", "-n", self.bridge, "link", "set", self.port[role], "down")

    def close(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture
def net() -> Iterator[Net]:
    why = _namespaces_work()
    if why is not None:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    n = Net()
    try:
        yield n
    finally:
        n.close()


def _launch(
    net: Net, tmp: Path, extra: list[str], *, timeout: float, steps: int = 0
) -> list[subprocess.Popen[str]]:
    script = tmp / "prog.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "SMPC_TEST_OUT": str(tmp),
        "SMPC_TEST_STEPS": str(steps),
    }
    env.pop("SMPC_CREDENTIALS", None)
    env.pop("GLOO_SOCKET_IFNAME", None)
    procs = []
    for role in ROLES:
        cmd = ["ip", "netns", "exec", net.ns[role], sys.executable, "-m", "smpc.launch"]
        cmd += ["--parties", "alice,bob", "--role", role, "--seed", "7"]
        cmd += ["--master-addr", net.addr["alice"], "--master-port", str(PORT)]
        cmd += ["--timeout", str(timeout), *extra]
        if role != "dealer":
            cmd.append(str(script))
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen[str]], within: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + within
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a role did not exit within {within} s: {p.args!r}")
        out.append((p.returncode, err))
    return out


def _one_host(tmp: Path) -> list[Any]:
    tmp.mkdir()
    (tmp / "prog.py").write_text(textwrap.dedent(SCRIPT))
    return run(_ScriptProgram(str(tmp / "prog.py")), ("alice", "bob"), seed=7, timeout=30)


@pytest.mark.timeout(240)
def test_tls_across_namespaces_equals_the_one_host_run(net: Net, tmp_path: Path) -> None:
    # Prepare: the documented credentials command, one folder copied to every "machine"
    creds = tmp_path / "creds"
    assert credentials_main([str(creds), "--parties", "alice,bob", "--provider"]) == 0
    # Execute
    procs = _launch(net, tmp_path, ["--credentials", str(creds)], timeout=30)
    ends = _finish(procs, 180)
    local = _one_host(tmp_path / "local")
    # Assert: same results and costs as on one host
    for (code, err), role in zip(ends, ROLES, strict=True):
        assert code == 0, f"{role}: {err}"
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got == local[rank]


@pytest.mark.timeout(240)
def test_insecure_gloo_across_namespaces_starts_and_warns(net: Net, tmp_path: Path) -> None:
    # Execute: plain TCP on request; gloo's device comes from each rank's own address
    procs = _launch(net, tmp_path, ["--insecure"], timeout=30)
    ends = _finish(procs, 180)
    local = _one_host(tmp_path / "local")
    # Assert
    for (code, err), role in zip(ends, ROLES, strict=True):
        assert code == 0, f"{role}: {err}"
        assert "insecure=True" in err, f"{role} did not warn: {err}"
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["mm"] == local[rank]["mm"] and got["stats"] == local[rank]["stats"]


@pytest.mark.timeout(120)
def test_without_credentials_every_role_refuses_to_start(net: Net, tmp_path: Path) -> None:
    procs = _launch(net, tmp_path, [], timeout=20)
    ends = _finish(procs, 90)
    for (code, err), role in zip(ends, ROLES, strict=True):
        assert code != 0, role
        assert "CredentialsError" in err and "smpc-credentials" in err, f"{role}: {err}"


@pytest.mark.timeout(240)
def test_a_cut_link_makes_every_role_exit_within_the_timeout(net: Net, tmp_path: Path) -> None:
    # Prepare
    creds = tmp_path / "creds"
    assert credentials_main([str(creds), "--parties", "alice,bob", "--provider"]) == 0
    timeout = 8.0
    procs = _launch(net, tmp_path, ["--credentials", str(creds)], timeout=timeout, steps=100_000)
    deadline = time.monotonic() + 150
    while not (tmp_path / "0.running").exists():
        assert time.monotonic() < deadline, "the run did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.1)
    # Execute: bob's machine drops off the network
    net.cut("bob")
    cut = time.monotonic()
    ends = _finish(procs, 3 * timeout + 20)
    took = time.monotonic() - cut
    # Assert: every role gave up (no hang), the parties with a timeout error
    assert took < 3 * timeout + 20
    for (code, err), role in zip(ends[:2], ROLES[:2], strict=True):
        assert code != 0, role
        assert "PartyTimeoutError" in err, f"{role}: {err[-2000:]}"

"""The distributed runtime: one OS process per party plus the provider, on one host.

The transport-sensitive tests run over every transport (``TRANSPORTS``): Unix
sockets (the default on one host), TLS 1.3 on loopback (the default across
machines; a throwaway CA made by :func:`smpc.run`) and gloo over loopback TCP.

Each test runs a program with :func:`smpc.launch.run` and checks it against
plaintext torch, exactly at ring level, and against the same program in the
in-process simulation (identical rounds and bytes). Failure tests kill or stall
a party and check that the others raise within the timeout. Party programs are
module-level functions (they are pickled to the party processes); inputs are
drawn by hypothesis in this process.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import ring
from smpc.comm.stats import Stats
from smpc.errors import ProtocolDesyncError
from smpc.launch import PartyExitError, run
from tests.smpc.comm.dist_programs import (
    FRAC,
    Case,
    adam_program,
    backward_program,
    big_open_program,
    desync_big_parts_program,
    desync_many_parts_program,
    desync_op_program,
    desync_parts_program,
    desync_shape_program,
    dies_program,
    dtype_program,
    grouped_conv_program,
    inline_open_program,
    kept_inference_program,
    many_rows_program,
    object_program,
    protocol_program,
    raises_program,
    seeded_program,
    stalls_program,
    tensor_program,
    wide_grad_program,
)

pytestmark = pytest.mark.distributed
TRANSPORTS = ["unix", "tcp", "tls"]


# ----------------------------------------------------------------- helpers
@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Fixed-point ring inputs: elementwise pair (broadcastable, same ndim) and a matmul pair."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    yshape = tuple(s if draw(st.booleans()) else 1 for s in shape)
    m, k, p = (draw(st.integers(1, 5)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,), (2, 3)]))
    bound = 1 << 31

    def ints(sh: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(-bound, bound, sh, generator=g, dtype=torch.int64)

    # broadcast batch dims keep the same ndim (the simulation's party axis needs it)
    bbatch = tuple(d if draw(st.booleans()) else 1 for d in batch)
    return Case(ints(shape), ints(yshape), ints((*batch, m, k)), ints((*bbatch, k, p)))


def _simulate(program: Any, n: int, seed: int | None = None) -> Any:
    with smpc.Session(n, FRAC, seed=seed) as sess:
        return program(sess)


def _assert_same_costs(dist: list[Stats], sim: Stats) -> None:
    """Each party's rounds equal the simulation's; bytes per party and summed agree."""
    n = len(dist)
    for r, s in enumerate(dist):
        assert s.rounds == sim.rounds
        assert s.bytes_per_party[r] == sim.bytes_per_party[r]
        assert s.dealer_bytes == sim.dealer_bytes
        assert s.dealer_requests == sim.dealer_requests
        assert set(s.by_op) == set(sim.by_op)
    assert sum(s.bytes for s in dist) == sim.bytes
    for label, op in sim.by_op.items():
        assert all(s.by_op[label].rounds == op.rounds for s in dist), label
        assert sum(s.by_op[label].bytes for s in dist) == op.bytes, label
    assert n == sim.world_size


def _trunc_ok(got: torch.Tensor, product: torch.Tensor) -> bool:
    """Within one unit in the last place of the floor (the protocol's documented error)."""
    return bool(((got - (product >> FRAC)).abs() <= 1).all())


# ----------------------------------------------------------------- correctness
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("n", [2, 3])
@settings(max_examples=3, deadline=None)
@given(case=cases())
def test_protocols_match_plaintext_and_simulation(n: int, transport: str, case: Case) -> None:
    # Prepare
    program = functools.partial(protocol_program, case=case)
    # Execute
    results = run(program, parties=n, timeout=20, transport=transport)
    sim = _simulate(program, n)
    # Assert: plaintext, ring-exact
    product = case.x * case.y
    for r, res in enumerate(results):
        assert torch.equal(res["x"], case.x)
        assert torch.equal(res["mul"], product)
        assert torch.equal(res["square"], case.x * case.x)
        assert _trunc_ok(res["trunc"], product)
        assert torch.equal(res["matmul"], ring.matmul(case.a, case.b))
        # reveal to the last party only: the others get None and sent exactly one share
        if r == n - 1:
            assert torch.equal(res["reveal_to"], case.y)
            assert res["reveal_to_stats"].bytes == 0
        else:
            assert res["reveal_to"] is None
            assert res["reveal_to_stats"].bytes == case.y.numel() * 8
        assert res["reveal_to_stats"].rounds == 1
    # Assert: same rounds and bytes as the simulation
    _assert_same_costs([res["stats"] for res in results], sim["stats"])
    # Assert: the provider sent each party its 16-byte seed, and corrections only to the
    # last: the bytes the simulation's dealer accounts for (small requests in pools)
    for r, res in enumerate(results):
        expected = 16 + (sim["dealer_received"] if r == n - 1 else 0)
        assert res["dealer_received"] == expected
    assert sim["dealer_received"] >= sim["stats"].dealer_bytes  # pools are drawn ahead


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_backward_products_share_rounds_in_both_runtimes(n: int) -> None:
    # Prepare: a linear layer and a strided convolution with their output gradients
    g = torch.Generator().manual_seed(n)
    inputs = {
        "x": torch.rand(5, 4, generator=g) - 0.5,
        "w": torch.rand(3, 4, generator=g) - 0.5,
        "g": torch.rand(5, 3, generator=g) - 0.5,
        "cx": torch.rand(2, 3, 7, 6, generator=g) - 0.5,
        "cw": torch.rand(4, 3, 3, 3, generator=g) - 0.5,
        "cg": torch.rand(2, 4, 4, 3, generator=g) - 0.5,
    }
    program = functools.partial(backward_program, inputs=inputs)
    # Execute
    results = run(program, parties=n, timeout=30)
    sim = _simulate(program, n)
    # Assert: torch autograd's gradients (within fixed-point error), on the last party
    ref = {k: v.clone().requires_grad_(k in ("x", "w", "cx", "cw")) for k, v in inputs.items()}
    torch.nn.functional.linear(ref["x"], ref["w"]).backward(ref["g"])
    torch.nn.functional.conv2d(ref["cx"], ref["cw"], stride=2, padding=1).backward(ref["cg"])
    got = results[-1]["grads"]
    for name in ("x", "w", "cx", "cw"):
        want = ref[name].grad
        assert want is not None
        torch.testing.assert_close(got[name], want, atol=1e-3, rtol=1e-3)
    assert all(res["grads"]["x"] is None for res in results[:-1])
    # Assert: 2 rounds per layer forward and 2 backward (both products together),
    # and the same costs as the simulation
    assert sim["stats"].rounds == 8
    _assert_same_costs([res["stats"] for res in results], sim["stats"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_shared_tensor_api(n: int) -> None:
    # Prepare
    g = torch.Generator().manual_seed(n)
    xp = torch.randn(3, 4, generator=g) * 4
    wp = torch.randn(4, 2, generator=g)
    program = functools.partial(tensor_program, xp=xp, wp=wp)
    tol = 4 * 2.0**-FRAC * 4 * 8  # a few ulps of each truncated product, times the values
    # Execute
    results = run(program, parties=n, timeout=20)
    sim = _simulate(program, n)
    # Assert
    for r, res in enumerate(results):
        torch.testing.assert_close(res["mul"], xp * xp + 3, atol=tol, rtol=0)
        torch.testing.assert_close(res["matmul"], xp @ wp, atol=tol, rtol=0)
        torch.testing.assert_close(res["gt"], (xp > 1).float())
        torch.testing.assert_close(res["relu"], xp.relu(), atol=2.0**-FRAC, rtol=0)
        torch.testing.assert_close(res["max"], xp.max(-1).values, atol=2.0**-FRAC, rtol=0)
        assert torch.equal(res["argmax"].long(), torch.nn.functional.one_hot(xp.argmax(-1), 4))
        if r == n - 1:
            torch.testing.assert_close(res["to_last"], xp - 1, atol=2.0**-FRAC, rtol=0)
        else:
            assert res["to_last"] is None
    _assert_same_costs([res["stats"] for res in results], sim["stats"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("n", [2, 3])
def test_openings_of_every_size(n: int, transport: str) -> None:
    # Prepare: shares inline in a frame (< 1 MiB in all), beyond a frame (few: sent in
    # parts; many: concatenated), empty
    g = torch.Generator().manual_seed(n)
    shapes = [(3,), (2, 2), (0,), (70_000,), (400, 250), (1,), (5, 1), (9,), (2,), (1000,), (7,)]
    values = [torch.randint(-(2**62), 2**62, sh, generator=g) for sh in shapes]
    program = functools.partial(big_open_program, values=values)
    # Execute
    results = run(program, parties=n, timeout=20, transport=transport)
    sim = _simulate(program, n)
    # Assert: exact values, and the same bytes as the simulation
    big = [v for v in values if v.numel() > 600]
    for res in results:
        assert all(torch.equal(a, b) for a, b in zip(res["all"], values, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(res["big"], big, strict=True))
        medium = [big[-1], values[0]]
        assert all(torch.equal(a, b) for a, b in zip(res["medium"], medium, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(res["small"], values[:2], strict=True))
        assert res["empty"] == []
        assert torch.equal(res["mul"], big[0] * big[0])
    _assert_same_costs([res["stats"] for res in results], sim["stats"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("n", [2, 3])
def test_inline_openings_of_every_integer_dtype_and_layout(n: int, transport: str) -> None:
    """The one-frame path (numpy views): int64 with wrap-around, a transposed view, 0-d,
    uint8 and int32, empty; plain and masked; equal to the sums computed in torch."""
    results = run(inline_open_program, parties=n, timeout=20, transport=transport)
    total = n * (n + 1) // 2  # sum of the parties' factors
    base = torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4) * (2**61 + 12345)
    expected = [
        total * base,
        (total * base).t(),
        torch.tensor(7 * total),
        torch.arange(10, dtype=torch.uint8) * 51 * total,
        torch.arange(5, dtype=torch.int32) * total,
        torch.empty(0, dtype=torch.int64),
    ]
    for res in results:
        for got, want in zip(res["open"], expected, strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want)
        for got, want in zip(res["masked"], expected, strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want - total)
        assert torch.equal(res["mixed"][0], expected[0] - total)


@pytest.mark.timeout(60)
def test_broadcast_object_and_barrier() -> None:
    results = run(object_program, parties=3, timeout=20)
    assert results == [{"rank": 1, "data": [1, 2, 3]}] * 3


@pytest.mark.timeout(60)
def test_reveal_dtypes_match_the_simulation() -> None:
    # Execute: the same program in party processes and in simulation
    dist = run(dtype_program, parties=2, timeout=30)
    with smpc.Session(parties=2, frac_bits=FRAC) as sess:
        sim = dtype_program(sess)
    # Assert: every party reveals the dtypes shared (the dtype travels with the share)
    expect = {"x": torch.float64, "i": torch.int64, "f": torch.float32, "xi": torch.float64}
    expect |= {"ii": torch.int64, "fi": torch.float32, "cmp": torch.int64, "x32": torch.float32}
    for res in [*dist, sim]:
        assert {k: v.dtype for k, v in res.items()} == expect
    for res in dist:
        for k in ("x", "i", "f", "ii", "fi", "cmp", "x32"):  # exact ones
            assert torch.equal(res[k], sim[k]), k
        assert (res["xi"] - sim["xi"]).abs().max() <= 4 * 2.0**-FRAC  # truncation: ulps
    assert sim["x"][0].item() == round(4916.2243576 * 2**FRAC) / 2**FRAC


@pytest.mark.timeout(60)
def test_seed_is_a_testing_switch() -> None:
    # Prepare / Execute: two seeded runs and one unseeded run of a masked opening
    first = run(seeded_program, parties=2, seed=7, timeout=20)
    second = run(seeded_program, parties=2, seed=7, timeout=20)
    fresh = run(seeded_program, parties=2, timeout=20)
    # Assert: reproducible with the seed; fresh randomness without it
    assert torch.equal(first[0], second[0]) and torch.equal(first[0], first[1])
    assert not torch.equal(first[0], fresh[0])


# ----------------------------------------------------------------- failures
@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("n", [2, 3])
def test_killed_peer_raises_party_timeout(n: int, transport: str) -> None:
    # Execute
    timeout = 5.0
    results = run(
        dies_program, parties=n, timeout=timeout, return_exceptions=True, transport=transport
    )
    # Assert: the dead party is reported; every survivor raised well within the timeout
    assert isinstance(results[1], PartyExitError)
    assert "party1" in str(results[1])
    for r, res in enumerate(results):
        if r != 1:
            kind, elapsed = res
            assert kind == "timeout"
            assert elapsed < timeout
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stalled_peer_raises_after_timeout(transport: str) -> None:
    # Execute
    timeout = 1.5
    program = functools.partial(stalls_program, stall=timeout + 1.5)
    results = run(program, parties=2, timeout=timeout, return_exceptions=True, transport=transport)
    # Assert: the waiting party gave up after about `timeout` seconds, not later
    kind, elapsed = results[0]
    assert kind == "timeout"
    assert timeout * 0.9 <= elapsed < timeout + 1.0
    assert results[1] == ("stalled", timeout + 1.5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "program",
    [
        desync_shape_program,
        desync_op_program,
        desync_parts_program,
        desync_big_parts_program,
        desync_many_parts_program,
    ],
)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_desync_raises_protocol_desync(program: Any, transport: str) -> None:
    with pytest.raises(ProtocolDesyncError) as info:
        run(program, parties=3, timeout=10, transport=transport)
    assert any("smpc.run" in note for note in info.value.__notes__)


@pytest.mark.timeout(60)
def test_party_exception_is_reraised_with_party_name() -> None:
    with pytest.raises(ValueError, match="boom") as info:
        run(raises_program, parties=("alice", "bob", "carol"), timeout=10)
    assert any("'carol'" in note for note in info.value.__notes__)
    assert "remote traceback" in str(info.value.__cause__)
    assert multiprocessing.active_children() == []


def test_unpicklable_program_is_rejected() -> None:
    with pytest.raises(TypeError, match="picklable"):
        run(lambda sess: None, parties=2)


# ----------------------------------------------------------------- CLI
_SCRIPT = """
import torch

def main(sess):
    x = sess.share(torch.tensor([1.5, -2.0]) if sess.rank == 0 else None, src="alice")
    return (x * x).reveal()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_with_torch_distributed_env(tmp_path: Path, transport: str) -> None:
    # Prepare: the documented multi-machine commands, on loopback
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "3",
        "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "smpc.launch", "--parties", "alice,bob", "--timeout", "30"]
    cmd += ["--transport", transport]
    if transport == "tls":  # the documented credentials command, then one folder for all
        made = subprocess.run(
            [sys.executable, "-m", "smpc.credentials", str(tmp_path / "creds")]
            + ["--parties", "alice,bob", "--provider"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "smpc:provider" in made.stdout
        cmd += ["--credentials", str(tmp_path / "creds")]
    # Execute
    procs = [
        subprocess.Popen(
            [*cmd, str(script)] if rank < 2 else cmd,
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(3)
    ]
    try:
        outs = [p.communicate(timeout=110) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    # Assert
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert outs[0][0].startswith("alice: tensor([2.2500, 4.0000])")
    assert outs[1][0].startswith("bob: tensor([2.2500, 4.0000])")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_inference_reuses_kept_weight_masks(n: int) -> None:
    """Eval-mode Linear layers open their weights once; later batches send only inputs."""
    g = torch.Generator().manual_seed(n)
    torch.manual_seed(n)
    plain = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    batches = [torch.randn(rows, 6, generator=g) for rows in (20, 20, 20, 4)]
    program = functools.partial(kept_inference_program, state=plain.state_dict(), batches=batches)
    results = run(program, parties=n, timeout=20)
    sim = _simulate(program, n)
    with torch.no_grad():
        want = [plain(xb) for xb in batches]
    for res in [*results, sim]:
        for got, ref in zip(res["out"], want, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)
    # The first batch also opens the weights' masked values (6*5 + 5*3 elements).
    # The first batch also opens the weights' masked values (6*5 + 5*3 elements);
    # the others (20 rows: the fused limb-GEMM local step; 4 rows: broadcast) only their data.
    weights_bytes = (6 * 5 + 5 * 3) * 8 * (n - 1) * n
    assert sim["bytes"][0] - sim["bytes"][1] == weights_bytes
    assert sim["bytes"][1] == sim["bytes"][2] > sim["bytes"][3]
    _assert_same_costs([res["stats"] for res in results], sim["stats"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_matmul_with_many_rows(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    xp, wp = torch.randn(40, 300, generator=g), torch.randn(300, 24, generator=g)
    results = run(functools.partial(many_rows_program, xp=xp, wp=wp), parties=n, timeout=30)
    for out in results:
        torch.testing.assert_close(out, xp @ wp, atol=2e-3, rtol=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_grouped_convolutions_and_gradients(n: int) -> None:
    """Depthwise and grouped convolution triples (``groups`` travels in the request's
    Conv2dOp / ConvTranspose2dOp) in both runtimes, against torch autograd."""
    g = torch.Generator().manual_seed(n)
    inputs = {
        "x": torch.rand(2, 4, 6, 5, generator=g) - 0.5,
        "w": torch.rand(4, 1, 3, 3, generator=g) - 0.5,
        "w2": torch.rand(6, 2, 2, 2, generator=g) - 0.5,
        "g": torch.rand(2, 6, 3, 2, generator=g) - 0.5,
    }
    program = functools.partial(grouped_conv_program, inputs=inputs)
    results = run(program, parties=n, timeout=30)
    sim = _simulate(program, n)
    ref = {k: v.clone().requires_grad_(k != "g") for k, v in inputs.items()}
    h = torch.nn.functional.conv2d(ref["x"], ref["w"], padding=1, groups=4)
    out = torch.nn.functional.conv2d(h, ref["w2"], stride=2, groups=2)
    out.backward(ref["g"])
    for res in (results[-1], sim):
        torch.testing.assert_close(res["out"], out.detach(), atol=1e-3, rtol=0)
        for name in ("x", "w", "w2"):
            want = ref[name].grad
            assert want is not None
            torch.testing.assert_close(res["grads"][name], want, atol=1e-3, rtol=0)
    assert all(res["out"] is None for res in results[:-1])
    _assert_same_costs([res["stats"] for res in results], sim["stats"])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n", [2, 3])
def test_adam_training_in_both_runtimes(n: int) -> None:
    """Three Adam steps on an encrypted model: the same weights as torch.optim.Adam
    (within fixed-point error) and as the simulation, at the same costs."""
    torch.manual_seed(n)
    plain = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    g = torch.Generator().manual_seed(10 + n)
    data = [(torch.randn(6, 5, generator=g), torch.randn(6, 3, generator=g)) for _ in range(3)]
    program = functools.partial(adam_program, state=plain.state_dict(), data=data)
    results = run(program, parties=n, timeout=60)
    sim = _simulate(program, n)
    opt = torch.optim.Adam(plain.parameters(), lr=0.01, weight_decay=0.001)
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.mse_loss(plain(x), y).backward()
        opt.step()
    for res in [*results, sim]:
        for k, v in plain.state_dict().items():
            torch.testing.assert_close(res["state"][k], v, atol=2e-3, rtol=0, msg=k)
    _assert_same_costs([res["stats"] for res in results], sim["stats"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_pending_wide_gradients_materialize_in_both_runtimes(n: int) -> None:
    """Weights that keep their gradients wide (as the optimizers ask) hold them
    pending after backward; materialize_grads truncates both in one round, to
    torch's gradients, at the simulation's costs."""
    g = torch.Generator().manual_seed(20 + n)
    inputs = {
        "x": torch.rand(5, 4, generator=g) - 0.5,
        "w1": torch.rand(3, 4, generator=g) - 0.5,
        "w2": torch.rand(2, 3, generator=g) - 0.5,
        "g": torch.rand(5, 2, generator=g) - 0.5,
    }
    program = functools.partial(wide_grad_program, inputs=inputs)
    results = run(program, parties=n, timeout=30)
    sim = _simulate(program, n)
    ref = {k: v.clone().requires_grad_(k in ("w1", "w2")) for k, v in inputs.items()}
    lin = torch.nn.functional.linear
    lin(lin(ref["x"], ref["w1"]), ref["w2"]).backward(ref["g"])
    for res in [results[-1], sim]:
        assert res["pending"] == [True, True]
        for name in ("w1", "w2"):
            want = ref[name].grad
            assert want is not None
            torch.testing.assert_close(res["grads"][name], want, atol=1e-3, rtol=0)
    assert sim["stats"].rounds == 1
    _assert_same_costs([res["stats"] for res in results], sim["stats"])

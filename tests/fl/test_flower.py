"""fl.flower: fl's aggregation as a Flower workflow + mod, against the in-process oracle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="needs the `flower` extra")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fl  # noqa: E402
from fl.aggregators import Stage  # noqa: E402
from fl.flower import RECORD, SecureAggregation, flatten_arrays  # noqa: E402
from fl.types import ClientUpdate  # noqa: E402
from tests.fl.flower_apps import (  # noqa: E402
    LocalGrid,
    global_model,
    node_examples,
    node_update,
    server_task,
)

ROOT = Path(__file__).resolve().parents[2]


def _deltas(g: torch.Tensor, nodes: list[int]) -> list[torch.Tensor]:
    """The updates exactly as the mod computes them: float32(g + u) - g."""
    return [torch.from_numpy(g.numpy() + node_update(n, g.numel())) - g for n in nodes]


def _oracle(
    agg: fl.Aggregator,
    strategy: fl.Strategy,
    g: torch.Tensor,
    nodes: list[int],
    survivors: list[int],
) -> torch.Tensor:
    """The next model by the in-process aggregator; non-survivors drop at INPUT."""
    ups = [
        ClientUpdate(c, d, node_examples(n))
        for c, (n, d) in enumerate(zip(nodes, _deltas(g, nodes), strict=True))
    ]
    gone = [c for c, n in enumerate(nodes) if n not in survivors]
    res = agg.aggregate(ups, dropouts={Stage.INPUT: gone})
    assert [nodes[c] for c in res.survivors] == sorted(survivors)
    return strategy.apply(g, res.mean)


def _run(agg: fl.Aggregator, grid: LocalGrid, **kw: object) -> tuple[torch.Tensor, fl.History]:
    kw.setdefault("timeout", 0.3)  # the local grid answers at once; a hang is a missing reply
    wf = SecureAggregation(agg, kw.pop("strategy", fl.FedAvg()), **kw)  # type: ignore[arg-type]
    with server_task():
        arrays, history = wf(grid, global_model())
    return flatten_arrays(arrays), history


FAULTS = st.sampled_from(
    [
        "raise:share_keys",
        "hang:share_keys",
        "raise:input",
        "hang:input",
        "raise:unmask",
        "hang:unmask",
    ]
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 8),
    bits=st.sampled_from([16, 24, 32]),
    data=st.data(),
    dp=st.booleans(),
)
def test_masking_over_flower_equals_in_process_oracle(
    n: int, bits: int, data: st.DataObject, dp: bool
) -> None:
    t = n // 2 + 1
    k = data.draw(st.integers(0, n - t), label="faulty nodes")
    idx = data.draw(st.permutations(range(n)), label="order")[:k]
    faults = {i: data.draw(FAULTS, label=f"fault {i}") for i in idx}
    privacy = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=0.0, distributed=True)
    agg = fl.MaskingAggregator(bits=bits, dp=privacy if dp else None)
    grid = LocalGrid(n, faults)
    got, history = _run(agg, grid)
    (r,) = history.rounds
    gone_before_input = {grid.node_ids[i] for i, f in faults.items() if not f.endswith("unmask")}
    assert set(r.survivors) == set(grid.node_ids) - gone_before_input
    oracle_agg = fl.MaskingAggregator(bits=bits, dp=privacy if dp else None)
    g = flatten_arrays(global_model())
    want = _oracle(oracle_agg, fl.FedAvg(), g, grid.node_ids, list(r.survivors))
    assert torch.equal(got, want)  # exact on the quantized values
    assert not r.failed and r.upload_bytes > 0


@pytest.mark.parametrize(
    "make", [lambda: fl.FedAvg(server_lr=0.7), lambda: fl.FedAvgM(server_momentum=0.9)]
)
def test_any_fl_strategy_applies_the_mean(make: Callable[[], fl.Strategy]) -> None:
    grid = LocalGrid(6, {2: "raise:input"})
    got, history = _run(fl.MaskingAggregator(), grid, strategy=make())
    g = flatten_arrays(global_model())
    survivors = list(history.rounds[0].survivors)
    want = _oracle(fl.MaskingAggregator(), make(), g, grid.node_ids, survivors)
    assert torch.equal(got, want)


def test_plain_aggregator_over_flower_matches_plain_mean() -> None:
    grid = LocalGrid(5, {1: "hang:input"})
    got, history = _run(fl.PlainAggregator(), grid, poll_interval=None)  # send_and_receive
    g = flatten_arrays(global_model())
    want = _oracle(
        fl.PlainAggregator(), fl.FedAvg(), g, grid.node_ids, list(history.rounds[0].survivors)
    )
    assert len(history.rounds[0].survivors) == 4
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["raise", "hang"])
def test_dropout_during_training_reweights_the_survivors(kind: str) -> None:
    grid = LocalGrid(6, {0: f"{kind}:advertise_keys", 4: f"{kind}:advertise_keys"})
    got, history = _run(fl.MaskingAggregator(), grid)
    surv = list(history.rounds[0].survivors)
    assert surv == [grid.node_ids[i] for i in (1, 2, 3, 5)]
    g = flatten_arrays(global_model())
    # the survivors' sample-weighted mean, up to the quantizer's resolution
    d = _deltas(g, surv)
    w = torch.tensor([float(node_examples(n)) for n in surv])
    mean = sum(wi * di for wi, di in zip(w / w.sum(), d, strict=True))
    torch.testing.assert_close(got, g + mean, rtol=0, atol=1e-6)


@pytest.mark.parametrize("stage", list(Stage))
def test_too_many_dropouts_raise_naming_the_stage(stage: Stage) -> None:
    n = 6  # threshold 4: three faulty nodes at one stage are one too many
    faults = {i: f"raise:{stage.value}" for i in (0, 2, 5)}
    with pytest.raises(fl.InsufficientClientsError, match=stage.value):
        _run(fl.MaskingAggregator(), LocalGrid(n, faults))
    got, history = _run(fl.MaskingAggregator(), LocalGrid(n, faults), on_failure="record")
    (r,) = history.rounds
    assert r.failed and r.error is not None and stage.value in r.error
    assert torch.equal(got, flatten_arrays(global_model()))  # the model is unchanged


def test_mod_passes_other_messages_and_rejects_out_of_order_stages() -> None:
    grid = LocalGrid(3)
    nid = grid.node_ids[0]
    with server_task():
        plain = Message(RecordDict({"arrays": global_model()}), nid, "train")
        plain.metadata.__dict__["_message_id"] = "m1"
        reply = grid.app(plain, grid.contexts[nid])
        assert "metrics" in reply.content  # the user's train function answered
        early = Message(
            RecordDict(
                {RECORD: ConfigRecord({"stage": "unmask", "survivors": [0], "dropped": []})}
            ),
            nid,
            "train",
        )
        early.metadata.__dict__["_message_id"] = "m2"
        with pytest.raises(Exception, match="no secure-aggregation round"):
            grid.app(early, grid.contexts[nid])


def test_state_is_erased_after_the_round() -> None:
    grid = LocalGrid(4)
    _run(fl.MaskingAggregator(), grid)
    for ctx in grid.contexts.values():
        assert "fl.secagg.state" not in ctx.state and "fl.secagg.delta" not in ctx.state


def test_bad_arguments_are_named() -> None:
    with pytest.raises(fl.ConfigError, match="`aggregator`"):
        SecureAggregation("masking")  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="`num_rounds`"):
        SecureAggregation(fl.MaskingAggregator(), num_rounds=0)
    with pytest.raises(fl.ConfigError, match="`timeout`"):
        SecureAggregation(fl.MaskingAggregator(), timeout=-1.0)
    with pytest.raises(fl.ConfigError, match="`arrays`"), server_task():
        SecureAggregation(fl.MaskingAggregator())(LocalGrid(3), {"w": np.zeros(3)})  # type: ignore[arg-type]


def test_importing_fl_does_not_import_flower() -> None:
    code = "import sys, fl; assert not any(m.startswith('flwr') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=_env())


# ------------------------------------------------------------ the engines
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def _netns_prefix() -> list[str]:
    """Run a command in a fresh network namespace (loopback only), or skip."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.skip("needs `unshare` and `ip` to isolate the network")
    probe = subprocess.run(
        [unshare, "-rn", ip, "link", "set", "lo", "up"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    return [unshare, "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "netns"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_simulation_engine_ten_supernodes_survives_each_stage() -> None:
    """10 SuperNodes on Flower's simulation engine (Ray), in a loopback-only namespace."""
    cmd = [*_netns_prefix(), sys.executable, "-m", "tests.fl.flower_sim", "6"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    nodes, rounds, arrays = out["nodes"], out["rounds"], out["arrays"]
    assert len(nodes) == 10 and len(rounds) == 3
    # round 1: hang at SHARE_KEYS (node 1), raise at INPUT (node 2), hang at UNMASK (node 3)
    r1 = rounds[0]
    assert not r1["failed"] and len(r1["survivors"]) == 8
    g0, g1 = torch.tensor(arrays[0]), torch.tensor(arrays[1])
    want = _oracle(fl.MaskingAggregator(), fl.FedAvg(), g0, nodes, r1["survivors"])
    assert torch.equal(g1, want)
    # round 2: one node raises while training (stage 0): the other nine are averaged
    r2 = rounds[1]
    assert not r2["failed"] and len(r2["survivors"]) == 9
    g2 = torch.tensor(arrays[2])
    d = _deltas(g1, r2["survivors"])
    w = torch.tensor([float(node_examples(n)) for n in r2["survivors"]])
    mean = sum(wi * di for wi, di in zip(w / w.sum(), d, strict=True))
    torch.testing.assert_close(g2, g1 + mean, rtol=0, atol=1e-6)
    # round 3: five nodes fail at SHARE_KEYS: a failed round, the model unchanged
    r3 = rounds[2]
    assert r3["failed"] and "share_keys" in r3["error"]
    assert arrays[3] == arrays[2]


@pytest.mark.slow
@pytest.mark.timeout(560)
def test_deployment_engine_tls_survives_a_supernode_killed_mid_round() -> None:
    """1 SuperLink + 3 SuperNodes over TLS on 127.0.0.1; SuperNode 2 is SIGKILLed mid-round.

    SuperNode authentication is on: a SuperNode with an unregistered key and one
    without a key are refused; the three registered SuperNodes run the round.
    """
    if shutil.which("flower-superlink") is None or shutil.which("flwr") is None:
        pytest.skip("needs Flower's command-line tools")
    cmd = [*_netns_prefix(), sys.executable, "-m", "tests.fl.flower_deploy", "30"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=540, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    # the intruders are turned away (the SuperNode exits: "Failed to activate SuperNode",
    # "All SuperNodes must be registered via the CLI")
    assert out["intruders_exit"] == [1, 1], out["intruders_log"]
    assert all("could not establish a connection" in log for log in out["intruders_log"])
    assert out["killed_mid_round"] and out["finished"], out["logs"]
    (r,) = out["rounds"]
    assert not r["failed"], r["error"]
    assert sorted(r["selected"]) == sorted(out["registered"])  # the authenticated nodes only
    assert len(r["selected"]) == 3 and len(r["survivors"]) == 2
    g0, g1 = (torch.tensor(a) for a in out["arrays"])
    want = _oracle(fl.MaskingAggregator(), fl.FedAvg(), g0, sorted(r["selected"]), r["survivors"])
    assert torch.equal(g1, want)


class _TamperingGrid(LocalGrid):
    """Replaces node 1's SHARE_KEYS ciphertexts by ints (a malformed reply)."""

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for r in replies:
            rec = r.content.config_records.get(RECORD) if r.has_content() else None
            mine = r.metadata.src_node_id == self.node_ids[1]
            if rec is not None and rec.get("stage") == "share_keys" and mine:
                rec["cts"] = [1, 2, 3]
        return replies


def test_malformed_reply_is_a_dropout_not_trusted() -> None:
    grid = _TamperingGrid(5)
    got, history = _run(fl.MaskingAggregator(), grid)
    (r,) = history.rounds
    assert grid.node_ids[1] not in r.survivors and len(r.survivors) == 4
    g = flatten_arrays(global_model())
    assert torch.equal(
        got, _oracle(fl.MaskingAggregator(), fl.FedAvg(), g, grid.node_ids, list(r.survivors))
    )


def test_distributed_dp_noise_over_flower() -> None:
    dp = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=1.0, distributed=True)
    grid = LocalGrid(5)
    got, history = _run(fl.MaskingAggregator(dp=dp), grid)
    g = flatten_arrays(global_model())
    quiet = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=0.0, distributed=True)
    want = _oracle(fl.MaskingAggregator(dp=quiet), fl.FedAvg(), g, grid.node_ids, grid.node_ids)
    # each of 5 nodes adds N(0, (z C / m)^2 / t), t = 3: std of the noise on the mean 0.0129
    std = float((got - want).std())
    assert 0.006 < std < 0.03
    assert 0 < history.rounds[0].epsilon < float("inf")


def test_example_flower_app_masking_matches_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "flower_app"))
    from flower_app.client_app import app
    from flower_app.server_app import run

    cfg = {"bits": 32, "local-epochs": 1, "batch-size": 32, "lr": 0.05, "stage-timeout": 5.0}
    out = {}
    for mode in ("plain", "masking", "secret-sharing"):
        with server_task():
            out[mode] = run(
                LocalGrid(3, app=app), None, {**cfg, "aggregation": mode, "num-server-rounds": 1}
            )  # type: ignore[arg-type]
    assert out["masking"]["survivors"] == [3]
    assert abs(out["masking"]["accuracy"] - out["plain"]["accuracy"]) < 0.01
    assert out["masking"]["upload_bytes"][0] / 109_386 < 4.1
    assert abs(out["secret-sharing"]["accuracy"] - out["plain"]["accuracy"]) < 0.01

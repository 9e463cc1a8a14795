"""fl.flower with fl.SecretSharingAggregator: shares relayed as ciphertexts, vs the oracle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("flwr", reason="needs the `flower` extra")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fl  # noqa: E402
from fl.aggregators import Stage  # noqa: E402
from fl.flower import RECORD, SS_INPUT, SS_SUM, SecureAggregation, flatten_arrays  # noqa: E402
from fl.types import ClientUpdate  # noqa: E402
from tests.fl.flower_apps import LocalGrid, global_model, node_examples, server_task  # noqa: E402
from tests.fl.test_flower import ROOT, _deltas, _env, _netns_prefix  # noqa: E402


def _oracle(
    agg: fl.SecretSharingAggregator,
    g: torch.Tensor,
    trained: list[int],
    survivors: list[int],
) -> torch.Tensor:
    """The next model by the in-process aggregator over the nodes that trained.

    Nodes that trained but are not in ``survivors`` drop at INPUT (weighted, not summed).
    """
    ups = [
        ClientUpdate(c, d, node_examples(n))
        for c, (n, d) in enumerate(zip(trained, _deltas(g, trained), strict=True))
    ]
    gone = [c for c, n in enumerate(trained) if n not in survivors]
    res = agg.aggregate(ups, dropouts={Stage.INPUT: gone})
    assert [trained[c] for c in res.survivors] == sorted(survivors)
    return fl.FedAvg().apply(g, res.mean)


def _masking_oracle(
    agg: fl.MaskingAggregator, g: torch.Tensor, weighted: list[int], summed: list[int]
) -> torch.Tensor:
    ups = [
        ClientUpdate(c, d, node_examples(n))
        for c, (n, d) in enumerate(zip(weighted, _deltas(g, weighted), strict=True))
    ]
    gone = [c for c, n in enumerate(weighted) if n not in summed]
    return fl.FedAvg().apply(g, agg.aggregate(ups, dropouts={Stage.INPUT: gone}).mean)


def _run(
    agg: fl.Aggregator, grid: LocalGrid, **kw: object
) -> tuple[torch.Tensor, fl.History, SecureAggregation]:
    kw.setdefault("timeout", 0.3)
    wf = SecureAggregation(agg, fl.FedAvg(), **kw)  # type: ignore[arg-type]
    with server_task():
        arrays, history = wf(grid, global_model())
    return flatten_arrays(arrays), history, wf


FAULTS = st.sampled_from(
    [
        "raise:advertise_keys",
        "hang:advertise_keys",
        "raise:input",
        "hang:input",
        "raise:sum",
        "hang:sum",
    ]
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 7),
    parties=st.sampled_from([2, 3]),
    frac_bits=st.sampled_from([12, 16, 20]),
    dp=st.booleans(),
    data=st.data(),
)
def test_secret_sharing_over_flower_equals_in_process_oracle(
    n: int, parties: int, frac_bits: int, dp: bool, data: st.DataObject
) -> None:
    k = data.draw(st.integers(0, n - parties), label="faulty nodes")
    idx = data.draw(st.permutations(range(n)), label="order")[:k]
    faults = {i: data.draw(FAULTS, label=f"fault {i}") for i in idx}
    privacy = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=0.0)

    def make() -> fl.SecretSharingAggregator:
        return fl.SecretSharingAggregator(parties, frac_bits=frac_bits, dp=privacy if dp else None)

    grid = LocalGrid(n, faults)
    ids = grid.node_ids
    failed_sum = {ids[i] for i, f in faults.items() if f.endswith(":sum")}
    wf = SecureAggregation(make(), fl.FedAvg(), timeout=0.3, on_failure="record")
    with server_task():
        arrays, history = wf(grid, global_model())
    got = flatten_arrays(arrays)
    (r,) = history.rounds
    (chosen,) = wf.parties
    trained = [ids[i] for i in range(n) if not faults.get(i, "").endswith("advertise_keys")]
    assert set(chosen) <= set(trained) and len(chosen) == parties
    g = flatten_arrays(global_model())
    if failed_sum & set(chosen):  # a party that does not return its sum: the round fails
        assert r.failed and r.error is not None and "`sum`" in r.error
        assert torch.equal(got, g)
        return
    gone_at_input = {ids[i] for i, f in faults.items() if f.endswith(":input")}
    assert set(r.survivors) == set(trained) - gone_at_input
    want = _oracle(make(), g, trained, list(r.survivors))
    assert torch.equal(got, want)  # exact on the fixed-point values
    assert not r.failed and r.upload_bytes > 0


def test_a_party_that_failed_its_own_input_still_sums() -> None:
    """Every node raises at INPUT except one: the parties still serve (their role is separate)."""
    grid = LocalGrid(4, {0: "raise:input", 1: "raise:input", 2: "raise:input"})
    got, history, wf = _run(fl.SecretSharingAggregator(3), grid)
    (r,) = history.rounds
    assert r.survivors == (grid.node_ids[3],) and len(wf.parties[0]) == 3
    g = flatten_arrays(global_model())
    want = _oracle(fl.SecretSharingAggregator(3), g, grid.node_ids, [grid.node_ids[3]])
    assert torch.equal(got, want)


def test_too_few_nodes_for_the_parties_and_no_inputs_raise_naming_the_stage() -> None:
    faults = {i: "raise:advertise_keys" for i in range(3)}
    with pytest.raises(fl.InsufficientClientsError, match="`train`"):
        _run(fl.SecretSharingAggregator(2), LocalGrid(4, faults))
    with pytest.raises(fl.InsufficientClientsError, match="`input`"):
        _run(fl.SecretSharingAggregator(2), LocalGrid(3, {i: "hang:input" for i in range(3)}))
    with pytest.raises(fl.InsufficientClientsError, match="`sum`"):
        _run(fl.SecretSharingAggregator(2), LocalGrid(3, {i: "raise:sum" for i in range(3)}))


class _RelayTamperingGrid(LocalGrid):
    """The server's relay changes one byte of a share on its way to the last party."""

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        for m in messages:
            arrays = m.content.array_records.get(RECORD + ".arrays")
            rec = m.content.config_records.get(RECORD)
            if rec is not None and rec.get("stage") == SS_SUM and arrays is not None:
                key = next(iter(arrays))
                ct = arrays[key].numpy().copy()
                ct[3] ^= 1
                arrays[key] = type(arrays[key])(ct)
        return super().send_and_receive(messages, timeout=timeout)


def test_a_changed_ciphertext_fails_authentication_not_a_wrong_sum() -> None:
    with pytest.raises(fl.InsufficientClientsError, match="`sum`"):
        _run(fl.SecretSharingAggregator(2), _RelayTamperingGrid(4))


class _SpyGrid(LocalGrid):
    """Keeps every message the server sends and receives."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.seen: list[tuple[str, object]] = []

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for m in [*messages, *replies]:
            if m.has_content() and RECORD in m.content.config_records:
                self.seen.append((str(m.content.config_records[RECORD]["stage"]), m.content))
        return replies


def test_the_server_relays_ciphertexts_of_uniform_shares_only() -> None:
    grid = _SpyGrid(5)
    _run(fl.SecretSharingAggregator(2), grid)
    g = flatten_arrays(global_model())
    deltas = _deltas(g, grid.node_ids)
    encoded = [
        torch.round(d.to(torch.float64) * 2**16).to(torch.int64).numpy().tobytes() for d in deltas
    ]
    input_replies = [c for s, c in grid.seen if s == SS_INPUT and "eph" in c[RECORD]]
    assert len(input_replies) == 5
    for content in input_replies:
        share = content[RECORD + ".arrays"]["share"].numpy().tobytes()
        assert len(share) == 8 * g.numel() + 16  # one Z_2^64 element per parameter + the tag
        assert not any(e[:64] in share for e in encoded)
        seeds = content[RECORD]["cts"]
        assert len(seeds) == 1 and len(seeds[0]) == 32  # 16-byte seed + tag for the other party
    # what the parties return is uniformly random on its own: no party sum equals the sum
    sums = [
        c
        for s, c in grid.seen
        if s == SS_SUM and RECORD + ".arrays" in c and "y" in c[RECORD + ".arrays"]
    ]
    assert len(sums) == 2
    total = sum((np.asarray(c[RECORD + ".arrays"]["y"].numpy()) for c in sums), np.uint64(0))
    assert all(not np.array_equal(c[RECORD + ".arrays"]["y"].numpy(), total) for c in sums)


def test_state_is_erased_after_the_round() -> None:
    grid = LocalGrid(4)
    _run(fl.SecretSharingAggregator(3), grid)
    for ctx in grid.contexts.values():
        assert "fl.secagg.state" not in ctx.state and "fl.secagg.delta" not in ctx.state


def test_central_dp_noise_and_accounting() -> None:
    dp = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=1.0)
    got, history, _ = _run(fl.SecretSharingAggregator(2, dp=dp), LocalGrid(5))
    g = flatten_arrays(global_model())
    quiet = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=0.0)
    ids = LocalGrid(5).node_ids
    want = _oracle(fl.SecretSharingAggregator(2, dp=quiet), g, ids, ids)
    std = float((got - want).std())  # z C / m = 0.01 on the mean
    assert 0.005 < std < 0.02
    assert 0 < history.rounds[0].epsilon < float("inf")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_simulation_engine_five_supernodes_secret_sharing() -> None:
    """5 SuperNodes on Flower's simulation engine (Ray), loopback-only namespace.

    Secret sharing for three rounds, then masking with ``reuse_keys=True`` for two.
    """
    cmd = [*_netns_prefix(), sys.executable, "-m", "tests.fl.flower_sim", "6", "secret-sharing"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    nodes, rounds, arrays = out["nodes"], out["rounds"], out["arrays"]
    assert len(nodes) == 5 and len(rounds) == 3
    # round 1: one node raises at INPUT: the other four are summed, all five weighted
    r1 = rounds[0]
    assert not r1["failed"] and len(r1["survivors"]) == 4
    g0, g1 = torch.tensor(arrays[0]), torch.tensor(arrays[1])
    assert torch.equal(g1, _oracle(fl.SecretSharingAggregator(3), g0, nodes, r1["survivors"]))
    # round 2: one node raises while training: the other four, weighted among themselves
    r2 = rounds[1]
    assert not r2["failed"] and len(r2["survivors"]) == 4
    g2 = torch.tensor(arrays[2])
    want = _oracle(fl.SecretSharingAggregator(3), g1, r2["survivors"], r2["survivors"])
    assert torch.equal(g2, want)
    # round 3: every node fails at the party stage: a failed round, the model unchanged
    r3 = rounds[2]
    assert r3["failed"] and "`sum`" in r3["error"]
    assert arrays[3] == arrays[2]
    # then masking with reuse_keys=True on the same engine: a keys round, a fast one
    f0, f1, f2 = (torch.tensor(a) for a in out["fast_arrays"])
    s1, s2 = out["fast_stages"]
    assert s1 == ["fast_input", "fast_keys", "fast_unmask"] and s2 == ["fast_train", "fast_unmask"]
    q1, q2 = out["fast_rounds"]
    assert len(q1["survivors"]) == 4  # partition 2 raised at INPUT
    assert len(q2["survivors"]) == 4  # partition 4 raised while training (weighted, not summed)
    assert q1["survivors"] != q2["survivors"]
    agg = fl.MaskingAggregator
    assert torch.equal(f1, _masking_oracle(agg(), f0, nodes, q1["survivors"]))
    assert torch.equal(f2, _masking_oracle(agg(), f1, nodes, q2["survivors"]))

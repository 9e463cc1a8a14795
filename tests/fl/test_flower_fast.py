"""fl.flower with reuse_keys=True: masking in two exchanges on long-term keys, vs the oracle."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr", reason="needs the `flower` extra")

import torch  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fl  # noqa: E402
from fl.aggregators import Stage  # noqa: E402
from fl.flower import SecureAggregation, flatten_arrays  # noqa: E402
from fl.types import ClientUpdate  # noqa: E402
from tests.fl.flower_apps import LocalGrid, global_model, node_examples, server_task  # noqa: E402
from tests.fl.test_flower import _deltas  # noqa: E402


def _oracle(agg: fl.MaskingAggregator, g: torch.Tensor, weighted: list[int], summed: list[int]):
    """The next model by the in-process aggregator: ``weighted`` nodes, the others drop at INPUT."""
    ups = [
        ClientUpdate(c, d, node_examples(n))
        for c, (n, d) in enumerate(zip(weighted, _deltas(g, weighted), strict=True))
    ]
    gone = [c for c, n in enumerate(weighted) if n not in summed]
    res = agg.aggregate(ups, dropouts={Stage.INPUT: gone})
    assert [weighted[c] for c in res.survivors] == sorted(summed)
    return fl.FedAvg().apply(g, res.mean)


def _rounds(
    wf: SecureAggregation, grid: LocalGrid, n: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``n`` rounds one by one: (model before, model after) of each."""
    arrays: ArrayRecord = global_model()
    out = []
    with server_task():
        for _ in range(n):
            before = flatten_arrays(arrays)
            arrays, _ = wf(grid, arrays)
            out.append((before, flatten_arrays(arrays)))
    return out


FAULT = st.sampled_from(["raise", "hang"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 7),
    bits=st.sampled_from([16, 24, 32]),
    dp=st.booleans(),
    data=st.data(),
)
def test_two_exchange_rounds_equal_the_in_process_oracle(
    n: int, bits: int, dp: bool, data: st.DataObject
) -> None:
    t = n // 2 + 1
    order = data.draw(st.permutations(range(n)), label="order")
    k_train = data.draw(st.integers(0, n - 1), label="fail while training")
    k_unmask = data.draw(st.integers(0, n - k_train), label="fail at unmask")
    faults = {i: f"{data.draw(FAULT)}:advertise_keys@2" for i in order[:k_train]}
    faults |= {i: f"{data.draw(FAULT)}:unmask@2" for i in order[k_train : k_train + k_unmask]}
    privacy = fl.DifferentialPrivacy(clip_norm=0.05, noise_multiplier=0.0, distributed=True)

    def make() -> fl.MaskingAggregator:
        return fl.MaskingAggregator(bits=bits, dp=privacy if dp else None)

    grid = LocalGrid(n, faults)
    ids = grid.node_ids
    wf = SecureAggregation(make(), timeout=0.3, reuse_keys=True, on_failure="record")
    (g0, g1), (g1_, g2) = _rounds(wf, grid, 2)
    assert torch.equal(g1, g1_)
    r1, r2 = wf.history.rounds
    # round 1: training + long-term keys, masked input, unmask
    assert set(wf.stage_seconds[0]) == {"fast_keys", "fast_input", "fast_unmask"}
    assert set(wf.stage_seconds[1]) <= {"fast_train", "fast_unmask"}  # round 2: two exchanges
    assert "fast_train" in wf.stage_seconds[1]
    assert torch.equal(g1, _oracle(make(), g0, ids, ids))
    u2 = [ids[i] for i in order[k_train:]]
    if len(u2) < t:
        assert r2.failed and "`input`" in str(r2.error) and torch.equal(g2, g1)
    elif len(u2) - k_unmask < t:
        assert r2.failed and "`unmask`" in str(r2.error) and torch.equal(g2, g1)
    elif k_train and k_unmask:  # a survivor gone with the only copy of a dropped pair's key
        assert r2.failed and "dropped node" in str(r2.error) and torch.equal(g2, g1)
    else:
        assert not r2.failed and sorted(r2.survivors) == sorted(u2)
        # fast rounds weight by the counts of the previous round: a node that fails while
        # training is weighted but not summed (the oracle's dropout at INPUT)
        assert torch.equal(g2, _oracle(make(), g1, ids, u2))


def test_a_node_that_lost_its_keys_drops_once_then_rejoins() -> None:
    grid = LocalGrid(5)
    ids = grid.node_ids
    wf = SecureAggregation(fl.MaskingAggregator(), timeout=0.3, reuse_keys=True)
    arrays = global_model()
    models = [flatten_arrays(arrays)]
    with server_task():
        for r in range(4):
            if r == 1:
                grid.contexts[ids[2]].state.clear()  # node 2 restarts: its keys are gone
            arrays, _ = wf(grid, arrays)
            models.append(flatten_arrays(arrays))
    # keys, fast (node 2 cannot take part), keys (node 2 advertises new keys), fast
    assert ["fast_keys" in s for s in wf.stage_seconds] == [True, False, True, False]
    survivors = [sorted(r.survivors) for r in wf.history.rounds]
    assert survivors == [ids, [i for i in ids if i != ids[2]], ids, ids]
    agg = fl.MaskingAggregator
    assert torch.equal(models[2], _oracle(agg(), models[1], ids, survivors[1]))
    assert torch.equal(models[3], _oracle(agg(), models[2], ids, ids))
    assert torch.equal(models[4], _oracle(agg(), models[3], ids, ids))


def test_reuse_keys_needs_masking() -> None:
    with pytest.raises(fl.ConfigError, match="`reuse_keys`"):
        SecureAggregation(fl.PlainAggregator(), reuse_keys=True)
    with pytest.raises(fl.ConfigError, match="`reuse_keys`"):
        SecureAggregation(fl.MaskingAggregator(), reuse_keys=1)  # type: ignore[arg-type]


def test_keys_stay_but_round_state_is_erased() -> None:
    grid = LocalGrid(4)
    wf = SecureAggregation(fl.MaskingAggregator(), timeout=0.3, reuse_keys=True)
    _rounds(wf, grid, 2)
    for ctx in grid.contexts.values():
        assert "fl.secagg.state" not in ctx.state and "fl.secagg.delta" not in ctx.state
        assert "fl.secagg.keys" in ctx.state  # the long-term key pairs, for the next round


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 6), data=st.data())
def test_first_round_in_three_exchanges_survives_dropouts(n: int, data: st.DataObject) -> None:
    """Round 1 (keys unknown): a node failing in training is left out, one failing its input
    is weighted but not summed (the in-process aggregator's dropouts)."""
    order = data.draw(st.permutations(range(n)), label="order")
    k_train = data.draw(st.integers(0, n - 1), label="fail while training")
    k_input = data.draw(st.integers(0, n - k_train), label="fail at input")
    faults = {i: f"{data.draw(FAULT)}:advertise_keys@1" for i in order[:k_train]}
    faults |= {i: f"{data.draw(FAULT)}:input@1" for i in order[k_train : k_train + k_input]}
    grid = LocalGrid(n, faults)
    ids = grid.node_ids
    wf = SecureAggregation(
        fl.MaskingAggregator(), timeout=0.3, reuse_keys=True, on_failure="record"
    )
    ((g0, g1),) = _rounds(wf, grid, 1)
    (r1,) = wf.history.rounds
    trained = sorted(ids[i] for i in order[k_train:])
    summed = sorted(ids[i] for i in order[k_train + k_input :])
    t = len(trained) // 2 + 1
    if len(summed) < t:
        assert r1.failed and torch.equal(g1, g0)
    else:
        assert not r1.failed and sorted(r1.survivors) == summed
        assert torch.equal(g1, _oracle(fl.MaskingAggregator(), g0, trained, summed))


def test_long_term_dh_secrets_are_cached_per_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from flwr.app import Context, RecordDict

    from fl.flower import records, reuse_keys

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    c_sk, s_sk, _ = reuse_keys._long_term_keys(ctx, create=True)
    peers = {v: (X25519PrivateKey.generate(), X25519PrivateKey.generate()) for v in range(5)}
    roster = {v: (reuse_keys._public(c), reuse_keys._public(s)) for v, (c, s) in peers.items()}
    got = reuse_keys._peer_secrets(ctx, c_sk, s_sk, roster)
    for v, (c, s) in peers.items():  # DH is symmetric: the peer computes the same secrets
        assert got[v] == (c.exchange(c_sk.public_key()), s.exchange(s_sk.public_key()))
    assert reuse_keys._peer_secrets(ctx, c_sk, s_sk, roster) == got  # served from the cache
    monkeypatch.setattr(reuse_keys, "_PEER_CACHE", 3)  # read by _peer_secrets
    fresh = (X25519PrivateKey.generate(), X25519PrivateKey.generate())
    reuse_keys._peer_secrets(
        ctx, c_sk, s_sk, {9: (reuse_keys._public(fresh[0]), reuse_keys._public(fresh[1]))}
    )
    blob = ctx.state.config_records[records._LONG_TERM]["peers"]
    assert isinstance(blob, bytes) and len(blob) == 3 * 128  # the newest 3 peers only
    ctx.state.config_records[records._LONG_TERM]["peers"] = b"junk"  # a corrupt cache is ignored
    assert reuse_keys._peer_secrets(ctx, c_sk, s_sk, roster) == got

"""fl.evaluation: federated evaluation against hand computation; secure path equals plain."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fl
from fl.evaluation import aggregate_metrics, metrics_vector, secure_sum


@st.composite
def _client_metrics(draw: st.DrawFn, classification: bool = True) -> list[fl.ClientMetrics]:
    k = draw(st.integers(1, 6))
    ids = draw(st.lists(st.integers(0, 50), min_size=k, max_size=k, unique=True))
    out = []
    for cid in ids:
        n = draw(st.integers(1, 500))
        correct = draw(st.integers(0, n))
        loss = draw(st.floats(0.0, 20.0, allow_nan=False))
        out.append(fl.ClientMetrics(cid, n, loss, correct / n if classification else math.nan))
    return out


def _hand(metrics: list[fl.ClientMetrics]) -> tuple[float, float, int]:
    n = sum(m.num_examples for m in metrics)
    loss = sum(m.loss * m.num_examples for m in metrics) / n
    if any(math.isnan(m.accuracy) for m in metrics):
        return loss, math.nan, n
    correct = sum(round(m.accuracy * m.num_examples) for m in metrics)
    return loss, correct / n, n


@given(_client_metrics())
def test_plain_weighted_metrics_equal_hand_computed(metrics: list[fl.ClientMetrics]) -> None:
    fm = aggregate_metrics(metrics)
    loss, acc, n = _hand(metrics)
    assert fm.num_examples == n
    assert fm.loss == pytest.approx(loss, rel=1e-12)
    assert fm.accuracy == pytest.approx(acc, rel=1e-12)
    assert fm.clients == tuple(sorted(m.client_id for m in metrics))
    assert fm.per_client == tuple(sorted(metrics, key=lambda m: m.client_id))


@given(_client_metrics(classification=False))
def test_regression_metrics_have_no_accuracy(metrics: list[fl.ClientMetrics]) -> None:
    fm = aggregate_metrics(metrics)
    assert math.isnan(fm.accuracy)
    assert fm.loss == pytest.approx(_hand(metrics)[0], rel=1e-12)
    assert metrics_vector(metrics[0])[1:3].tolist() == [0.0, 0.0]


AGGREGATORS = {
    "secret-sharing-2": lambda: fl.SecretSharingAggregator(2, seed=1),
    "secret-sharing-3": lambda: fl.SecretSharingAggregator(3, seed=2),
    "masking": lambda: fl.MaskingAggregator(),
    "masking-k2": lambda: fl.MaskingAggregator(neighbours=2),
    "secret-sharing+dp": lambda: fl.SecretSharingAggregator(
        2, dp=fl.DifferentialPrivacy(clip_norm=0.1, noise_multiplier=5.0, seed=0)
    ),
    "masking+distributed-dp": lambda: fl.MaskingAggregator(
        dp=fl.DifferentialPrivacy(clip_norm=0.1, noise_multiplier=5.0, distributed=True, seed=0)
    ),
}


@pytest.mark.parametrize("kind", sorted(AGGREGATORS))
@settings(max_examples=5)
@given(metrics=_client_metrics())
def test_secure_path_equals_plain(kind: str, metrics: list[fl.ClientMetrics]) -> None:
    aggregator = AGGREGATORS[kind]()
    plain = aggregate_metrics(metrics)
    secure = aggregate_metrics(metrics, aggregator=aggregator, round_index=3)
    # counts are exact; the loss sum carries at most the fixed-point error of a few clients
    assert secure.num_examples == plain.num_examples
    assert secure.accuracy == plain.accuracy
    assert secure.loss == pytest.approx(plain.loss, abs=1e-3)
    assert secure.clients == plain.clients
    assert secure.per_client == ()  # the server learns only the totals
    # the training aggregator is untouched: same DP, range and privacy spent
    if aggregator.dp is not None:
        assert math.isnan(aggregator.epsilon) or aggregator.epsilon == 0.0
    if isinstance(aggregator, fl.MaskingAggregator):
        assert aggregator.clip_range == 1.0


def test_metrics_aggregator_is_a_dp_free_copy() -> None:
    dp = fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0)
    masking = fl.MaskingAggregator(clip_range=2.0, dp=dp, threshold=2)
    copy = masking.metrics_aggregator(value_bound=1e4)
    assert copy is not masking and copy.dp is None and copy.clip_range == 1e4
    assert copy.threshold == 2 and masking.dp is dp and masking.clip_range == 2.0
    assert masking.metrics_aggregator(value_bound=0.5).clip_range == 2.0
    with pytest.raises(fl.ConfigError, match="`value_bound`"):
        masking.metrics_aggregator(value_bound=math.inf)


def test_secure_sum_sums_vectors_exactly_enough() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = {cid: torch.randint(0, 1000, (4,), generator=g).double() for cid in (2, 5, 9)}
    total, survivors = secure_sum(fl.SecretSharingAggregator(2), vectors)
    assert survivors == (2, 5, 9)
    assert torch.allclose(total, sum(vectors.values()), atol=1e-2)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="same length"):
        secure_sum(fl.PlainAggregator(), {0: torch.zeros(2), 1: torch.zeros(3)})


# ---------------------------------------------------------------- through the server
def _federation(
    n_clients: int = 6,
) -> tuple[list[fl.Client], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    y = (x @ torch.randn(5, 3, generator=g)).argmax(dim=1)
    part = fl.partition(y[:300], n_clients, "dirichlet", alpha=1.0, seed=0, min_size=10)
    return fl.make_clients(part, x[:300], y[:300], test_fraction=0.3, seed=1), (x[300:], y[300:])


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def test_server_records_hand_computed_federated_metrics() -> None:
    clients, test = _federation()
    fe = fl.FederatedEvaluation(fraction_evaluate=0.5, evaluate_every=2)
    server = fl.Server(
        _net(),
        clients,
        strategy=fl.FedAvg(lr=0.1, batch_size=32),
        test_data=test,
        federated_evaluation=fe,
    )
    for r in range(1, 5):
        result = server.run_round()
        if r % 2:
            assert result.eval_clients == () and math.isnan(result.eval_accuracy)
            continue
        assert len(result.eval_clients) == 3  # half of 6 clients
        hand = []
        for cid in result.eval_clients:
            c = clients[cid]
            assert c.test_data is not None
            loss, acc = fl.evaluate_model(server.model, *c.test_data)
            hand.append(fl.ClientMetrics(cid, int(c.test_data[1].shape[0]), loss, acc))
        loss, acc, n = _hand(hand)
        assert result.eval_examples == n
        assert result.eval_loss == pytest.approx(loss, rel=1e-6)
        assert result.eval_accuracy == pytest.approx(acc, rel=1e-12)
        assert result.client_metrics == tuple(hand)
    h = server.history
    assert [math.isnan(a) for a in h.federated_accuracy] == [True, False, True, False]
    per_client = h.per_client()
    assert sum(len(v) for v in per_client.values()) == 6
    assert all(r in (2, 4) for pts in per_client.values() for r, _ in pts)
    assert set(h.per_client("loss")) == set(per_client)
    assert "fed_acc" in h.table()
    # evaluation does not perturb training: same model as a run without it
    plain = fl.Server(_net(), clients, strategy=fl.FedAvg(lr=0.1, batch_size=32), test_data=test)
    plain.run(4, progress=False)
    assert torch.equal(plain.global_vector, server.global_vector)
    assert "fed_acc" not in plain.history.table()


@pytest.mark.parametrize(
    "aggregator",
    [lambda: fl.SecretSharingAggregator(2, seed=4), lambda: fl.MaskingAggregator(clip_range=2.0)],
    ids=["secret-sharing", "masking"],
)
def test_secure_server_evaluation_equals_plain(aggregator: object) -> None:
    clients, test = _federation()
    histories = {}
    for secure in (False, True):
        agg = aggregator()  # type: ignore[operator]
        histories[secure] = fl.run_simulation(
            _net(),
            clients,
            num_rounds=2,
            strategy=fl.FedAvg(lr=0.1, batch_size=32, fraction_fit=0.5),
            aggregator=agg,
            test_data=test,
            federated_evaluation=fl.FederatedEvaluation(fraction_evaluate=0.7, secure=secure),
        )
    for a, b in zip(histories[False], histories[True], strict=True):
        assert a.eval_clients == b.eval_clients and len(a.eval_clients) == 4
        assert a.eval_examples == b.eval_examples
        assert a.eval_accuracy == pytest.approx(b.eval_accuracy, abs=1e-6)
        assert a.eval_loss == pytest.approx(b.eval_loss, abs=1e-4)
        assert len(a.client_metrics) == 4 and b.client_metrics == ()
    assert histories[True].per_client() == {}


def test_failed_secure_evaluation_is_recorded_or_raised() -> None:
    clients, test = _federation()
    fe = fl.FederatedEvaluation(secure=True, value_bound=1.0)  # counts exceed the bound

    def server(policy: fl.FailurePolicy) -> fl.Server:
        return fl.Server(
            _net(),
            clients,
            aggregator=fl.MaskingAggregator(),
            federated_evaluation=fe,
            on_failure=policy,
        )

    strict = server(fl.FailurePolicy.RAISE)
    with pytest.raises(fl.QuantizationRangeError):
        strict.run(1, progress=False)
    # the training round completed and is recorded before the evaluation error is raised
    assert strict.round == 1 and "QuantizationRangeError" in (strict.history[0].eval_error or "")
    h = server(fl.FailurePolicy.RECORD).run(1, progress=False)
    assert not h[0].failed and "QuantizationRangeError" in (h[0].eval_error or "")
    assert math.isnan(h[0].eval_accuracy) and "evaluation failed" in h.table()


def test_checkpoint_keeps_federated_metrics(tmp_path: Path) -> None:
    clients, test = _federation()

    def server() -> fl.Server:
        return fl.Server(
            _net(),
            clients,
            strategy=fl.FedAvg(lr=0.1, batch_size=32),
            federated_evaluation=fl.FederatedEvaluation(fraction_evaluate=0.5),
        )

    full = server()
    full.run(3, progress=False)
    server().run(2, progress=False, checkpoint=tmp_path / "run.pt")
    resumed = server()
    h = resumed.run(3, progress=False, checkpoint=tmp_path / "run.pt")

    def records(history: fl.History) -> list[dict[str, object]]:
        return [{k: v for k, v in d.items() if k != "seconds"} for d in history.to_dicts()]

    # per-client records survive the round trip (repr: NaN == NaN)
    assert repr(records(h)) == repr(records(full.history))
    assert all(isinstance(m, fl.ClientMetrics) for r in h for m in r.client_metrics)
    assert sum(len(r.client_metrics) for r in h) == 9


def test_plot_shows_global_and_per_client(tmp_path: Path) -> None:
    clients, test = _federation()
    h = fl.run_simulation(
        _net(),
        clients,
        num_rounds=2,
        test_data=test,
        federated_evaluation=fl.FederatedEvaluation(),
    )
    out = fl.plot_histories({"fedavg": h}, tmp_path / "h.png")
    assert out.stat().st_size > 1000
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[1] == 1500  # three panels of 5 in at 100 dpi
    with pytest.raises(fl.ConfigError, match="`metric`"):
        h.per_client("f1")


def test_make_clients_holds_out_a_test_split() -> None:
    y = torch.arange(100) % 4
    x = torch.arange(100, dtype=torch.float32)[:, None]
    part = fl.partition(y, 4, "iid", seed=0)
    clients = fl.make_clients(part, x, y, test_fraction=0.2, seed=3)
    for c, ix in zip(clients, part.indices, strict=True):
        assert c.test_data is not None
        rows = torch.cat([c.features[:, 0], c.test_data[0][:, 0]]).long().sort().values
        assert torch.equal(rows, ix)  # train + test = the client's rows, disjoint
        assert c.test_data[1].numel() == 5
    again = fl.make_clients(part, x, y, test_fraction=0.2, seed=3)
    assert torch.equal(again[0].test_data[0], clients[0].test_data[0])  # type: ignore[index]
    tiny = fl.make_clients(fl.partition(y[:2], 2, "iid"), x[:2], y[:2], test_fraction=0.5)
    assert all(c.test_data is None and c.num_examples == 1 for c in tiny)
    with pytest.raises(fl.ConfigError, match="`test_fraction`"):
        fl.make_clients(part, x, y, test_fraction=1.0)


def test_evaluation_config_errors() -> None:
    for bad in (
        {"fraction_evaluate": 0.0},
        {"fraction_evaluate": 1.5},
        {"min_evaluate_clients": 0},
        {"evaluate_every": 1.5},
        {"secure": 1},
        {"value_bound": -1.0},
    ):
        with pytest.raises(fl.ConfigError, match=f"`{next(iter(bad))}`"):
            fl.FederatedEvaluation(**bad)  # type: ignore[arg-type]
    clients, _ = _federation()
    with pytest.raises(fl.ConfigError, match="`federated_evaluation`"):
        fl.Server(_net(), clients, federated_evaluation=0.5)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="no `federated_evaluation`"):
        fl.Server(_net(), clients).evaluate_clients(1)
    with pytest.raises(fl.ConfigError, match="at least one"):
        aggregate_metrics([])
    m = fl.ClientMetrics(0, 1, 0.0, 1.0)
    with pytest.raises(fl.ConfigError, match="unique"):
        aggregate_metrics([m, m])
    x = torch.zeros(3, 2)
    with pytest.raises(fl.ConfigError, match="`test_data`"):
        fl.Client(0, x, torch.zeros(3), test_data=(x, torch.zeros(2)))

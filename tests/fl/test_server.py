"""Server loop: FedAvg/FedProx/FedAvgM against hand computation, history, checkpoints."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fl
from fl.aggregators import Stage


def _linear_clients() -> list[fl.Client]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate((4, 6, 10)):
        x = torch.randn(n, 2, generator=g)
        out.append(
            fl.Client(i, x, x @ torch.tensor([[1.0], [-2.0]]), loss_fn=nn.functional.mse_loss)
        )
    return out


def _model() -> nn.Module:
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.5, 0.5]]))
    return m


def _hand_local(
    w0: torch.Tensor, c: fl.Client, lr: float, epochs: int, mu: float = 0.0
) -> torch.Tensor:
    """Full-batch gradient descent on the MSE, written out by hand."""
    w = w0.clone()
    x, y = c.features, c.labels[:, 0]
    for _ in range(epochs):
        grad = 2 * x.T @ (x @ w - y) / x.shape[0] + mu * (w - w0)
        w = w - lr * grad
    return w


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_one_round_equals_hand_computed_fedavg_and_fedprox(mu: float) -> None:
    clients = _linear_clients()
    lr, epochs = 0.1, 3
    strategy = (
        fl.FedProx(mu=mu, lr=lr, epochs=epochs, batch_size=100)
        if mu
        else fl.FedAvg(lr=lr, epochs=epochs, batch_size=100)
    )
    model = _model()
    server = fl.Server(model, clients, strategy=strategy, loss_fn=nn.functional.mse_loss)
    server.run_round()
    w0 = torch.tensor([0.5, 0.5])
    locals_ = [_hand_local(w0, c, lr, epochs, mu) for c in clients]
    expected = sum(w * c.num_examples for w, c in zip(locals_, clients, strict=True)) / 20
    assert torch.allclose(model.weight.detach()[0], expected, atol=1e-6)
    assert server.history[0].survivors == (0, 1, 2)


def test_fedavgm_applies_server_momentum() -> None:
    s = fl.FedAvgM(server_momentum=0.5, server_lr=2.0)
    w = torch.zeros(2)
    d = torch.tensor([1.0, -1.0])
    w = s.apply(w, d)  # v = d
    w = s.apply(w, d)  # v = 0.5 d + d
    assert torch.allclose(w, 2.0 * d + 2.0 * 1.5 * d)
    state = s.state_dict()
    t = fl.FedAvgM(server_momentum=0.5, server_lr=2.0)
    t.load_state_dict(state)
    assert torch.equal(t.velocity, s.velocity)  # type: ignore[arg-type]


def test_sampling_fraction_and_determinism() -> None:
    s = fl.FedAvg(fraction_fit=0.3)
    ids = list(range(10))
    a = s.sample(1, ids, torch.Generator().manual_seed(5))
    b = s.sample(1, ids, torch.Generator().manual_seed(5))
    assert a == b and len(a) == 3 and a == sorted(a)


def _mnist_like() -> tuple[list[fl.Client], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    y = (x @ torch.randn(8, 4, generator=g)).argmax(dim=1)
    part = fl.partition(y[:300], 6, "dirichlet", alpha=1.0, seed=0)
    return fl.make_clients(part, x[:300], y[:300]), (x[300:], y[300:])


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))


def _server(seed: int = 7) -> fl.Server:
    clients, test = _mnist_like()
    dp = fl.DifferentialPrivacy(clip_norm=5.0, noise_multiplier=0.3, seed=1)
    return fl.Server(
        _net(),
        clients,
        strategy=fl.FedAvgM(fraction_fit=0.5, lr=0.1, batch_size=8, server_momentum=0.5),
        aggregator=fl.MaskingAggregator(clip_range=2.0, dp=dp),
        test_data=test,
        seed=seed,
        dropout=fl.DropoutModel(rate=0.2, stage=Stage.INPUT),
        on_failure=fl.FailurePolicy.RECORD,
    )


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    full = _server()
    full.run(4, progress=False)
    ckpt = tmp_path / "run.pt"
    first = _server()
    first.run(2, progress=False, checkpoint=ckpt)
    del first  # "interrupted"
    resumed = _server()
    history = resumed.run(4, progress=False, checkpoint=ckpt)  # loads round 2, runs 3 and 4
    assert resumed.round == 4 and len(history) == 4
    assert torch.equal(resumed.global_vector, full.global_vector)
    for a, b in zip(history, full.history, strict=True):
        assert (a.selected, a.survivors, a.test_loss, a.epsilon) == (
            b.selected,
            b.survivors,
            b.test_loss,
            b.epsilon,
        )
    with pytest.raises(fl.CheckpointError, match="seed"):
        _server(seed=8).load_checkpoint(ckpt)


class _Evil:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_crafted_checkpoint_runs_no_code(tmp_path: Path) -> None:
    # Prepare: a checkpoint file whose pickle would create `marker` if loaded unsafely
    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.pt"
    torch.save({"version": 1, "payload": _Evil(marker)}, ckpt)
    # Execute / Assert: refused as a CheckpointError; no code ran
    with pytest.raises(fl.CheckpointError, match="cannot read checkpoint"):
        _server().load_checkpoint(ckpt)
    assert not marker.exists()
    ckpt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(fl.CheckpointError, match="cannot read checkpoint"):
        _server().load_checkpoint(ckpt)


@pytest.mark.parametrize(
    "field", ["round", "seed", "global_vector", "strategy", "aggregator", "history"]
)
def test_checkpoint_missing_or_mistyped_fields(tmp_path: Path, field: str) -> None:
    # Prepare: a real checkpoint, then one field removed or of the wrong type
    server = _server()
    server.run(1, progress=False)
    state = server.state_dict()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({k: v for k, v in state.items() if k != field}, ckpt)
    with pytest.raises(fl.CheckpointError, match=f"lacks the fields \\['{field}'\\]"):
        _server().load_checkpoint(ckpt)
    torch.save({**state, field: "oops"}, ckpt)
    with pytest.raises(fl.CheckpointError, match=f"field '{field}' must be"):
        _server().load_checkpoint(ckpt)


def test_checkpoint_with_broken_inner_state(tmp_path: Path) -> None:
    server = _server()
    server.run(1, progress=False)
    state = server.state_dict()
    ckpt = tmp_path / "ckpt.pt"
    for broken in (
        {**state, "history": [{"round": 1}]},
        {**state, "aggregator": {}},
        {**state, "aggregator": {**state["aggregator"], "noise_generator": torch.zeros(3)}},
    ):
        torch.save(broken, ckpt)
        fresh = _server()
        with pytest.raises(fl.CheckpointError, match="state is invalid"):
            fresh.load_checkpoint(ckpt)
        assert fresh.round == 0  # nothing half-restored


def test_failed_round_is_recorded_or_raised() -> None:
    clients, test = _mnist_like()
    drop_all = fl.DropoutModel(rate=1.0, stage=Stage.SHARE_KEYS)
    server = fl.Server(
        _net(),
        clients,
        aggregator=fl.MaskingAggregator(),
        dropout=drop_all,
        test_data=test,
        on_failure=fl.FailurePolicy.RECORD,
    )
    before = server.global_vector.clone()
    h = server.run(2, progress=False)
    assert [r.failed for r in h] == [True, True]
    assert "share_keys" in (h[0].error or "")
    assert torch.equal(server.global_vector, before)
    assert len(h.failed_rounds) == 2 and "FAILED" in h.table()
    strict = fl.Server(_net(), clients, aggregator=fl.MaskingAggregator(), dropout=drop_all)
    with pytest.raises(fl.InsufficientClientsError):
        strict.run(1, progress=False)


def test_history_plot_and_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clients, test = _mnist_like()
    h = fl.run_simulation(
        _net(), clients, num_rounds=3, test_data=test, progress=True, strategy=fl.FedAvg(lr=0.1)
    )
    assert len(h) == 3 and all(0 <= a <= 1 for a in h.accuracy)
    assert "round" in capsys.readouterr().err
    out = fl.plot_histories({"a": h, "b": h}, tmp_path / "h.png")
    assert out.stat().st_size > 1000
    assert h.plot(tmp_path / "single.png").exists()
    assert len(h.to_dicts()) == 3 and "History(3 rounds" in repr(h)


def test_server_input_errors() -> None:
    with pytest.raises(fl.ConfigError):
        fl.Server(_net(), [])
    c = fl.Client(0, torch.zeros(2, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(fl.ConfigError, match="unique"):
        fl.Server(_net(), [c, c])
    with pytest.raises(fl.ConfigError):
        fl.FedAvg(fraction_fit=0.0)
    with pytest.raises(fl.ConfigError):
        fl.FitConfig(lr=-1.0)


# ------------------------------------------------------------- BatchNorm statistics
def _bn_model(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm1d(3, momentum=momentum), nn.Linear(3, 2))


def _bn_clients(sizes: tuple[int, ...], seed: int) -> list[fl.Client]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        x = torch.randn(n, 3, generator=g) * (i + 2.0) + 3.0 * (i + 1)
        out.append(fl.Client(i, x, torch.randint(2, (n,), generator=g)))
    return out


def _hand_running_stats(x: torch.Tensor, epochs: int, m: float) -> tuple[torch.Tensor, ...]:
    """Running mean/var after ``epochs`` full-batch train-mode forwards from (0, 1)."""
    mean, var = torch.zeros(3), torch.ones(3)
    for _ in range(epochs):  # the BN input is the raw features: independent of training
        mean = (1 - m) * mean + m * x.mean(0)
        var = (1 - m) * var + m * x.var(0, unbiased=True)
    return mean, var


_BN_AGGREGATORS = {
    "plain": (lambda: fl.PlainAggregator(), 1e-5),
    "secret-sharing": (lambda: fl.SecretSharingAggregator(2, seed=0), 1e-3),
    "masking": (lambda: fl.MaskingAggregator(clip_range=50.0), 1e-4),
}


@settings(max_examples=6, deadline=None)
@given(
    st.sampled_from(sorted(_BN_AGGREGATORS)),
    st.tuples(st.integers(2, 12), st.integers(2, 12)),
    st.integers(1, 3),
    st.integers(0, 1000),
)
def test_batchnorm_statistics_are_the_sample_weighted_mean(
    name: str, sizes: tuple[int, int], epochs: int, seed: int
) -> None:
    make, tol = _BN_AGGREGATORS[name]
    clients = _bn_clients(sizes, seed)
    model = _bn_model()
    server = fl.Server(
        model,
        clients,
        aggregator=make(),
        strategy=fl.FedAvg(lr=0.01, epochs=epochs, batch_size=100),  # one full batch per epoch
    )
    server.run_round()
    n = sum(sizes)
    stats = [_hand_running_stats(c.features, epochs, 0.1) for c in clients]
    mean = sum(s[0] * c.num_examples for s, c in zip(stats, clients, strict=True)) / n
    var = sum(s[1] * c.num_examples for s, c in zip(stats, clients, strict=True)) / n
    bn = model[0]
    assert torch.allclose(bn.running_mean, mean, atol=tol)
    assert torch.allclose(bn.running_var, var, atol=tol)
    assert int(bn.num_batches_tracked) == epochs  # one batch per epoch on each client
    # the worker model trains from the global statistics: a second round continues from them
    server.run_round()
    decay = 0.9**epochs  # round 2: every client's EMA starts from round 1's global statistics
    expected = (
        sum((decay * mean + (1 - decay) * c.features.mean(0)) * c.num_examples for c in clients) / n
    )
    assert torch.allclose(bn.running_mean, expected, atol=2 * tol)
    assert int(bn.num_batches_tracked) == 2 * epochs


def test_batch_counter_is_the_weighted_mean_of_local_batches() -> None:
    clients = _bn_clients((10, 30), seed=0)
    model = _bn_model(momentum=None)  # cumulative averages use the counter
    server = fl.Server(model, clients, strategy=fl.FedAvg(lr=0.01, epochs=2, batch_size=4))
    server.run_round()
    # client 0: 2 * ceil(10/4) = 6 batches, client 1: 2 * ceil(30/4) = 16; weights 1/4, 3/4
    assert int(model[0].num_batches_tracked) == round(6 * 0.25 + 16 * 0.75) == 14
    state = server.state_dict()
    other = fl.Server(_bn_model(momentum=None), clients)
    other.load_state_dict(state)
    assert int(other.model[0].num_batches_tracked) == 14
    assert torch.equal(other.model[0].running_mean, model[0].running_mean)


def test_dp_clips_and_noises_the_statistics_with_the_weights() -> None:
    clients = _bn_clients((6, 10), seed=3)
    dp = fl.DifferentialPrivacy(clip_norm=0.5, noise_multiplier=0.0)
    server = fl.Server(
        _bn_model(),
        clients,
        aggregator=fl.PlainAggregator(dp=dp),
        strategy=fl.FedAvg(lr=0.05, batch_size=4),
    )
    global0 = server.global_vector.clone()
    updates = server.train_clients([0, 1], 1)  # deterministic: the same updates as run_round
    assert all(float(u.delta.norm()) > 0.5 for u in updates)  # so clipping bites
    server.run_round()
    clipped = [u.delta * (0.5 / float(u.delta.norm())) for u in updates]
    expected = global0 + (clipped[0] + clipped[1]) / 2  # uniform DP weights, statistics included
    assert torch.allclose(server.global_vector, expected, atol=1e-6)
    k = server.num_parameters
    assert server.global_vector.numel() == k + 6  # running_mean and running_var of 3 channels
    # with noise the statistics are noised too, and a variance never goes below 0
    noisy = fl.Server(
        _bn_model(),
        clients,
        aggregator=fl.PlainAggregator(
            dp=fl.DifferentialPrivacy(clip_norm=0.5, noise_multiplier=50.0, seed=0)
        ),
        strategy=fl.FedAvg(lr=0.05, batch_size=4),
    )
    noisy.run(3, progress=False)
    bn = noisy.model[0]
    assert not torch.allclose(bn.running_mean, server.model[0].running_mean, atol=1e-3)
    assert bool((bn.running_var >= 0).all())


class _ShiftedNoise(fl.PlainAggregator):
    """Plain aggregation whose "noise" is a shift of -100 on every coordinate."""

    def finalize(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, float]:
        mean, std = super().finalize(*args, **kwargs)
        return mean - 100.0, std


def test_a_variance_pushed_below_zero_is_clamped() -> None:
    clients = _bn_clients((6, 10), seed=3)
    strategy = fl.FedAvg(lr=0.05, batch_size=4)
    ref = fl.Server(_bn_model(), clients, strategy=strategy)
    ref.run_round()
    shifted = fl.Server(_bn_model(), clients, aggregator=_ShiftedNoise(), strategy=strategy)
    shifted.run_round()
    a, b = ref.model[0], shifted.model[0]
    assert torch.allclose(b.running_mean, a.running_mean - 100.0, atol=1e-4)
    assert torch.equal(b.running_var, torch.zeros(3))  # clamped, not -100 + something


def test_cnn_with_batchnorm_uses_the_federated_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    n = 240
    y = torch.randint(2, (n,), generator=g)
    x = torch.randn(n, 1, 6, 6, generator=g)
    x[y == 1, :, :3] += 3.0  # class 1: bright upper half
    x = 4.0 * x + 10.0  # far from BatchNorm's initial statistics (mean 0, var 1)
    part = fl.partition(y[:160], 2, "iid", seed=0)
    clients = fl.make_clients(part, x[:160], y[:160])
    test = (x[160:], y[160:])

    def cnn() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64, 2),
        )

    model = cnn()
    h = fl.run_simulation(
        model, clients, num_rounds=5, strategy=fl.FedAvg(lr=0.05, batch_size=16), test_data=test
    )
    bn = model[1]
    # the statistics moved from (0, 1) most of the way to the conv outputs' statistics
    with torch.no_grad():
        target = model[0](x[:160]).mean((0, 2, 3))
    assert bool(((bn.running_mean - target).abs() < 0.4 * target.abs()).all())
    assert h.accuracy[-1] > 0.9
    # the same weights with the initial statistics: what the old server produced
    stale = copy.deepcopy(model)
    stale[1].reset_running_stats()
    _, stale_acc = fl.evaluate_model(stale, *test)
    assert stale_acc < h.accuracy[-1] - 0.2


@pytest.mark.parametrize(
    "make",
    [
        lambda: fl.PlainAggregator(),
        lambda: fl.PlainAggregator(dp=fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=0.1)),
        lambda: fl.MaskingAggregator(),
        lambda: fl.SecretSharingAggregator(2, seed=0),
    ],
    ids=["plain", "plain+dp", "masking", "secret-sharing"],
)
def test_a_diverged_client_stops_the_run_naming_round_and_client(make: object) -> None:
    clients, test = _mnist_like()
    x = clients[2].features.clone()
    x[0, 0] = float("inf")  # client 2's training turns NaN in round 1
    clients[2] = fl.Client(2, x, clients[2].labels)
    server = fl.Server(_net(), clients, aggregator=make(), test_data=test)  # type: ignore[operator]
    with pytest.raises(fl.AggregationError, match=r"round 1: client 2's update holds \d+ NaN/inf"):
        server.run(2, progress=False)
    assert bool(torch.isfinite(server.global_vector).all())
    recorded = fl.Server(
        _net(),
        clients,
        aggregator=make(),  # type: ignore[operator]
        test_data=test,
        on_failure=fl.FailurePolicy.RECORD,
    )
    h = recorded.run(2, progress=False)
    assert [r.failed for r in h] == [True, True] and "client 2" in (h[0].error or "")
    assert bool(torch.isfinite(recorded.global_vector).all())


@pytest.mark.parametrize("entry", ["server", "simulation"])
def test_progress_bar_only_on_a_terminal_by_default(
    entry: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clients, test = _mnist_like()

    def run(**kw: object) -> None:
        if entry == "server":
            fl.Server(_net(), clients, test_data=test).run(1, **kw)  # type: ignore[arg-type]
        else:
            fl.run_simulation(_net(), clients, num_rounds=1, test_data=test, **kw)  # type: ignore[arg-type]

    run()  # captured stderr is not a terminal: no bar
    assert "round" not in capsys.readouterr().err
    run(progress=True)
    assert "round" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    run()
    assert "round" in capsys.readouterr().err
    run(progress=False)
    assert "round" not in capsys.readouterr().err

"""Server loop: FedAvg/FedProx/FedAvgM against hand computation, history, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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

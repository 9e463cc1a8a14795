"""fl.strategy: the adaptive server optimisers against hand-computed updates.

FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2) are checked
coordinate by coordinate against a pure-Python float64 transcription of the
paper's update rules over several rounds (hypothesis over values and
hyper-parameters), end to end through the server loop, with every aggregator,
and across a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fl
from fl.strategy import FedOpt

KINDS: dict[str, type[FedOpt]] = {
    "adagrad": fl.FedAdagrad,
    "adam": fl.FedAdam,
    "yogi": fl.FedYogi,
}


def _sign(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def _oracle(
    kind: str,
    x0: Sequence[float],
    deltas: Sequence[Sequence[float]],
    *,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> list[float]:
    """The paper's Algorithm 2 by hand, one coordinate at a time, in float64."""
    x = list(x0)
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)
    for delta in deltas:
        for j, d in enumerate(delta):
            m[j] = beta_1 * m[j] + (1 - beta_1) * d
            if kind == "adagrad":
                v[j] = v[j] + d * d
            elif kind == "adam":
                v[j] = beta_2 * v[j] + (1 - beta_2) * d * d
            else:
                v[j] = v[j] - (1 - beta_2) * d * d * _sign(v[j] - d * d)
            x[j] = x[j] + eta * m[j] / (math.sqrt(v[j]) + tau)
    return x


@st.composite
def _runs(draw: st.DrawFn) -> tuple[list[float], list[list[float]]]:
    dim = draw(st.integers(1, 6))
    rounds = draw(st.integers(1, 6))
    value = st.floats(-1.0, 1.0, allow_nan=False, width=32)
    x0 = draw(st.lists(value, min_size=dim, max_size=dim))
    deltas = draw(
        st.lists(st.lists(value, min_size=dim, max_size=dim), min_size=rounds, max_size=rounds)
    )
    return x0, deltas


@given(
    _runs(),
    st.sampled_from(sorted(KINDS)),
    st.sampled_from([1e-3, 1e-2, 0.1, 1.0]),
    st.sampled_from([0.0, 0.5, 0.9]),
    st.sampled_from([0.0, 0.9, 0.99]),
    st.sampled_from([1e-3, 1e-2, 0.1]),
)
def test_server_step_equals_hand_computed_update(
    run: tuple[list[float], list[list[float]]],
    kind: str,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> None:
    x0, deltas = run
    strategy = KINDS[kind](eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)
    x = torch.tensor(x0, dtype=torch.float64)
    for d in deltas:
        x = strategy.apply(x, torch.tensor(d, dtype=torch.float64))
    expected = _oracle(kind, x0, deltas, eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)
    assert torch.allclose(x, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_first_steps_by_hand() -> None:
    d = torch.tensor([0.2, -0.1, 0.0])
    tau, eta = 1e-3, 0.5
    for kind, cls in KINDS.items():
        s = cls(eta=eta, tau=tau)  # beta_1 = 0.9, beta_2 = 0.99 (the defaults)
        x1 = s.apply(torch.zeros(3), d)
        m = 0.1 * d
        v0 = torch.full((3,), tau**2)
        if kind == "adagrad":
            v = v0 + d**2
        elif kind == "adam":
            v = 0.99 * v0 + 0.01 * d**2
        else:  # v0 < d^2 where d != 0: v grows by (1 - beta_2) d^2
            v = v0 + 0.01 * d**2
        assert torch.allclose(x1, eta * m / (v.sqrt() + tau), atol=1e-7), kind
        assert float(x1[2]) == 0.0


def test_defaults_and_config_errors() -> None:
    s = fl.FedAdam()
    assert (s.eta, s.eta_l, s.beta_1, s.beta_2, s.tau) == (1e-2, 0.1, 0.9, 0.99, 1e-3)
    assert s.fit_config(1).lr == 0.1
    assert "FedAdam(eta=0.01" in repr(s)
    assert isinstance(s, fl.Strategy)
    for bad in ({"eta": 0.0}, {"eta_l": -1.0}, {"tau": math.inf}, {"eta": math.nan}):
        with pytest.raises(fl.ConfigError, match=f"`{next(iter(bad))}`"):
            fl.FedYogi(**bad)
    for bad in ({"beta_1": 1.0}, {"beta_2": -0.1}):
        with pytest.raises(fl.ConfigError, match=f"`{next(iter(bad))}` must be in"):
            fl.FedAdagrad(**bad)
    with pytest.raises(fl.ConfigError, match="`mean_delta` has shape"):
        s.apply(torch.zeros(3), torch.zeros(4))


# ------------------------------------------------------------ through the server
def _clients() -> list[fl.Client]:
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


def _local_gd(w0: torch.Tensor, c: fl.Client, lr: float, epochs: int) -> torch.Tensor:
    """Full-batch gradient descent on the MSE, by hand."""
    w = w0.clone().to(torch.float64)
    x, y = c.features.to(torch.float64), c.labels[:, 0].to(torch.float64)
    for _ in range(epochs):
        w = w - lr * 2 * x.T @ (x @ w - y) / x.shape[0]
    return w


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rounds_through_the_server_equal_hand_computation(kind: str) -> None:
    clients = _clients()
    eta, eta_l, epochs, rounds = 0.05, 0.1, 2, 3
    strategy = KINDS[kind](eta=eta, eta_l=eta_l, epochs=epochs, batch_size=100)
    server = fl.Server(_model(), clients, strategy=strategy, loss_fn=nn.functional.mse_loss)
    x = [0.5, 0.5]
    deltas = []
    for _ in range(rounds):
        server.run_round()
        w0 = torch.tensor(x, dtype=torch.float64)
        locals_ = [_local_gd(w0, c, eta_l, epochs) for c in clients]
        mean = sum(w * c.num_examples for w, c in zip(locals_, clients, strict=True)) / 20
        deltas.append((mean - w0).tolist())
        x = _oracle(kind, [0.5, 0.5], deltas, eta=eta, beta_1=0.9, beta_2=0.99, tau=1e-3)
        assert torch.allclose(
            server.global_vector.to(torch.float64), torch.tensor(x, dtype=torch.float64), atol=1e-5
        )


class _Spy(fl.FedAdam):
    """FedAdam that records the mean updates it is given."""

    def __init__(self) -> None:
        super().__init__(eta=0.05, eta_l=0.1, batch_size=4)
        self.seen: list[torch.Tensor] = []

    def apply(self, global_vector: torch.Tensor, mean_delta: torch.Tensor) -> torch.Tensor:
        self.seen.append(mean_delta.clone())
        return super().apply(global_vector, mean_delta)


@pytest.mark.parametrize(
    "aggregator",
    [
        fl.PlainAggregator(),
        fl.SecretSharingAggregator(2, seed=3),
        fl.MaskingAggregator(clip_range=4.0),
        fl.PlainAggregator(dp=fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=0.1, seed=2)),
    ],
    ids=["plain", "secret-sharing", "masking", "plain+dp"],
)
def test_every_aggregator_feeds_the_server_optimiser(aggregator: fl.Aggregator) -> None:
    clients = _clients()
    reference = _Spy()
    fl.Server(_model(), clients, strategy=reference, loss_fn=nn.functional.mse_loss).run(
        2, progress=False
    )
    spy = _Spy()
    server = fl.Server(
        _model(), clients, strategy=spy, aggregator=aggregator, loss_fn=nn.functional.mse_loss
    )
    server.run(2, progress=False)
    # the optimiser ran on exactly the aggregator's mean updates ...
    expected = _oracle(
        "adam",
        [0.5, 0.5],
        [d.tolist() for d in spy.seen],
        eta=0.05,
        beta_1=0.9,
        beta_2=0.99,
        tau=1e-3,
    )
    assert torch.allclose(
        server.global_vector.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6
    )
    # ... which are the plaintext mean (to the aggregator's precision; DP adds its noise)
    tol = 0.5 if aggregator.dp is not None else 1e-3
    assert torch.allclose(spy.seen[0], reference.seen[0], atol=tol)


def test_checkpoint_keeps_the_moments(tmp_path: Path) -> None:
    def server() -> fl.Server:
        return fl.Server(
            _model(),
            _clients(),
            strategy=fl.FedYogi(eta=0.05, eta_l=0.1, batch_size=4),
            loss_fn=nn.functional.mse_loss,
        )

    full = server()
    full.run(3, progress=False)
    first = server()
    first.run(2, progress=False, checkpoint=tmp_path / "run.pt")
    resumed = server()
    resumed.run(3, progress=False, checkpoint=tmp_path / "run.pt")
    assert torch.equal(resumed.global_vector, full.global_vector)
    strategy = resumed.strategy
    assert isinstance(strategy, fl.FedYogi) and strategy.v is not None
    fresh = fl.FedYogi()
    fresh.load_state_dict(strategy.state_dict())
    assert fresh.m is not None and torch.equal(fresh.m, strategy.m)  # type: ignore[arg-type]

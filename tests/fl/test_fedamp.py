"""FedAMP: attention and cloud models against a hand-written oracle, the secret-shared
version against the plaintext one, the client's proximal step, personalised rounds."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fl
import smpc
from fl.fedamp import (
    attention_weights,
    cloud_models,
    cloud_models_on_shares,
    secure_cloud_models,
    secure_tolerance,
)
from fl.network import NetworkConfig, NetworkServer
from fl.types import FitConfig


def _oracle_attention(w: np.ndarray, sigma: float, self_weight: float) -> np.ndarray:
    """HeurFedAMP's weights, written out entry by entry (Huang et al. 2021, Sec. 5)."""
    n = w.shape[0]
    if n == 1:
        return np.ones((1, 1))

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
        return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)

    xi = np.zeros((n, n))
    for i in range(n):
        ex = {j: math.exp(sigma * cos(w[i], w[j])) for j in range(n) if j != i}
        total = sum(ex.values())
        for j, v in ex.items():
            xi[i, j] = (1 - self_weight) * v / total
        xi[i, i] = self_weight
    return xi


def _models(n: int, d: int, seed: int, spread: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    return base + spread * torch.randn(n, d, generator=g, dtype=torch.float64)


hyper = {
    "n": st.integers(1, 6),
    "d": st.integers(1, 24),
    "sigma": st.floats(0.0, 30.0),
    "self_weight": st.floats(0.0, 1.0),
    "seed": st.integers(0, 2**16),
}


@given(**hyper)
def test_attention_and_cloud_models_match_the_oracle(
    n: int, d: int, sigma: float, self_weight: float, seed: int
) -> None:
    w = _models(n, d, seed)
    xi = attention_weights(w, sigma=sigma, self_weight=self_weight)
    expected = _oracle_attention(w.numpy(), sigma, self_weight)
    np.testing.assert_allclose(xi.numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(xi.sum(dim=1).numpy(), np.ones(n), atol=1e-12)
    u = cloud_models(w, sigma=sigma, self_weight=self_weight)
    oracle_u = np.stack([sum(expected[i, j] * w[j].numpy() for j in range(n)) for i in range(n)])
    np.testing.assert_allclose(u.numpy(), oracle_u, rtol=1e-9, atol=1e-12)


def test_attention_prefers_similar_models_and_handles_edge_cases() -> None:
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    w = torch.stack([a, a * 2, b])  # clients 0 and 1 point the same way
    xi = attention_weights(w, sigma=5.0, self_weight=0.2)
    assert xi[0, 1] > xi[0, 2] and xi[1, 0] > xi[1, 2]
    assert torch.allclose(xi.diagonal(), torch.full((3,), 0.2, dtype=torch.float64))
    uniform = attention_weights(w, sigma=0.0, self_weight=0.4)
    assert torch.allclose(uniform[0, 1:], torch.full((2,), 0.3, dtype=torch.float64))
    assert torch.equal(cloud_models(w, sigma=1.0, self_weight=1.0), w)  # local only
    zero = attention_weights(torch.stack([a, torch.zeros(3)]), sigma=3.0, self_weight=0.5)
    assert torch.allclose(zero, torch.full((2, 2), 0.5, dtype=torch.float64))
    assert cloud_models(w[:1], sigma=3.0, self_weight=0.1).equal(w[:1])


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 5),
    d=st.integers(1, 40),
    sigma=st.floats(0.0, 50.0),
    self_weight=st.floats(0.0, 1.0),
    parties=st.integers(2, 4),
    frac_bits=st.sampled_from([16, 20]),
    seed=st.integers(0, 2**16),
)
def test_secure_cloud_models_equal_plaintext_within_the_derived_tolerance(
    n: int, d: int, sigma: float, self_weight: float, parties: int, frac_bits: int, seed: int
) -> None:
    w = _models(n, d, seed).to(torch.float32)
    models = {10 + i: w[i] for i in range(n)}
    out, cost = secure_cloud_models(
        models, sigma=sigma, self_weight=self_weight, parties=parties, frac_bits=frac_bits, seed=1
    )
    ref = cloud_models(w, sigma=sigma, self_weight=self_weight)
    tol = secure_tolerance(
        frac_bits,
        sigma=sigma,
        self_weight=self_weight,
        n_clients=n,
        max_abs=float(w.abs().max()),
        max_norm=float(w.norm(dim=1).max()),
    )
    assert sorted(out) == sorted(models)
    for k, cid in enumerate(sorted(models)):
        assert out[cid].dtype == torch.float32 and out[cid].shape == (d,)
        assert float((out[cid] - ref[k]).abs().max()) <= tol
    assert cost.n_clients == n and cost.n_params == d
    assert cost.upload_bytes_per_client == 8 * parties * (d + 1)
    assert cost.download_bytes_per_client == 8 * parties * d
    if n > 1:
        assert cost.rounds > 0 and cost.party_bytes > 0


def test_secure_at_benchmark_scale_of_attention() -> None:
    """20 clients, sharp attention (sigma = 1000, the benchmark's), close models."""
    w = _models(20, 300, 3, spread=0.05).to(torch.float32)
    out, _ = secure_cloud_models(dict(enumerate(w)), sigma=1000.0, self_weight=0.5, seed=2)
    ref = cloud_models(w, sigma=1000.0, self_weight=0.5)
    tol = secure_tolerance(
        20,
        sigma=1000.0,
        self_weight=0.5,
        n_clients=20,
        max_abs=float(w.abs().max()),
        max_norm=float(w.norm(dim=1).max()),
    )
    err = max(float((out[i] - ref[i]).abs().max()) for i in range(20))
    assert err <= tol
    assert err < 1e-3  # far inside the bound in practice


def test_secure_rejects_models_beyond_the_encoding() -> None:
    big = {0: torch.full((4,), 3000.0), 1: torch.ones(4)}
    with pytest.raises(fl.AggregationError, match="frac_bits"):
        secure_cloud_models(big, sigma=1.0, self_weight=0.5)
    with pytest.raises(fl.ConfigError, match="at least one"):
        secure_cloud_models({}, sigma=1.0, self_weight=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": math.inf}, "sigma"),
        ({"self_weight": 1.5}, "self_weight"),
        ({"lam": 0.0}, "lam"),
        ({"alpha_k": -2.0}, "alpha_k"),
        ({"parties": 1}, "parties"),
        ({"frac_bits": 40}, "frac_bits"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_fedamp_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        fl.FedAMP(**kwargs)  # type: ignore[arg-type]


def test_bad_models_are_named() -> None:
    with pytest.raises(fl.ConfigError, match="2-D"):
        attention_weights(torch.ones(3), sigma=1.0, self_weight=0.5)
    with pytest.raises(fl.ConfigError, match="finite"):
        attention_weights(torch.tensor([[math.nan, 1.0]]), sigma=1.0, self_weight=0.5)
    with pytest.raises(fl.ConfigError, match="models"):
        fl.FedAMP().personalize({})
    with smpc.Session(parties=2, frac_bits=20) as sess:
        dirs = sess.share(torch.ones(3, 2))
        with pytest.raises(fl.ConfigError, match="norms"):
            cloud_models_on_shares(dirs, sess.share(torch.ones(2)), sigma=1.0, self_weight=0.5)


def test_fedamp_config_is_the_proximal_step_of_the_paper() -> None:
    s = fl.FedAMP(lam=0.5, alpha_k=0.25, epochs=2, batch_size=8, lr=0.1)
    assert s.fit_config(1) == FitConfig(epochs=2, batch_size=8, lr=0.1, proximal_mu=2.0)
    v = torch.arange(3.0)
    assert s.apply(v, torch.ones(3)) is v  # no global model
    assert "secure=False" in repr(s)
    assert s.upload_bytes(10) == 40
    assert fl.FedAMP(secure=True, parties=3).upload_bytes(10) == 8 * 3 * 11
    assert isinstance(s, fl.strategy.PersonalizedStrategy)
    assert not isinstance(fl.FedAvg(), fl.strategy.PersonalizedStrategy)
    # the documented defaults (chosen on validation splits): proximal mu = 0.1
    d = fl.FedAMP()
    assert (d.self_weight, d.sigma, d.lam, d.alpha_k) == (0.5, 1000.0, 0.1, 1.0)
    assert d.fit_config(1).proximal_mu == pytest.approx(0.1)


# ------------------------------------------------------------------ client step
def test_client_proximal_step_pulls_toward_the_anchor() -> None:
    """One full-batch SGD step from ``w0`` with ``mu/2 ||w - a||^2``, by hand."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g)
    y = torch.randn(6, 1, generator=g)
    client = fl.Client(0, x, y, loss_fn=nn.functional.mse_loss)
    w0 = torch.tensor([0.3, -0.2, 0.1])
    anchor = torch.tensor([1.0, 1.0, -1.0])
    lr, mu = 0.1, 2.0
    model = nn.Linear(3, 1, bias=False)
    cfg = FitConfig(epochs=1, batch_size=6, lr=lr, proximal_mu=mu)
    upd = client.fit(model, w0, cfg, generator=g, anchor=anchor)
    grad = 2 * x.T @ (x @ w0 - y[:, 0]) / 6 + mu * (w0 - anchor)
    assert torch.allclose(upd.delta, -lr * grad, atol=1e-6)
    # without an anchor the proximal term is anchored at the start (FedProx): zero first step
    plain = client.fit(model, w0, cfg, generator=g)
    assert torch.allclose(plain.delta, -lr * 2 * x.T @ (x @ w0 - y[:, 0]) / 6, atol=1e-6)
    with pytest.raises(fl.ConfigError, match="anchor"):
        client.fit(model, w0, cfg, generator=g, anchor=torch.zeros(4))


# ------------------------------------------------------------- federated runs
def _group_clients(n_per_group: int = 3, seed: int = 0) -> list[fl.Client]:
    """Two groups of clients whose labels follow opposite rules (x_0 > 0 vs. x_0 < 0)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(2 * n_per_group):
        x = torch.randn(80, 4, generator=g)
        y = (x[:, 0] > 0).long() if i % 2 == 0 else (x[:, 0] < 0).long()
        out.append(fl.Client(i, x[:60], y[:60], test_data=(x[60:], y[60:])))
    return out


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_personalised_round_follows_the_algorithm() -> None:
    clients = _group_clients()
    strategy = fl.FedAMP(self_weight=0.3, sigma=5.0, lam=0.5, alpha_k=1.0, lr=0.1, batch_size=16)
    model = _small()
    init = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    server = fl.Server(model, clients, strategy=strategy, seed=3)
    server.run_round()
    w1 = torch.stack([server.personal_models[c.client_id] for c in clients])
    expected_u = cloud_models(w1, sigma=5.0, self_weight=0.3)
    for k, c in enumerate(clients):
        assert torch.allclose(server.cloud_models[c.client_id], expected_u[k], atol=1e-6)
    # round 2: each client starts from its own model, anchored at its cloud model
    g = fl.server.round_generator(3, 2, clients[0].client_id + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(1 << 62, (1,), generator=g)))
        worker = _small()
        upd = clients[0].fit(
            worker, w1[0], strategy.fit_config(2), generator=g, anchor=expected_u[0]
        )
    server.run_round()
    assert torch.allclose(server.personal_models[0], w1[0] + upd.delta, atol=1e-6)
    # the global model is untouched; the record is the personalised evaluation
    assert torch.equal(server.global_vector, init)
    loss, acc, per = server.evaluate_personalized()
    assert set(per) == {c.client_id for c in clients}
    assert server.history[-1].test_accuracy == pytest.approx(acc)
    pooled = sum(per[c.client_id][1] * c.num_test_examples for c in clients) / sum(
        c.num_test_examples for c in clients
    )
    assert acc == pytest.approx(pooled)
    assert server.history[-1].upload_bytes == 4 * init.numel()


def test_short_run_improves_personalised_accuracy_and_beats_fedavg() -> None:
    clients = _group_clients()
    strategy = fl.FedAMP(self_weight=0.3, sigma=20.0, lam=0.5, lr=0.2, batch_size=16, epochs=2)
    server = fl.Server(_small(), clients, strategy=strategy, seed=0)
    _, before, _ = server.evaluate_personalized()
    history = server.run(8, progress=False)
    assert history.accuracy[-1] > max(before + 0.2, 0.85)
    # FedAvg cannot serve both rules with one model
    avg = fl.Server(_small(), clients, strategy=fl.FedAvg(lr=0.2, batch_size=16, epochs=2))
    avg.run(8, progress=False)
    worker = _small()
    torch.nn.utils.vector_to_parameters(avg.global_vector.clone(), worker.parameters())
    n = sum(c.num_test_examples for c in clients)
    fedavg_acc = sum(c.evaluate_test(worker)[1] * c.num_test_examples for c in clients) / n
    assert history.accuracy[-1] > fedavg_acc + 0.2


def test_secure_run_matches_plaintext_run() -> None:
    clients = _group_clients(2)
    kw = {"self_weight": 0.3, "sigma": 20.0, "lam": 0.5, "lr": 0.2, "batch_size": 16}
    plain = fl.Server(_small(), clients, strategy=fl.FedAMP(**kw), seed=0)  # type: ignore[arg-type]
    secure_strategy = fl.FedAMP(secure=True, seed=5, **kw)  # type: ignore[arg-type]
    secure = fl.Server(_small(), clients, strategy=secure_strategy, seed=0)
    plain.run(3, progress=False)
    secure.run(3, progress=False)
    for cid in plain.personal_models:
        assert torch.allclose(plain.personal_models[cid], secure.personal_models[cid], atol=1e-3)
    assert abs(plain.history.accuracy[-1] - secure.history.accuracy[-1]) <= 0.05
    assert secure_strategy.last_cost is not None and secure_strategy.last_cost.n_clients == 4
    assert secure.history[-1].upload_bytes == secure_strategy.upload_bytes(
        plain.global_vector.numel()
    )


def test_sampling_dropouts_and_checkpoint_resume(tmp_path: Path) -> None:
    clients = _group_clients()

    def strategy() -> fl.FedAMP:
        return fl.FedAMP(fraction_fit=0.5, sigma=5.0, lr=0.1, batch_size=16)

    ref = fl.Server(_small(), clients, strategy=strategy(), seed=1)
    ref.run(4, progress=False)
    assert all(len(r.selected) == 3 for r in ref.history)
    ck = tmp_path / "amp.pt"
    first = fl.Server(_small(), clients, strategy=strategy(), seed=1)
    first.run(2, progress=False, checkpoint=ck)
    resumed = fl.Server(_small(), clients, strategy=strategy(), seed=1)
    resumed.run(4, progress=False, checkpoint=ck)
    for a, b in zip(resumed.history, ref.history, strict=True):
        assert (a.selected, a.train_loss, a.test_loss, a.test_accuracy) == (
            b.selected,
            b.train_loss,
            b.test_loss,
            b.test_accuracy,
        )
    for cid, w in ref.personal_models.items():
        assert torch.equal(resumed.personal_models[cid], w)
    # everyone dropping is a failed round, recorded on request
    failing = fl.Server(
        _small(),
        clients,
        strategy=strategy(),
        dropout=fl.DropoutModel(rate=1.0),
        on_failure=fl.FailurePolicy.RECORD,
    )
    assert failing.run(1, progress=False)[0].failed


def test_make_clients_holds_out_a_local_test_split() -> None:
    y = torch.arange(40) % 4
    x = torch.randn(40, 3)
    part = fl.partition(y, 4, "shards", classes_per_client=1, seed=0)
    clients = fl.make_clients(part, x, y, test_fraction=0.25, seed=0)
    for c, ix in zip(clients, part.indices, strict=True):
        assert c.num_examples == 8 and c.num_test_examples == 2
        assert set(c.labels.tolist()) | set(c.test_data[1].tolist()) == set(y[ix].tolist())  # type: ignore[index]
        rows = torch.cat([c.features, c.test_data[0]])  # type: ignore[index]
        assert torch.equal(rows.sort(dim=0).values, x[ix].sort(dim=0).values)
    assert fl.make_clients(part, x, y)[0].test_data is None
    with pytest.raises(fl.ConfigError, match="test_fraction"):
        fl.make_clients(part, x, y, test_fraction=1.0)
    with pytest.raises(fl.ConfigError, match="test_data"):
        fl.Client(0, x[:4], y[:4], test_data=(x[:2], y[:3]))
    with pytest.raises(fl.ConfigError, match="test_data"):
        clients[0].__class__(9, x[:4], y[:4]).evaluate_test(_small())


def test_personalised_server_refuses_an_aggregator() -> None:
    clients = _group_clients(1)
    with pytest.raises(fl.ConfigError, match="secure=True"):
        fl.Server(_small(), clients, strategy=fl.FedAMP(), aggregator=fl.SecretSharingAggregator())
    fl.Server(_small(), clients, strategy=fl.FedAMP(), aggregator=fl.PlainAggregator())


def test_networked_mode_refuses_personalised_strategies() -> None:
    cfg = NetworkConfig(master_addr="127.0.0.1", master_port=1, world_size=2)
    with pytest.raises(fl.ConfigError, match="simulation only"):
        NetworkServer(_small(), cfg, strategy=fl.FedAMP())


# ------------------------------------------------------- distributed runtime
def _fedamp_program(
    sess: smpc.Session, v: torch.Tensor, rho: torch.Tensor, sigma: float, self_weight: float
) -> dict[str, Any]:
    """Party 0 stands in for the clients; every party computes on its shares."""
    owner = sess.rank in (None, 0)
    dirs = sess.share(v if owner else None, src=0)
    norms = sess.share(rho if owner else None, src=0)
    rounds = sess.stats.rounds
    u = cloud_models_on_shares(dirs, norms, sigma=sigma, self_weight=self_weight)
    return {
        "rounds": sess.stats.rounds - rounds,
        "row0_to_last": u[0].reveal(to=len(sess.parties) - 1),
        "all": u.reveal(),
    }


@pytest.mark.distributed
@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_parties", [2, 3])
def test_secure_core_runs_in_separate_processes(n_parties: int) -> None:
    w = _models(4, 6, 7, spread=0.3)
    rho = w.norm(dim=1)
    v = w / rho[:, None]
    program = functools.partial(_fedamp_program, v=v, rho=rho, sigma=8.0, self_weight=0.4)
    results = smpc.run(program, parties=n_parties, frac_bits=20, timeout=60)
    with smpc.Session(parties=n_parties, frac_bits=20) as sess:
        sim = program(sess)
    ref = cloud_models(w, sigma=8.0, self_weight=0.4)
    tol = secure_tolerance(
        20,
        sigma=8.0,
        self_weight=0.4,
        n_clients=4,
        max_abs=float(w.abs().max()),
        max_norm=float(rho.max()),
    )
    for r, res in enumerate(results):
        assert float((res["all"] - ref).abs().max()) <= tol
        assert res["rounds"] == sim["rounds"]
        if r == n_parties - 1:
            assert float((res["row0_to_last"] - ref[0]).abs().max()) <= tol
        else:
            assert res["row0_to_last"] is None


def test_personalised_models_with_batchnorm_and_federated_evaluation() -> None:
    # Prepare: a model with BatchNorm (its statistics are part of each client's vector)
    clients = _group_clients()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    strategy = fl.FedAMP(self_weight=0.3, sigma=20.0, lam=0.5, lr=0.2, batch_size=16)
    fe = fl.FederatedEvaluation(fraction_evaluate=1.0)
    server = fl.Server(model, clients, strategy=strategy, seed=0, federated_evaluation=fe)
    # Execute
    server.run(3, progress=False)
    _, _, per = server.evaluate_personalized()
    # Assert: federated evaluation scores each client's own model on its own split
    record = server.history[-1]
    assert record.client_metrics is not None and len(record.client_metrics) == len(clients)
    for m in record.client_metrics:
        assert m.accuracy == pytest.approx(per[m.client_id][1])
        assert server.client_vector(m.client_id) is server.personal_models[m.client_id]

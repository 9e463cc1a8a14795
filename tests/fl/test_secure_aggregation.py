"""The masking protocol: stage machine, the server's view, protocol checks, quantizer."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import fl
from fl import shamir
from fl.aggregators import Stage
from fl.secure_aggregation import (
    KeyRoster,
    MaskingClient,
    MaskingServer,
    ShareDelivery,
    UnmaskRequest,
    expand_mask,
    neighbour_graph,
)


def _round(n: int = 4, dim: int = 6) -> tuple[MaskingServer, dict[int, MaskingClient]]:
    agg = fl.MaskingAggregator()
    server = agg.server_session({i: 1 / n for i in range(n)}, dim)
    clients = {i: agg.client_session(i, torch.full((dim,), 0.1 * i)) for i in range(n)}
    return server, clients


def _messages_per_stage() -> dict[Stage, dict[int, object]]:
    """A valid message for each stage, obtained by running a round."""
    server, clients = _round()
    out: dict[Stage, dict[int, object]] = {}
    msgs = server.first()
    while msgs is not None:
        stage = next(iter(msgs.values())).stage  # type: ignore[attr-defined]
        out[stage] = msgs
        msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})
    return out


@pytest.mark.parametrize("at", list(Stage))
@pytest.mark.parametrize("send", list(Stage))
def test_client_stage_machine_accepts_only_the_next_stage(at: Stage, send: Stage) -> None:
    msgs = _messages_per_stage()
    _, clients = _round()
    server, clients = _round()
    # drive client 0 up to stage `at` with a fresh round
    m = server.first()
    for stage in Stage:
        if stage is at:
            break
        m = server.step({c: clients[c].respond(x) for c, x in m.items()})  # type: ignore[assignment]
    client = clients[0]
    assert client.state.stage is at
    message = m[0] if send is at else msgs[send][0]  # type: ignore[index]
    if send is at:
        client.respond(message)  # the expected stage goes through
    else:
        with pytest.raises(fl.ProtocolError, match="stage"):
            client.respond(message)


def test_finished_client_rejects_everything() -> None:
    server, clients = _round()
    msgs = server.first()
    last = None
    while msgs is not None:
        last = msgs
        msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})
    with pytest.raises(fl.ProtocolError):
        clients[0].respond(last[0])  # type: ignore[index]


def test_server_step_after_done_is_an_error() -> None:
    server, clients = _round()
    msgs = server.first()
    while msgs is not None:
        msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})
    with pytest.raises(fl.ProtocolError):
        server.step({})


def test_masked_update_looks_uniform_and_independent_of_the_input() -> None:
    """The server's view of one client (its masked vector) is uniform in Z_2^32."""
    dim = 20_000
    views = []
    for value in (0.0, 0.9):
        agg = fl.MaskingAggregator()
        server = agg.server_session({0: 0.5, 1: 0.5}, dim)
        clients = {i: agg.client_session(i, torch.full((dim,), value)) for i in range(2)}
        msgs = server.first()
        for _ in range(2):
            msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})  # type: ignore[union-attr]
        views.append(clients[0].respond(msgs[0]).y)  # type: ignore[index]
    for y in views:
        # chi-square on the top byte: 255 degrees of freedom, 6-sigma bound
        counts = np.bincount((y >> 24).astype(np.int64), minlength=256)
        expected = dim / 256
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 255 + 6 * math.sqrt(2 * 255)
        # every bit is balanced
        bits = ((y[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
        assert np.all(np.abs(bits - 0.5) < 6 * 0.5 / math.sqrt(dim))
    # the same input never gives the same view (fresh masks every round)
    assert not np.array_equal(views[0], views[1])


def test_client_refuses_to_reveal_both_shares_of_one_client() -> None:
    server, clients = _round()
    msgs = server.first()
    for _ in range(3):
        msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})  # type: ignore[union-attr]
    bad = UnmaskRequest(survivors=(0, 1, 2), dropped=(2, 3))
    with pytest.raises(fl.ProtocolError, match="both"):
        clients[0].respond(bad)


def test_tampered_ciphertext_is_detected() -> None:
    server, clients = _round()
    msgs = server.first()
    msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})
    msgs = server.step({c: clients[c].respond(m) for c, m in msgs.items()})  # type: ignore[union-attr]
    delivery = msgs[0]  # type: ignore[index]
    assert isinstance(delivery, ShareDelivery)
    sender, ct = next(iter(delivery.ciphertexts.items()))
    forged = dataclasses.replace(
        delivery, ciphertexts={**delivery.ciphertexts, sender: ct[:-1] + bytes([ct[-1] ^ 1])}
    )
    with pytest.raises(fl.ProtocolError, match="authentication"):
        clients[0].respond(forged)


def test_roster_with_strangers_is_rejected() -> None:
    agg = fl.MaskingAggregator(neighbours=2)
    server = agg.server_session({i: 0.1 for i in range(8)}, 4)
    client = agg.client_session(0, torch.zeros(4))
    setup = server.first()[0]
    client.respond(setup)
    stranger = next(c for c in range(1, 8) if c not in setup.neighbours)
    with pytest.raises(fl.ProtocolError, match="non-neighbour"):
        client.respond(KeyRoster({stranger: (b"x" * 32, b"y" * 32)}))


def test_neighbour_graph_is_symmetric_and_regular() -> None:
    ids = tuple(range(0, 40, 2))
    g = neighbour_graph(ids, 6, b"r" * 16)
    for u, nb in g.items():
        assert len(nb) == 6 and u not in nb
        assert all(u in g[v] for v in nb)
    assert all(len(nb) == len(ids) - 1 for nb in neighbour_graph(ids, None, b"r" * 16).values())


def test_mask_expansion_is_deterministic_per_key() -> None:
    a = expand_mask(b"k" * 16, 1000)
    assert np.array_equal(a, expand_mask(b"k" * 16, 1000))
    assert not np.array_equal(a, expand_mask(b"j" * 16, 1000))
    assert a.dtype == np.uint32


def test_quantizer_range_and_exact_sums() -> None:
    q = fl.Quantizer(clip_range=2.0, n_clients=5)
    xs = [torch.full((3,), v) for v in (2.0, 2.0, 2.0, 2.0, 2.0)]
    total = np.zeros(3, dtype=np.uint32)
    for x in xs:
        total += q.quantize(x)
    assert torch.allclose(q.dequantize(total), torch.full((3,), 10.0), atol=1e-6)
    neg = np.zeros(3, dtype=np.uint32)
    for x in xs:
        neg += q.quantize(-x)
    assert torch.allclose(q.dequantize(neg), torch.full((3,), -10.0), atol=1e-6)
    with pytest.raises(fl.QuantizationRangeError):
        q.quantize(torch.tensor([2.01]))
    with pytest.raises(fl.ConfigError):
        fl.Quantizer(clip_range=0.0, n_clients=1)


def test_shamir_threshold() -> None:
    secret = 123456789 << 200
    shares = shamir.split(secret, 3, range(1, 6))
    assert shamir.reconstruct({x: shares[x] for x in (1, 3, 5)}, 3) == secret
    assert shamir.reconstruct({x: shares[x] for x in (2, 4)}, 2) != secret
    with pytest.raises(fl.ProtocolError):
        shamir.reconstruct({1: shares[1]}, 3)

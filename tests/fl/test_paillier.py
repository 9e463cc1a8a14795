"""PaillierAggregator: exact equality with the oracle on quantized values; keys; tampering."""

from __future__ import annotations

import gmpy2  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fl
from fl.aggregators import Stage
from fl.paillier import (
    MIN_KEY_BITS,
    DecryptionRequest,
    PackedQuantizer,
    PaillierAggregator,
    PaillierInput,
    PaillierKeyHolder,
    PaillierPrivateKey,
    PaillierPublicKey,
    _Encryptor,
    generate_keypair,
)
from fl.types import ClientUpdate


@pytest.fixture(scope="module")
def holder() -> PaillierKeyHolder:
    return PaillierKeyHolder()


def _updates(n: int, dim: int, seed: int, scale: float = 1.0) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 100, (n,), generator=g).tolist()
    return [
        ClientUpdate(i, (torch.rand(dim, generator=g) * 2 - 1) * scale, counts[i]) for i in range(n)
    ]


def _oracle(ups: list[ClientUpdate], agg: PaillierAggregator, survivors: list[int]) -> torch.Tensor:
    """Plain sum of the survivors' *quantized* weighted updates, decoded."""
    weights = agg.weights({u.client_id: u.num_examples for u in ups})
    q = agg.quantizer(len(ups))
    total = np.zeros(ups[0].delta.numel(), dtype=np.uint64)
    for u in ups:
        if u.client_id in survivors:
            total += q.quantize(u.delta, multiplier=weights[u.client_id])
    return q.dequantize(total, len(survivors)) / sum(weights[c] for c in survivors)


# ------------------------------------------------------------- correctness
@settings(max_examples=10)
@given(
    st.integers(1, 6),
    st.integers(1, 250),
    st.integers(0, 10_000),
    st.sampled_from([8, 16, 24, 32]),
    st.floats(0.1, 4.0),
)
def test_paillier_equals_oracle_exactly_on_quantized_values(
    holder: PaillierKeyHolder, n: int, dim: int, seed: int, bits: int, clip: float
) -> None:
    ups = _updates(n, dim, seed, scale=clip)
    agg = PaillierAggregator(holder, clip_range=clip, bits=bits)
    res = agg.aggregate(ups)
    assert torch.equal(res.mean, _oracle(ups, agg, list(range(n))))
    plain = fl.PlainAggregator().aggregate(ups).mean
    q = agg.quantizer(n)
    assert torch.allclose(res.mean, plain, atol=n * q.resolution + 1e-5)
    cts = q.n_ciphertexts(dim)
    assert all(b == 8 + cts * 512 for b in res.upload_bytes.values())
    assert res.survivors == tuple(range(n))


@settings(max_examples=30)
@given(
    st.integers(1, 32),
    st.integers(1, 2000),
    st.integers(1, 700),
    st.integers(0, 2**32 - 1),
)
def test_pack_unpack_round_trip_and_slot_sums(
    bits: int, n_clients: int, dim: int, seed: int
) -> None:
    q = PackedQuantizer(1.0, n_clients, bits)
    assert q.slots * q.slot_bits <= MIN_KEY_BITS - 1
    rng = np.random.default_rng(seed)
    vals = rng.integers(0, q.levels + 1, size=(3, dim), dtype=np.uint64)
    plains = [q.pack(v) for v in vals]
    assert len(plains[0]) == q.n_ciphertexts(dim)
    assert all(0 <= m < 1 << (MIN_KEY_BITS - 1) for m in plains[0])
    assert np.array_equal(q.unpack(plains[0], dim), vals[0])
    # Adding packed plaintexts adds slot by slot (no carries while count <= n_clients).
    k = min(3, n_clients)
    summed = [sum(col) for col in zip(*plains[:k], strict=True)]
    assert np.array_equal(q.unpack(summed, dim), vals[:k].sum(axis=0))


def test_layout_matches_batchcrypt_arithmetic() -> None:
    q = PackedQuantizer(1.0, 10, 16)
    assert (q.headroom, q.slot_bits, q.slots) == (4, 20, 102)
    assert PackedQuantizer(1.0, 1, 16).headroom == 0
    assert PackedQuantizer(1.0, 16, 16).headroom == 4
    assert PackedQuantizer(1.0, 17, 16).headroom == 5
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert q.quantize(x).tolist() == [0, 32768, 65535]
    assert torch.allclose(q.dequantize(q.quantize(x), 1), x, atol=q.resolution)


def test_dropouts_leave_only_survivors_in_the_sum(holder: PaillierKeyHolder) -> None:
    ups = _updates(5, 30, 3)
    agg = PaillierAggregator(holder)
    res = agg.aggregate(ups, dropouts={Stage.INPUT: [1, 3]})
    assert res.survivors == (0, 2, 4) and res.dropped == (1, 3)
    assert torch.equal(res.mean, _oracle(ups, agg, [0, 2, 4]))
    with pytest.raises(fl.InsufficientClientsError, match="input"):
        agg.aggregate(ups, dropouts={Stage.INPUT: range(5)})


def test_runs_in_the_server_loop_like_plain(holder: PaillierKeyHolder) -> None:
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    y = (x[:, 0] > 0).long()
    part = fl.partition(y, 3, seed=0)
    results = {}
    for name, agg in (("plain", fl.PlainAggregator()), ("paillier", PaillierAggregator(holder))):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        clients = fl.make_clients(part, x, y)
        strategy = fl.FedAvg(batch_size=10, lr=0.1)
        server = fl.Server(
            model, clients, strategy=strategy, aggregator=agg, test_data=(x, y), seed=0
        )
        history = server.run(2, progress=False)
        results[name] = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        assert not history.failed_rounds
    assert torch.allclose(results["plain"], results["paillier"], atol=1e-3)


# ------------------------------------------------------------------- keys
def test_keypair_encrypts_decrypts_and_adds(holder: PaillierKeyHolder) -> None:
    pub = holder.public_key
    priv = holder._private
    assert pub.bits >= 2048 and pub.ciphertext_bytes == 512
    m1, m2 = 12345678901234567890, pub.n - 5
    c1, c2 = pub.encrypt(m1), pub.encrypt(m2)
    assert priv.decrypt(c1) == m1 and priv.decrypt(c2) == m2
    assert priv.decrypt(pub.add(c1, c2)) == (m1 + m2) % pub.n
    assert pub.encrypt(m1) != c1  # fresh randomness every time
    assert "hidden" in repr(priv) and str(priv._p) not in repr(priv)
    assert str(pub.n) not in repr(pub) and pub.fingerprint in repr(holder)


def test_fixed_base_table_encrypts_like_powmod(holder: PaillierKeyHolder) -> None:
    pub = holder.public_key
    enc = _Encryptor(pub, 10_000)
    assert enc.table is not None
    msgs = [0, 1, 2**2000, pub.n - 1]
    assert [holder._private.decrypt(int(c)) for c in enc.encrypt(msgs)] == msgs
    with pytest.raises(fl.ConfigError, match=r"\[0, n\)"):
        enc.encrypt([pub.n])


def test_generate_keypair_rejects_short_keys() -> None:
    with pytest.raises(fl.ConfigError, match="`bits` must be an even int >= 2048; got 1024"):
        generate_keypair(1024)
    with pytest.raises(fl.ConfigError, match="`key_bits` must be >= 2048"):
        PaillierAggregator(key_bits=1024)


def test_bad_public_and_private_keys_are_rejected(holder: PaillierKeyHolder) -> None:
    pub, priv = holder.public_key, holder._private
    p, q = int(priv._p), int(priv._q)
    big_prime = int(gmpy2.next_prime(1 << 2100))
    with pytest.raises(fl.ConfigError, match="at least 2048 bits; got 1024"):
        PaillierPublicKey((1 << 1023) + 1, 2)
    with pytest.raises(fl.ConfigError, match="small factor"):
        PaillierPublicKey(pub.n * 2, pub.hs)
    with pytest.raises(fl.ConfigError, match="small factor"):
        PaillierPublicKey(pub.n * 3, pub.hs)
    with pytest.raises(fl.ConfigError, match="prime or square"):
        PaillierPublicKey(big_prime, 2)
    with pytest.raises(fl.ConfigError, match="prime or square"):
        PaillierPublicKey(p * p, 2)
    with pytest.raises(fl.ConfigError, match="unit modulo n"):
        PaillierPublicKey(pub.n, pub.n * pub.n)
    with pytest.raises(fl.ConfigError, match="unit modulo n"):
        PaillierPublicKey(pub.n, p)
    with pytest.raises(fl.ConfigError, match="must be an int"):
        PaillierPublicKey(str(pub.n), pub.hs)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="p \\* q = n"):
        PaillierPrivateKey(pub, p, q + 2)
    not_residue = PaillierPublicKey(pub.n, (1 + pub.n) * pub.hs % (pub.n * pub.n))
    with pytest.raises(fl.ConfigError, match="not an n-th residue"):
        PaillierPrivateKey(not_residue, p, q)
    with pytest.raises(fl.ConfigError, match="`key_holder` must be a PaillierKeyHolder"):
        PaillierAggregator(pub)  # type: ignore[arg-type]


def test_key_holder_refuses_another_key(holder: PaillierKeyHolder) -> None:
    other = PaillierKeyHolder()
    q = PackedQuantizer(1.0, 1)
    req = DecryptionRequest(holder.public_key, q, 3, 1, (holder.public_key.encrypt(0),))
    with pytest.raises(fl.ConfigError, match="under key"):
        other.decrypt_sum(req)


# --------------------------------------------------------------- tampering
class _TamperingAggregator(PaillierAggregator):
    """Runs a round whose client messages pass through ``tamper`` first."""

    tamper: object = None

    def client_session(self, client_id: int, delta: torch.Tensor) -> object:  # type: ignore[override]
        inner = super().client_session(client_id, delta)
        outer = self

        class _Session:
            def respond(self, message: object) -> object:
                reply = inner.respond(message)
                return outer.tamper(reply) if client_id == 0 else reply  # type: ignore[operator]

        return _Session()


def _with_ciphertexts(reply: PaillierInput, cts: list[object]) -> PaillierInput:
    return PaillierInput(reply.client_id, tuple(cts), reply.ciphertext_bytes)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r, key: [0, *r.ciphertexts[1:]], "not an element of Z\\*_\\(n\\^2\\)"),
        (lambda r, key: [key.n * key.n, *r.ciphertexts[1:]], "not an element"),
        (lambda r, key: [key.n * 7, *r.ciphertexts[1:]], "not an element"),
        (lambda r, key: ["x", *r.ciphertexts[1:]], "must be an int"),
        (lambda r, key: list(r.ciphertexts[:-1]), "sent 1 ciphertexts; expected 2"),
        (lambda r, key: [*r.ciphertexts, r.ciphertexts[0]], "sent 3 ciphertexts; expected 2"),
    ],
)
def test_malformed_ciphertexts_are_protocol_errors(
    holder: PaillierKeyHolder, edit: object, match: str
) -> None:
    agg = _TamperingAggregator(holder)
    key = holder.public_key
    agg.tamper = lambda r: _with_ciphertexts(r, edit(r, key))  # type: ignore[operator]
    ups = _updates(3, 150, 1)  # 150 values, 102 per ciphertext (16 bits + 2 headroom = 18: 113)
    assert agg.quantizer(3).n_ciphertexts(150) == 2
    with pytest.raises(fl.ProtocolError, match=match):
        agg.aggregate(ups)


def test_tampered_valid_ciphertexts_are_caught_by_the_key_holder(
    holder: PaillierKeyHolder,
) -> None:
    key = holder.public_key
    q = PackedQuantizer(1.0, 3)
    dim = q.slots + 10  # two plaintexts, the second with padding slots

    def request(*plains: int) -> DecryptionRequest:
        return DecryptionRequest(key, q, dim, 3, tuple(key.encrypt(m) for m in plains))

    assert holder.decrypt_sum(request(3 * q.levels, 5)).tolist()[:2] == [3 * q.levels, 0]
    # A slot above what three 16-bit values can sum to.
    with pytest.raises(fl.AggregationError, match="exceeds 3 x 65535"):
        holder.decrypt_sum(request(3 * q.levels + 1, 0))
    # Bits above the last slot of a plaintext.
    with pytest.raises(fl.AggregationError, match="overflows the packing layout"):
        holder.decrypt_sum(request(1 << (q.slots * q.slot_bits), 0))
    # A padding slot of the last plaintext.
    with pytest.raises(fl.AggregationError, match="padding"):
        holder.decrypt_sum(request(0, 1 << (q.slot_bits * 10)))


# ---------------------------------------------------------------- overflow
def test_too_many_clients_for_the_headroom(holder: PaillierKeyHolder) -> None:
    agg = PaillierAggregator(holder, max_clients=3)
    assert agg.quantizer(2).headroom == 2
    with pytest.raises(fl.ConfigError, match="4 clients selected but `max_clients` is 3"):
        agg.aggregate(_updates(4, 5, 0))
    q = PackedQuantizer(1.0, 3)
    cts = tuple(holder.public_key.encrypt(0) for _ in range(q.n_ciphertexts(5)))
    with pytest.raises(fl.AggregationError, match="overflows the slots"):
        holder.decrypt_sum(DecryptionRequest(holder.public_key, q, 5, 4, cts))
    with pytest.raises(fl.ProtocolError, match="expected 1 summed ciphertexts"):
        holder.decrypt_sum(DecryptionRequest(holder.public_key, q, 5, 2, cts * 2))


def test_values_beyond_the_clip_range_are_errors(holder: PaillierKeyHolder) -> None:
    agg = PaillierAggregator(holder, clip_range=0.5)
    ups = [ClientUpdate(0, torch.tensor([0.2, 0.7]), 1)]
    with pytest.raises(fl.QuantizationRangeError, match="client 0.*\\[-0.5, 0.5\\]"):
        agg.aggregate(ups)
    with pytest.raises(fl.AggregationError, match="client 0.*NaN"):
        agg.aggregate([ClientUpdate(0, torch.tensor([float("nan")]), 1)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 0}, "`bits` must be an int in \\[1, 32\\]; got 0"),
        ({"bits": 33}, "`bits` must be an int in \\[1, 32\\]; got 33"),
        ({"clip_range": -1.0}, "`clip_range` must be a positive finite number"),
        ({"max_clients": 0}, "`max_clients` must be a positive int or None; got 0"),
    ],
)
def test_bad_configuration(
    holder: PaillierKeyHolder, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        PaillierAggregator(holder, **kwargs)  # type: ignore[arg-type]


def test_distributed_dp_is_refused(holder: PaillierKeyHolder) -> None:
    dp = fl.DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.0, distributed=True)
    with pytest.raises(fl.ConfigError, match="distributed DP"):
        PaillierAggregator(holder, dp=dp)


def test_networked_mode_refuses_paillier(holder: PaillierKeyHolder) -> None:
    from fl.network import NetworkConfig, NetworkServer

    with pytest.raises(fl.ConfigError, match="PaillierAggregator runs in simulation only"):
        NetworkServer(
            torch.nn.Linear(2, 2),
            NetworkConfig(world_size=2),
            aggregator=PaillierAggregator(holder),
        )

""":class:`~fl.SecretSharingAggregator` over Flower, the node side (stages ``ss_*``).

``ss_train`` (training and a fresh X25519 key pair), ``ss_input`` (the
weighted update in fixed point over Z_2^64, split into ``P`` additive shares:
``P - 1`` 16-byte AES-CTR seeds and one explicit share, each AES-GCM
encrypted to its party under an ephemeral X25519 exchange bound to the
round, sender and party) and ``ss_sum`` (a party decrypts the relayed shares
and returns their sum mod 2^64). The steps, cost and security are in
:mod:`fl.flower`'s docstring.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl.aggregators import prepare_contribution
from fl.dp import DifferentialPrivacy
from fl.errors import ProtocolError
from fl.flower.records import (
    _DELTA,
    _KEY_BYTES,
    _SEED_BYTES,
    _STATE,
    _TAG,
    RECORD,
    SS_INPUT,
    SS_SUM,
    SS_TRAIN,
    _blobs,
    _clear_state,
    _config,
    _get,
    _ints,
    _reply,
)
from fl.flower.training import _train
from fl.secure_aggregation import _ad, _kdf, _keystream, _nonce


def _expand64(seed: bytes, dim: int) -> np.ndarray:
    """``dim`` elements of Z_2^64 (``uint64``): the AES-128-CTR keystream under ``seed``."""
    if dim == 0:
        return np.zeros(0, dtype=np.uint64)
    stream = _keystream(seed).update(bytes(8 * dim))
    return np.frombuffer(stream, dtype=np.uint64).copy()


def _ss_key(sk: Any, pk: bytes, round_id: bytes) -> bytes:
    """AES-128 key of one sender -> party channel: KDF of the X25519 secret, bound to the round."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return _kdf(b"ss-share", round_id, sk.exchange(X25519PublicKey.from_public_bytes(pk)), 16)


def _ss_encrypt(
    sk: Any, pk: bytes, round_id: bytes, sender: int, party: int, role: int, data: bytes
) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(_ss_key(sk, pk, round_id)).encrypt(
        _nonce(role), data, _ad(sender, party, round_id)
    )


def _ss_decrypt(
    sk: Any, pk: bytes, round_id: bytes, sender: int, party: int, role: int, ct: bytes
) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(_ss_key(sk, pk, round_id)).decrypt(
            _nonce(role), ct, _ad(sender, party, round_id)
        )
    except InvalidTag as exc:
        raise ProtocolError(
            f"party {party}: the share from client {sender} fails authentication"
        ) from exc


def _ss_shares(encoded: np.ndarray, n_parties: int) -> tuple[list[bytes], np.ndarray]:
    """Additive shares of ``encoded`` (``uint64``): ``n_parties - 1`` seeds and one explicit share.

    Party ``j < n_parties - 1`` gets a fresh 16-byte seed ``k_j`` (from
    ``os.urandom``); its share is ``PRG(k_j)``. The last party's share is
    ``encoded - sum_j PRG(k_j)`` (mod 2^64), uniformly random on its own.
    """
    seeds = [os.urandom(_SEED_BYTES) for _ in range(n_parties - 1)]
    last = encoded.copy()
    for seed in seeds:
        last -= _expand64(seed, encoded.shape[0])  # uint64 arithmetic wraps: Z_2^64
    return seeds, last


def _ss_client_input(msg: Message, context: Context, rec: ConfigRecord) -> RecordDict:
    """Stage ``ss_input`` on a node: weight, encode, split and encrypt the update to the parties."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from smpc import FixedPoint

    st = context.state.config_records.get(_STATE)
    d = context.state.array_records.get(_DELTA)
    if st is None or d is None or st.get("stage") != SS_TRAIN:
        raise ProtocolError("share request without a trained update on this node")
    me = int(_get(st, "client_id", int))
    round_id = _get(st, "round_id", bytes)
    if _get(rec, "round_id", bytes) != round_id:
        raise ProtocolError("share request for another round")
    parties, pks = _ints(rec, "parties"), _blobs(rec, "party_pks")
    if len(parties) < 2 or len(parties) != len(pks) or len(set(parties)) != len(parties):
        raise ProtocolError(f"`parties` must be >= 2 distinct ids with one key each; got {parties}")
    if len(set(pks)) != len(pks) or any(len(k) != _KEY_BYTES for k in pks):
        raise ProtocolError("the parties' public keys must be distinct 32-byte X25519 keys")
    weight = float(_get(rec, "weight", float))
    frac_bits = int(_get(rec, "frac_bits", int))
    clip = float(st.get("dp_clip", 0.0))  # type: ignore[arg-type]
    dp = DifferentialPrivacy(clip_norm=clip, noise_multiplier=0.0) if clip > 0 else None
    delta = torch.from_numpy(np.asarray(d["delta"].numpy(), dtype=np.float32))
    x = prepare_contribution(delta, weight, dp, name=f"node {me}'s update")
    encoded = FixedPoint(frac_bits).encode(x.to(torch.float64), name=f"node {me}'s weighted update")
    seeds, last = _ss_shares(encoded.numpy().view(np.uint64), len(parties))
    eph = X25519PrivateKey.generate()  # fresh per round: one key per (node, party, round)
    seed_cts = [
        _ss_encrypt(eph, pks[j], round_id, me, parties[j], j, seeds[j])
        for j in range(len(parties) - 1)
    ]
    j = len(parties) - 1
    share_ct = _ss_encrypt(eph, pks[j], round_id, me, parties[j], j, last.tobytes())
    if me in parties:  # a party keeps its key for the sum stage; its update is gone
        del context.state[_DELTA]
        context.state[_STATE] = _config(
            {"stage": SS_SUM, "client_id": me, "round_id": round_id, "sk": st["sk"]}
        )
    else:
        _clear_state(context)
    out = RecordDict(
        {
            RECORD: _config(
                {"stage": SS_INPUT, "eph": eph.public_key().public_bytes_raw(), "cts": seed_cts}
            )
        }
    )
    out[RECORD + ".arrays"] = ArrayRecord(
        {"share": Array(np.frombuffer(share_ct, dtype=np.uint8).copy())}
    )
    return out


def _ss_party_sum(msg: Message, context: Context, rec: ConfigRecord) -> RecordDict:
    """Stage ``ss_sum`` on a party: decrypt the relayed shares and return their sum (mod 2^64)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    st = context.state.config_records.get(_STATE)
    if st is None or st.get("stage") not in (SS_SUM, SS_TRAIN) or "sk" not in st:
        raise ProtocolError("sum request on a node that is not a party of this round")
    me = int(_get(st, "client_id", int))
    round_id = _get(st, "round_id", bytes)
    if _get(rec, "round_id", bytes) != round_id:
        raise ProtocolError("sum request for another round")
    sk = X25519PrivateKey.from_private_bytes(_get(st, "sk", bytes))
    role, last, dim = (
        int(_get(rec, "role", int)),
        int(_get(rec, "last", int)),
        int(_get(rec, "dim", int)),
    )
    if not 0 <= role <= last or dim < 0:
        raise ProtocolError(f"bad party role {role} of {last} or dimension {dim}")
    ids, ephs = _ints(rec, "ids"), _blobs(rec, "eph")
    if len(ids) != len(ephs) or not ids:
        raise ProtocolError(f"`ids` and `eph` must be non-empty and of one length; got {len(ids)}")
    total = np.zeros(dim, dtype=np.uint64)
    if role < last:
        cts = _blobs(rec, "cts")
        if len(cts) != len(ids):
            raise ProtocolError(f"{len(ids)} senders but {len(cts)} ciphertexts")
        for sender, eph, ct in zip(ids, ephs, cts, strict=True):
            seed = _ss_decrypt(sk, eph, round_id, sender, me, role, ct)
            total += _expand64(seed, dim)
    else:
        arrays = msg.content.array_records.get(RECORD + ".arrays")
        if arrays is None:
            raise ProtocolError("the sum request carries no shares")
        for sender, eph in zip(ids, ephs, strict=True):
            if str(sender) not in arrays:
                raise ProtocolError(f"the sum request lacks client {sender}'s share")
            blob = np.asarray(arrays[str(sender)].numpy())
            if blob.dtype != np.uint8 or blob.shape != (8 * dim + _TAG,):
                raise ProtocolError(f"client {sender}'s share has shape {blob.dtype}{blob.shape}")
            plain = _ss_decrypt(sk, eph, round_id, sender, me, role, blob.tobytes())
            total += np.frombuffer(plain, dtype=np.uint64)
    _clear_state(context)
    out = RecordDict({RECORD: ConfigRecord({"stage": SS_SUM})})
    out[RECORD + ".arrays"] = ArrayRecord({"y": Array(total)})
    return out


def _ss_mod(
    msg: Message, context: Context, call_next: Any, rec: ConfigRecord, stage: str
) -> Message:
    """The secret-sharing stages of :func:`secure_aggregation_mod`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if stage == SS_TRAIN:
        trained = _train(msg, context, call_next)
        if isinstance(trained, Message):
            return trained
        out, n = trained
        sk = X25519PrivateKey.generate()  # used only if the server makes this node a party
        context.state[_STATE] = _config(
            {
                "stage": SS_TRAIN,
                "client_id": int(_get(rec, "client_id", int)),
                "round_id": _get(rec, "round_id", bytes),
                "dp_clip": float(rec.get("dp_clip", 0.0)),  # type: ignore[arg-type]
                "sk": sk.private_bytes_raw(),
            }
        )
        content = RecordDict(
            {
                RECORD: ConfigRecord(
                    {"stage": SS_TRAIN, "num_examples": n, "pk": sk.public_key().public_bytes_raw()}
                )
            }
        )
        for k, m in out.content.metric_records.items():
            content[k] = m
        return _reply(content, msg)
    if stage == SS_INPUT:
        return _reply(_ss_client_input(msg, context, rec), msg)
    return _reply(_ss_party_sum(msg, context, rec), msg)

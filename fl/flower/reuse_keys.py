"""Masking in two exchanges on long-term keys (``reuse_keys=True``), the node side.

A node keeps two long-term X25519 key pairs in ``context.state`` across rounds
and the DH secrets with each peer's long-term keys beside them, computed
once. ``fast_keys`` (train, keep the update, send the long-term public keys)
and ``fast_input`` open the first round; then every round is ``fast_train``
(train, Shamir-share a fresh self-mask seed to the neighbours, send the
masked update with pair masks from this round's keys
``KDF(DH(s_sk_u, s_pk_v), round_id)``) and ``fast_unmask`` (the survivors'
seed shares and the dropped neighbours' pair keys). The steps, cost and
security are in :mod:`fl.flower`'s docstring ("Masking in two exchanges").
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl import shamir
from fl.aggregators import Stage, prepare_contribution
from fl.clipping import Quantizer
from fl.dp import DifferentialPrivacy, GaussianNoise
from fl.errors import InsufficientClientsError, ProtocolError
from fl.flower.records import (
    _DELTA,
    _KEY_BYTES,
    _LONG_TERM,
    _STATE,
    FAST_INPUT,
    FAST_KEYS,
    FAST_TRAIN,
    FAST_UNMASK,
    RECORD,
    _blobs,
    _clear_state,
    _config,
    _get,
    _ints,
    _pairs,
    _reply,
    _setup_from,
    _share,
)
from fl.flower.training import _train
from fl.secure_aggregation import MaskingSetup, _ad, _kdf, _Masker, _nonce, _self_key
from fl.shamir import SHARE_BYTES


def _long_term_keys(context: Context, *, create: bool) -> tuple[Any, Any, bytes]:
    """The node's long-term X25519 key pairs ``(c_sk, s_sk)`` and public keys ``c_pk || s_pk``.

    Made once and kept in the context; the public halves are kept beside them
    so that a round computes no public key.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    rec = context.state.config_records.get(_LONG_TERM)
    if rec is None:
        if not create:
            raise ProtocolError("this node has no long-term keys (it restarted?)")
        c, s = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        pks = _public(c) + _public(s)
        context.state[_LONG_TERM] = ConfigRecord(
            {"c_sk": c.private_bytes_raw(), "s_sk": s.private_bytes_raw(), "pks": pks}
        )
        return c, s, pks
    c = X25519PrivateKey.from_private_bytes(_get(rec, "c_sk", bytes))
    s = X25519PrivateKey.from_private_bytes(_get(rec, "s_sk", bytes))
    got = rec.get("pks")
    pks = got if isinstance(got, bytes) and len(got) == 2 * _KEY_BYTES else _public(c) + _public(s)
    return c, s, pks


def _public(sk: Any) -> bytes:
    return bytes(sk.public_key().public_bytes_raw())


_PEER_CACHE = 4096  # long-term DH secrets kept per node (64 + 64 bytes each)


def _peer_secrets(
    context: Context, c_sk: Any, s_sk: Any, roster: Mapping[int, tuple[bytes, bytes]]
) -> dict[int, tuple[bytes, bytes]]:
    """The long-term X25519 secrets ``(DH(c_sk, c_pk_v), DH(s_sk, s_pk_v))`` with each peer.

    They depend only on the two long-term key pairs, so a node computes each
    once and keeps it in ``context.state`` beside its private keys (the same
    secrecy as those keys; at most ``_PEER_CACHE`` peers, oldest dropped
    first). Every round derives its own keys from them with the round id.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    rec = context.state.config_records[_LONG_TERM]
    blob = rec.get("peers", b"")
    if not isinstance(blob, bytes) or len(blob) % 128:
        blob = b""
    cache = {blob[i : i + 64]: blob[i + 64 : i + 128] for i in range(0, len(blob), 128)}
    out: dict[int, tuple[bytes, bytes]] = {}
    grew = False
    for v, (c_pk, s_pk) in roster.items():
        hit = cache.get(c_pk + s_pk)
        if hit is None:
            hit = c_sk.exchange(X25519PublicKey.from_public_bytes(c_pk)) + s_sk.exchange(
                X25519PublicKey.from_public_bytes(s_pk)
            )
            cache[c_pk + s_pk] = hit
            grew = True
        out[v] = (hit[:32], hit[32:])
    if grew:
        items = list(cache.items())[-_PEER_CACHE:]
        rec["peers"] = b"".join(k + v for k, v in items)
    return out


_FastKeys = tuple[Any, Any, MaskingSetup, int, dict[int, tuple[bytes, bytes]]]
"""A fast round's ``(c_sk, s_sk, setup, node index, peers' long-term public keys)``."""


def _fast_roster(context: Context, rec: ConfigRecord) -> _FastKeys:
    """Check a fast round's setup and key roster: ``(c_sk, s_sk, setup, me, peers' keys)``."""
    c_sk, s_sk, own = _long_term_keys(context, create=False)
    setup = _setup_from(rec)
    me = int(_get(rec, "client_id", int))
    ids, c_pks, s_pks = _ints(rec, "ids"), _blobs(rec, "c_pks"), _blobs(rec, "s_pks")
    if not len(ids) == len(c_pks) == len(s_pks):
        raise ProtocolError("key roster: ids and keys differ in length")
    roster = dict(zip(ids, zip(c_pks, s_pks, strict=True), strict=True))
    if roster.get(me) != (own[:_KEY_BYTES], own[_KEY_BYTES:]):
        raise ProtocolError(f"node {me}: the roster does not hold this node's long-term keys")
    del roster[me]
    if me not in setup.participants or not set(roster) <= set(setup.neighbours):
        raise ProtocolError(f"node {me}: roster names non-neighbours or omits this node")
    if len(roster) + 1 < setup.threshold or setup.threshold < 1:
        raise InsufficientClientsError(FAST_TRAIN, len(roster) + 1, setup.threshold)
    return c_sk, s_sk, setup, me, roster


def _fast_train(msg: Message, context: Context, call_next: Any, rec: ConfigRecord) -> Message:
    """Fast stage 0 on a node: train, share a fresh self-mask seed, send the masked update."""
    keys = _fast_roster(context, rec)  # checked before the (long) training
    trained = _train(msg, context, call_next, keep=False)
    if isinstance(trained, Message):
        return trained
    out, n, delta = trained
    return _fast_masked_input(msg, context, rec, keys, delta, n, out.content, FAST_TRAIN)


def _fast_keys(msg: Message, context: Context, call_next: Any) -> Message:
    """First stage of a round that (re)learns keys: train, keep the update, send the keys."""
    trained = _train(msg, context, call_next)
    if isinstance(trained, Message):
        return trained
    out, n = trained
    _, _, pks = _long_term_keys(context, create=True)
    context.state[_STATE] = ConfigRecord({"stage": FAST_INPUT, "num_examples": n})
    content = RecordDict(
        {
            RECORD: ConfigRecord(
                {
                    "stage": FAST_KEYS,
                    "num_examples": n,
                    "lt_c_pk": pks[:_KEY_BYTES],
                    "lt_s_pk": pks[_KEY_BYTES:],
                }
            )
        }
    )
    for k, m in out.content.metric_records.items():
        content[k] = m
    return _reply(content, msg)


def _fast_input(msg: Message, context: Context, rec: ConfigRecord) -> Message:
    """Second stage of such a round: the kept update, masked as in :func:`_fast_train`."""
    st = context.state.config_records.get(_STATE)
    d = context.state.array_records.get(_DELTA)
    if st is None or d is None or st.get("stage") != FAST_INPUT:
        raise ProtocolError("input request without a trained update on this node")
    keys = _fast_roster(context, rec)
    delta = torch.from_numpy(np.asarray(d["delta"].numpy(), dtype=np.float32))
    n = int(_get(st, "num_examples", int))
    _clear_state(context)
    return _fast_masked_input(msg, context, rec, keys, delta, n, RecordDict(), FAST_INPUT)


def _fast_masked_input(
    msg: Message,
    context: Context,
    rec: ConfigRecord,
    keys: _FastKeys,
    delta: torch.Tensor,
    n: int,
    metrics: RecordDict,
    stage: str,
) -> Message:
    """Encrypted shares of a fresh self-mask seed and the masked update (the reply of ``stage``)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    c_sk, s_sk, setup, me, roster = keys
    holders = [*sorted(roster), me]
    weight = float(_get(rec, "weight", float))
    clip = float(rec.get("dp_clip", 0.0))  # type: ignore[arg-type]
    dp = DifferentialPrivacy(clip_norm=clip, noise_multiplier=0.0) if clip > 0 else None
    rid = setup.round_id
    peers = sorted(roster)
    secrets_of = _peer_secrets(context, c_sk, s_sk, roster)
    enc = {v: _kdf(b"enc", rid, secrets_of[v][0], 32) for v in peers}
    pair = {v: _kdf(b"mask", rid, secrets_of[v][1], 16) for v in peers}  # = _pair_key
    # a fresh self-mask seed, Shamir-shared among the holders, each share encrypted to its holder
    x_of = {v: setup.participants.index(v) + 1 for v in holders}
    b_seed = secrets.token_bytes(32)
    b_sh = shamir.split(int.from_bytes(b_seed, "big"), setup.threshold, [x_of[v] for v in holders])
    cts = [
        AESGCM(enc[v]).encrypt(
            _nonce(me), b_sh[x_of[v]].to_bytes(SHARE_BYTES, "big"), _ad(me, v, rid)
        )
        for v in peers
    ]
    # the masked input, as MaskingClient.masked_input computes it (pair masks with every neighbour)
    quantizer = Quantizer(setup.clip_range, len(setup.participants), setup.bits)
    name = f"node {me}'s weighted update"
    if dp is None:
        y = quantizer.quantize(delta, multiplier=weight, name=name)
    else:
        x = prepare_contribution(delta, weight, dp, name=name)
        if setup.noise_std > 0:
            x = x + GaussianNoise().normal(setup.noise_std, x.shape, x.dtype)
        y = quantizer.quantize(x, name=name)
    plus: list[bytes] = [_self_key(b_seed, rid)]
    minus: list[bytes] = []
    for v in peers:
        (plus if me < v else minus).append(pair[v])
    _Masker().apply(y, plus, minus)
    context.state[_STATE] = _config(
        {
            "stage": FAST_UNMASK,
            "client_id": me,
            "round_id": rid,
            "participants": list(setup.participants),
            "threshold": setup.threshold,
            "peers": peers,
            "enc": b"".join(enc[v] for v in peers),  # this round's channel keys
            "pair": b"".join(pair[v] for v in peers),  # this round's pair-mask keys
            "own_b": b_sh[x_of[me]].to_bytes(SHARE_BYTES, "big"),
        }
    )
    content = RecordDict(
        {
            RECORD: _config({"stage": stage, "num_examples": n, "ids": peers, "cts": cts}),
            RECORD + ".arrays": ArrayRecord({"y": Array(quantizer.pack(y))}),
        }
    )
    for k, m in metrics.metric_records.items():
        content[k] = m
    return _reply(content, msg)


def _fast_unmask(msg: Message, context: Context, rec: ConfigRecord) -> Message:
    """Fast stage 1 on a node: shares of the survivors' self-mask seeds, the dropped pairs' keys."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    st = context.state.config_records.get(_STATE)
    if st is None or st.get("stage") != FAST_UNMASK:
        raise ProtocolError("no secure-aggregation round in progress on this node")
    me, round_id = int(_get(st, "client_id", int)), _get(st, "round_id", bytes)
    threshold = int(_get(st, "threshold", int))
    participants = _ints(st, "participants")
    peers = _ints(st, "peers")
    enc_blob, pair_blob = _get(st, "enc", bytes), _get(st, "pair", bytes)
    if len(enc_blob) != 32 * len(peers) or len(pair_blob) != 16 * len(peers):
        raise ProtocolError(f"node {me}: corrupt round state")
    enc = {v: enc_blob[32 * i : 32 * i + 32] for i, v in enumerate(peers)}
    pair_keys = {v: pair_blob[16 * i : 16 * i + 16] for i, v in enumerate(peers)}
    survivors, dropped = set(_ints(rec, "survivors")), set(_ints(rec, "dropped"))
    if survivors & dropped or not (survivors | dropped) <= set(participants):
        raise ProtocolError(f"node {me}: inconsistent survivors and dropped nodes")
    if me not in survivors:
        raise ProtocolError(f"node {me} sent its input but is not listed as a survivor")
    if len(survivors) < threshold:
        raise InsufficientClientsError(Stage.UNMASK.value, len(survivors), threshold)
    held = {me: int.from_bytes(_get(st, "own_b", bytes), "big")}
    for u, ct in _pairs(_ints(rec, "ids"), _blobs(rec, "cts"), "cts").items():
        if u not in enc:
            raise ProtocolError(f"node {me}: share from unknown node {u}")
        try:
            plain = AESGCM(enc[u]).decrypt(_nonce(u), ct, _ad(u, me, round_id))
        except InvalidTag as exc:
            raise ProtocolError(f"node {me}: the share from {u} fails authentication") from exc
        held[u] = int.from_bytes(plain, "big")
    b = {u: held[u] for u in sorted(survivors) if u in held}
    pair = {w: pair_keys[w] for w in sorted(dropped) if w in pair_keys}
    _clear_state(context)
    content = RecordDict(
        {
            RECORD: _config(
                {
                    "stage": FAST_UNMASK,
                    "b_ids": list(b),
                    "b": [_share(v) for v in b.values()],
                    "p_ids": list(pair),
                    "p": list(pair.values()),
                }
            )
        }
    )
    return _reply(content, msg)

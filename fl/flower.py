"""``fl``'s secure aggregation and DP on Flower's engine: a server workflow and a client mod.

Top layer (``fl``), optional: needs the ``flower`` extra
(``pip install 'smpc-fl[flower]'``, which pins ``flwr[simulation]==1.41.0``).
Importing :mod:`fl` never imports Flower; importing this module does.

A Flower ``ServerApp`` gets :class:`~fl.MaskingAggregator`,
:class:`~fl.SecretSharingAggregator` (or the plain reference) under any
:mod:`fl.strategy` by calling a :class:`SecureAggregation`
workflow from its ``main``; the ``ClientApp`` adds :func:`secure_aggregation_mod`
to its mods and keeps its usual ``@app.train()`` function::

    workflow = SecureAggregation(fl.MaskingAggregator(), fl.FedAvg(), num_rounds=3)

    @server_app.main()
    def main(grid, context):
        arrays, history = workflow(grid, ArrayRecord(model.state_dict()))

    client_app = ClientApp(mods=[secure_aggregation_mod])

Protocol (one Flower round; every arrow is one ``grid.send_and_receive`` with a
timeout; a node whose reply carries an error, fails to decode or does not
arrive in time is a dropout of that stage, exactly as in the in-process
simulation of :class:`~fl.MaskingAggregator`):

    0. ``ADVERTISE_KEYS`` + training: the server sends the global model
       (``ArrayRecord "arrays"``), the strategy's fit configuration
       (``ConfigRecord "config"``) and the round setup (``ConfigRecord
       "fl.secagg"``). The mod calls the user's training (the only stage that
       does), keeps ``delta = trained - global`` in ``context.state``, makes the
       two X25519 key pairs and replies with the public keys and the sample
       count (public metadata, as in FedAvg). The server derives the weights
       from the counts of the nodes that answered.
    1. ``SHARE_KEYS``, 2. ``INPUT`` (which also carries the node's weight; the
       masked vector travels as an ``ArrayRecord`` of ``bits/8`` bytes per
       parameter), 3. ``UNMASK``: the stages of :mod:`fl.secure_aggregation`,
       computed by its :class:`~fl.secure_aggregation.MaskingServer` and
       :class:`~fl.secure_aggregation.MaskingClient`. Between messages the
       client's protocol state (keys, held shares, the update) lives in
       ``context.state`` as a ``ConfigRecord`` and an ``ArrayRecord``, and is
       erased when the round ends.

    With :class:`~fl.PlainAggregator` the round is stage 0 (training, sample
    count) and one ``INPUT`` stage carrying ``w_i * delta_i`` in float32.

    With :class:`~fl.SecretSharingAggregator` (``P = parties`` aggregation
    parties, which are ``P`` of the round's own SuperNodes) the round has
    three exchanges:

    0. ``ss_train``: training, as above; every node also makes an X25519 key
       pair (its ``sk`` stays in ``context.state``) and replies with the public
       key and its sample count. The server picks ``P`` parties among the nodes
       that answered (public randomness).
    1. ``ss_input``: the server sends each node its weight ``w_i``,
       ``frac_bits`` and the parties' ids and public keys. The node encodes
       ``x_i = w_i * delta_i`` in fixed point (``smpc``'s encoding: the
       in-process aggregator's values exactly) in Z_2^64 and splits it into
       ``P`` additive shares: a fresh 16-byte seed for each of parties
       ``0..P-2`` (their share is ``AES-CTR(seed)``) and the explicit share
       ``x_i - sum_j AES-CTR(seed_j)`` for party ``P-1``. Each share is
       encrypted to its party with AES-GCM under a key derived from an
       ephemeral X25519 exchange with the party's key, bound to the round,
       sender and party (associated data). The reply holds the ciphertexts
       only.
    2. ``ss_sum``: the server relays to each party the ciphertexts addressed
       to it from the nodes whose shares arrived (the survivors ``S``); the
       party decrypts, adds its shares mod 2^64 and returns the sum. The
       server adds the ``P`` sums, decodes, and divides by the survivors'
       total weight (:meth:`~fl.Aggregator.finalize`, which adds the central
       DP noise when configured).

    Dropouts: a node that fails in stage 0 or 1 is left out (stage 1: still
    weighted, as in the in-process aggregator); a party that fails its own
    input still serves as a party. A party that does not return its sum
    fails the round (additive shares have no threshold): too few parties is
    :class:`~fl.InsufficientClientsError` naming stage ``sum``.

Masking in two exchanges (``reuse_keys=True``, :class:`~fl.MaskingAggregator`):
    Every node keeps two long-term X25519 key pairs (``c``, ``s``) in
    ``context.state`` across rounds (the private halves never leave it), and
    the DH secrets with each peer's long-term keys beside them, computed once.
    The first round (and any round after a node failed in ``fast_train``,
    which may have lost its keys) takes three exchanges: ``fast_keys`` (the
    node trains, keeps its update and replies with its long-term public keys
    ``c_pk``, ``s_pk`` and its sample count; the server weighs the nodes that
    answered by those counts), ``fast_input`` (stage 0 below without the
    training) and ``fast_unmask``. While every selected node's keys and
    sample count are known, a round takes two exchanges:

    0. ``fast_train``: the server sends the model, the round setup (a fresh
       random ``round_id``, neighbours, threshold ``t``, the node's weight
       from the sample counts of its previous round) and the neighbours'
       long-term keys. The node trains, draws a fresh 256-bit self-mask seed
       ``b_u``, Shamir-shares it ``t``-of-holders and encrypts each share to
       its holder under ``KDF(DH(c_sk_u, c_pk_v), round_id)``, and replies
       with the shares and ``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` over
       *all* its neighbours, ``s_uv = KDF(DH(s_sk_u, s_pk_v), round_id)``.
       ``U2`` = the nodes that answered; need ``|U2| >= t``. A node that
       fails here is weighted but not summed (the in-process aggregator's
       dropout at ``INPUT``).
    1. ``fast_unmask``: the server routes the shares and announces ``U2``
       and ``D`` (the others). Each node returns its shares of ``b_u`` for
       ``u in U2`` and, for each neighbour ``w in D``, the round's pair key
       ``s_uw`` (a per-round KDF output; the long-term secret never leaves
       the node). The server removes the self masks and the dropped pairs'
       masks. With ``D`` empty any ``t`` replies rebuild every self mask, so
       the server stops reading at the ``t``-th.

    What changes: the Shamir shares of ``s_sk`` (and the ``share_keys``
    exchange) are gone, because ``s_sk`` is never rebuilt; a dropped node's
    pair masks are removed with the keys its live neighbours hand over. So a
    node in ``U2`` that fails at ``fast_unmask`` while a neighbour of it is in
    ``D`` ends the round (an :class:`~fl.AggregationError` naming it; the
    four-stage protocol survives that case). Late inputs stay hidden: a
    dropped node's self-mask seed was never delivered to anyone. The
    security model is the four-stage protocol's (semi-honest; the server and
    fewer than ``t`` colluding holders learn only the sum of ``U2``).

    The server applies the mean update with the strategy
    (``strategy.apply(global, mean_delta)``), records a
    :class:`~fl.RoundResult` and, when too few nodes survive a stage, raises
    :class:`~fl.InsufficientClientsError` naming the stage or (with
    ``on_failure="record"``) keeps the model and records a failed round.

Cost:
    Four request/reply exchanges per round with masking (Flower's SecAgg+
    takes four too), two with ``reuse_keys=True`` after the first round,
    three with secret sharing, two with the plain aggregator. Upload per
    node: the masked vector (``bits/8`` bytes per parameter plus the ``.npy``
    header of Flower's ``Array``) and ``~ 64 + 262 k`` bytes of keys and
    encrypted shares for ``k`` neighbours (``~ 82 k`` with reused keys; see
    :mod:`fl.secure_aggregation`); with secret sharing 8 bytes per parameter
    (one Z_2^64 share) plus ``32 + 32 (P - 1) + 16`` bytes, and each party
    uploads its sum (8 bytes per parameter) once more.

Security:
    That of :class:`~fl.MaskingAggregator` (semi-honest server and clients,
    Bonawitz et al. CCS 2017 with the SecAgg+ graphs of Bell et al. CCS 2020):
    Flower's SuperLink routes opaque AES-GCM ciphertexts and masked vectors and
    learns the sum of the survivors' updates only. With secret sharing: that
    of :class:`~fl.SecretSharingAggregator` (semi-honest; the server and any
    ``P - 1`` colluding parties learn only the sum; all ``P`` parties with the
    server learn every update); the server sees ciphertexts and the parties'
    sums (uniformly random but for their total); a relayed ciphertext that was
    changed fails AES-GCM authentication at the party. Every field is decoded by
    type (bytes, ints, floats, ``numpy`` arrays loaded without pickle); nothing
    is unpickled.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "fl.flower needs Flower: install the `flower` extra "
        "(pip install 'smpc-fl[flower]', i.e. flwr[simulation]==1.41.0)"
    ) from exc

from fl import shamir
from fl.aggregators import (
    Aggregator,
    InputRequest,
    PlainAggregator,
    PlainInput,
    SecretSharingAggregator,
    Stage,
    prepare_contribution,
)
from fl.clipping import Quantizer
from fl.dp import DifferentialPrivacy, GaussianNoise
from fl.errors import (
    AggregationError,
    ConfigError,
    InsufficientClientsError,
    ProtocolError,
    QuantizationRangeError,
)
from fl.secure_aggregation import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    MaskingAggregator,
    MaskingClient,
    MaskingServer,
    MaskingSetup,
    ShareDelivery,
    UnmaskRequest,
    UnmaskShares,
    _ad,
    _ClientState,
    _kdf,
    _keystream,
    _Masker,
    _nonce,
    _self_key,
)
from fl.server import FailurePolicy
from fl.shamir import SHARE_BYTES
from fl.strategy import FedAvg, Strategy
from fl.types import AggregateResult, History, RoundResult

__all__ = ["SecureAggregation", "flatten_arrays", "secure_aggregation_mod", "unflatten_arrays"]

RECORD = "fl.secagg"
"""Key of the ``ConfigRecord`` that carries the protocol in each message."""
_STATE = "fl.secagg.state"
_DELTA = "fl.secagg.delta"
_TRAIN = "train"
_TRAINED = "trained"  # stage 0 with the plain aggregator (no keys)
# the secret-sharing aggregator's three stages (train + key, shares, party sums)
SS_TRAIN, SS_INPUT, SS_SUM = "ss_train", "ss_input", "ss_sum"
_SS_STAGE_NAMES = {SS_TRAIN: "train", SS_INPUT: "input", SS_SUM: "sum"}
_KEY_BYTES = 32  # an X25519 public key
_SEED_BYTES = 16  # an AES-128 key expanded into a share
_TAG = 16  # AES-GCM tag
# the two-exchange masking round with reused keys (SecureAggregation(reuse_keys=True))
FAST_TRAIN, FAST_UNMASK = "fast_train", "fast_unmask"
# the first reused-keys round (or one after a node lost its keys): train + keys, input, unmask
FAST_KEYS, FAST_INPUT = "fast_keys", "fast_input"
_LONG_TERM = "fl.secagg.keys"  # the node's long-term key pairs, kept across rounds


# ---------------------------------------------------------------- arrays
def flatten_arrays(record: ArrayRecord) -> torch.Tensor:
    """The arrays of ``record``, in key order, as one flat float32 vector."""
    parts = [np.asarray(a.numpy(), dtype=np.float32).reshape(-1) for a in record.values()]
    # numpy's single-threaded copy: torch.cat's thread pool stalls on a busy machine
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0)


def unflatten_arrays(vector: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """``vector`` cut into arrays with the keys, shapes and dtypes of ``like``."""
    out: dict[str, Array] = {}
    start = 0
    v = vector.detach().to(torch.float32).numpy()
    for key, arr in like.items():
        ref = arr.numpy()
        n = int(ref.size)
        out[key] = Array(v[start : start + n].reshape(ref.shape).astype(ref.dtype, copy=False))
        start += n
    if start != v.size:
        raise ConfigError(f"`vector` has {v.size} values; the arrays hold {start}")
    return ArrayRecord(out)


# ------------------------------------------------------------- the codec
def _ints(rec: ConfigRecord, key: str) -> list[int]:
    v = rec.get(key, [])
    if not isinstance(v, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in v
    ):
        raise ProtocolError(f"field `{key}` must be a list of ints; got {type(v).__name__}")
    return [int(x) for x in v]


def _blobs(rec: ConfigRecord, key: str) -> list[bytes]:
    v = rec.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, bytes) for x in v):
        raise ProtocolError(f"field `{key}` must be a list of bytes; got {type(v).__name__}")
    return [bytes(x) for x in v if isinstance(x, bytes)]


def _get(rec: ConfigRecord, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in rec:
        raise ProtocolError(f"field `{key}` is missing")
    v = rec[key]
    if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
        raise ProtocolError(f"field `{key}` must be {kind}; got {type(v).__name__}")
    return v


def _pairs(ids: list[int], vals: list[Any], what: str) -> dict[int, Any]:
    if len(ids) != len(vals):
        raise ProtocolError(f"`{what}`: {len(ids)} ids but {len(vals)} values")
    return dict(zip(ids, vals, strict=True))


def _share(x: int) -> bytes:
    return x.to_bytes(SHARE_BYTES, "big")


def _encode(msg: Any, cid: int) -> RecordDict:  # noqa: C901 - one branch per message kind
    """A protocol message as a Flower ``RecordDict`` (typed fields; arrays as ``ArrayRecord``)."""
    rec: dict[str, Any] = {"stage": str(msg.stage)}
    arrays: ArrayRecord | None = None
    if isinstance(msg, MaskingSetup):
        rec |= {
            "client_id": cid,
            "round_id": msg.round_id,
            "participants": list(msg.participants),
            "neighbours": list(msg.neighbours),
            "threshold": msg.threshold,
            "dim": msg.dim,
            "clip_range": msg.clip_range,
            "noise_std": msg.noise_std,
            "bits": msg.bits,
        }
    elif isinstance(msg, AdvertiseKeys):
        rec |= {"c_pk": msg.c_pk, "s_pk": msg.s_pk}
    elif isinstance(msg, KeyRoster):
        ids = sorted(msg.keys)
        rec |= {
            "ids": ids,
            "c_pks": [msg.keys[i][0] for i in ids],
            "s_pks": [msg.keys[i][1] for i in ids],
        }
    elif isinstance(msg, EncryptedShares):
        ids = sorted(msg.ciphertexts)
        rec |= {"ids": ids, "cts": [msg.ciphertexts[i] for i in ids]}
    elif isinstance(msg, ShareDelivery):
        ids = sorted(msg.ciphertexts)
        rec |= {"u2": list(msg.u2), "ids": ids, "cts": [msg.ciphertexts[i] for i in ids]}
    elif isinstance(msg, MaskedInput):
        arrays = ArrayRecord({"y": Array(np.ascontiguousarray(msg.y))})
    elif isinstance(msg, UnmaskRequest):
        rec |= {"survivors": list(msg.survivors), "dropped": list(msg.dropped)}
    elif isinstance(msg, UnmaskShares):
        b, s = sorted(msg.b_shares), sorted(msg.s_shares)
        rec |= {
            "b_ids": b,
            "b": [_share(msg.b_shares[i]) for i in b],
            "s_ids": s,
            "s": [_share(msg.s_shares[i]) for i in s],
        }
    elif isinstance(msg, InputRequest):
        rec |= {"weight": msg.weight, "dim": msg.dim}
    elif isinstance(msg, PlainInput):
        arrays = ArrayRecord({"y": Array(msg.value.detach().to(torch.float32).numpy())})
    else:  # pragma: no cover - every protocol message is listed above
        raise ProtocolError(f"no wire format for {type(msg).__name__}")
    out = RecordDict({RECORD: _config(rec)})
    if arrays is not None:
        out[RECORD + ".arrays"] = arrays
    return out


def _config(fields: Mapping[str, Any]) -> ConfigRecord:
    """A ``ConfigRecord`` without empty lists or bytes (absent fields decode as empty)."""
    return ConfigRecord(
        {k: v for k, v in fields.items() if not (isinstance(v, list | bytes | str) and not v)}
    )


def _array(content: RecordDict) -> np.ndarray:
    arrays = content.array_records.get(RECORD + ".arrays")
    if arrays is None or "y" not in arrays:
        raise ProtocolError("the reply carries no array `y`")
    y = arrays["y"].numpy()  # numpy .npy, loaded without pickle by Flower's Array
    if y.dtype == object or y.ndim != 1:
        raise ProtocolError(f"array `y` must be a 1-d numeric array; got {y.dtype}{y.shape}")
    return np.ascontiguousarray(y)


def _decode_reply(content: RecordDict, cid: int, stage: Stage) -> Any:
    """A client's reply at ``stage`` from its ``RecordDict`` (ProtocolError if malformed)."""
    rec = content.config_records.get(RECORD)
    if rec is None:
        raise ProtocolError(f"reply carries no `{RECORD}` record")
    got = _get(rec, "stage", str)
    if got != str(stage):
        raise ProtocolError(f"reply for stage `{got}` at stage `{stage}`")
    if stage is Stage.ADVERTISE_KEYS:
        return AdvertiseKeys(cid, _get(rec, "c_pk", bytes), _get(rec, "s_pk", bytes))
    if stage is Stage.SHARE_KEYS:
        return EncryptedShares(cid, _pairs(_ints(rec, "ids"), _blobs(rec, "cts"), "cts"))
    if stage is Stage.INPUT:
        y = _array(content)
        if y.dtype == np.float32:
            return PlainInput(cid, torch.from_numpy(y))
        return MaskedInput(cid, y)
    b = _pairs(_ints(rec, "b_ids"), _blobs(rec, "b"), "b")
    s = _pairs(_ints(rec, "s_ids"), _blobs(rec, "s"), "s")
    return UnmaskShares(
        cid,
        {k: int.from_bytes(v, "big") for k, v in b.items()},
        {k: int.from_bytes(v, "big") for k, v in s.items()},
    )


def _decode_request(content: RecordDict) -> Any:
    """A server message from its ``RecordDict`` (client side)."""
    rec = content.config_records[RECORD]
    stage = Stage(_get(rec, "stage", str))
    if stage is Stage.ADVERTISE_KEYS:
        return _setup_from(rec)
    if stage is Stage.SHARE_KEYS:
        ids = _ints(rec, "ids")
        c, s = _blobs(rec, "c_pks"), _blobs(rec, "s_pks")
        if not len(ids) == len(c) == len(s):
            raise ProtocolError("key roster: ids and keys differ in length")
        return KeyRoster(dict(zip(ids, zip(c, s, strict=True), strict=True)))
    if stage is Stage.INPUT:
        if "u2" not in rec:
            return InputRequest(float(_get(rec, "weight", float)), int(_get(rec, "dim", int)))
        cts = _pairs(_ints(rec, "ids"), _blobs(rec, "cts"), "cts")
        return ShareDelivery(tuple(_ints(rec, "u2")), cts)
    return UnmaskRequest(tuple(_ints(rec, "survivors")), tuple(_ints(rec, "dropped")))


def _setup_from(rec: ConfigRecord) -> MaskingSetup:
    return MaskingSetup(
        round_id=_get(rec, "round_id", bytes),
        participants=tuple(_ints(rec, "participants")),
        neighbours=tuple(_ints(rec, "neighbours")),
        threshold=int(_get(rec, "threshold", int)),
        weight=0.0,  # sent with the INPUT stage, once the sample counts are known
        dim=int(_get(rec, "dim", int)),
        clip_range=float(_get(rec, "clip_range", float)),
        noise_std=float(_get(rec, "noise_std", float)),
        bits=int(_get(rec, "bits", int)),
    )


# ---------------------------------------------- client state in the context
def _save_state(context: Context, client: MaskingClient, extra: Mapping[str, Any]) -> None:
    st = client.state
    rec: dict[str, Any] = {"client_id": client.client_id, "stage": str(st.stage)}
    rec |= {k: v for k, v in extra.items()}
    if st.setup is not None:
        setup = _encode(st.setup, client.client_id)[RECORD]
        rec |= {"setup." + k: v for k, v in setup.items()}
    if st.c_sk is not None and st.s_sk is not None:
        rec |= {"c_sk": st.c_sk.private_bytes_raw(), "s_sk": st.s_sk.private_bytes_raw()}
    ids = sorted(st.roster)
    rec |= {
        "roster_ids": ids,
        "roster_c": [st.roster[i][0] for i in ids],
        "roster_s": [st.roster[i][1] for i in ids],
        "b_seed": st.b_seed,
        "held_b_ids": sorted(st.held_b),
        "held_b": [_share(st.held_b[i]) for i in sorted(st.held_b)],
        "held_s_ids": sorted(st.held_s),
        "held_s": [_share(st.held_s[i]) for i in sorted(st.held_s)],
        "channel_ids": sorted(st.channel),
        "channel": [st.channel[i] for i in sorted(st.channel)],
        "u2": list(st.u2),
        "sent_input": st.sent_input,
    }
    context.state[_STATE] = _config(rec)


def _load_state(context: Context) -> tuple[MaskingClient, ConfigRecord]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    rec = context.state.config_records.get(_STATE)
    delta_rec = context.state.array_records.get(_DELTA)
    if rec is None or delta_rec is None:
        raise ProtocolError("no secure-aggregation round in progress on this node")
    delta = torch.from_numpy(np.asarray(delta_rec["delta"].numpy(), dtype=np.float32))
    dp = None
    if float(rec.get("dp_clip", 0.0)) > 0:  # type: ignore[arg-type]
        dp = DifferentialPrivacy(clip_norm=float(rec["dp_clip"]), noise_multiplier=0.0)  # type: ignore[arg-type]
    # DP noise share: a fresh AES-CTR stream keyed from os.urandom (MaskingClient's default)
    client = MaskingClient(int(rec["client_id"]), delta, dp=dp)  # type: ignore[arg-type]
    setup_rec = ConfigRecord(
        {k[len("setup.") :]: v for k, v in rec.items() if k.startswith("setup.")}
    )
    stage = str(rec["stage"])
    st = _ClientState(stage=Stage(stage) if stage in set(Stage) else stage)
    if len(setup_rec):
        st.setup = _setup_from(setup_rec)
    if "c_sk" in rec:
        st.c_sk = X25519PrivateKey.from_private_bytes(rec["c_sk"])  # type: ignore[arg-type]
        st.s_sk = X25519PrivateKey.from_private_bytes(rec["s_sk"])  # type: ignore[arg-type]
    st.roster = dict(
        zip(
            _ints(rec, "roster_ids"),
            zip(_blobs(rec, "roster_c"), _blobs(rec, "roster_s"), strict=True),
            strict=True,
        )
    )
    st.b_seed = bytes(rec.get("b_seed", b""))  # type: ignore[arg-type]
    st.held_b = {
        k: int.from_bytes(v, "big")
        for k, v in zip(_ints(rec, "held_b_ids"), _blobs(rec, "held_b"), strict=True)
    }
    st.held_s = {
        k: int.from_bytes(v, "big")
        for k, v in zip(_ints(rec, "held_s_ids"), _blobs(rec, "held_s"), strict=True)
    }
    st.channel = dict(zip(_ints(rec, "channel_ids"), _blobs(rec, "channel"), strict=True))
    st.u2 = tuple(_ints(rec, "u2"))
    st.sent_input = bool(rec["sent_input"])
    client.state = st
    return client, rec


def _clear_state(context: Context) -> None:
    for key in (_STATE, _DELTA):
        if key in context.state:
            del context.state[key]


def _num_examples(content: RecordDict) -> int:
    for metrics in content.metric_records.values():
        if "num-examples" in metrics:
            n = metrics["num-examples"]
            if isinstance(n, int | float) and not isinstance(n, bool) and n > 0:
                return int(n)
    raise ProtocolError(
        "the train reply must hold a MetricRecord with a positive `num-examples` entry"
    )


def _reply(content: RecordDict, to: Message) -> Message:
    return Message(content, reply_to=to)


def _train(
    msg: Message,
    context: Context,
    call_next: Callable[[Message, Context], Message],
    *,
    keep: bool = True,
) -> Any:
    """Stage 0 on the client: the user's training, then the update kept in the context.

    Returns the user's error reply, or ``(reply, num_examples)``; with
    ``keep=False`` the update is returned as a third item instead of being
    kept in the context.
    """
    _clear_state(context)
    out = call_next(msg, context)
    if out.has_error():
        return out
    sent = msg.content.array_records.get("arrays")
    if sent is None:
        raise ProtocolError("the train message carries no `arrays` record")
    got = out.content.array_records
    trained = got.get("arrays") or (next(iter(got.values())) if len(got) == 1 else None)
    if trained is None:
        raise ProtocolError("the train reply must hold one ArrayRecord (named `arrays`)")
    if list(trained.keys()) != list(sent.keys()):
        raise ProtocolError("the trained arrays' names differ from the global model's")
    delta = flatten_arrays(trained) - flatten_arrays(sent)
    if not keep:
        return out, _num_examples(out.content), delta
    context.state[_DELTA] = ArrayRecord({"delta": Array(delta.numpy())})
    return out, _num_examples(out.content)


def secure_aggregation_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Client-side Flower ``Mod`` running :class:`SecureAggregation`'s protocol.

    Passes every message without an ``"fl.secagg"`` record to the next layer
    unchanged. Stage 0 calls the user's ``train`` function (through
    ``call_next``) once and keeps the update in ``context.state``; the later
    stages never call it. Errors (a protocol violation, too few survivors)
    propagate to Flower, which returns them to the server as an error reply.

    Args:
        msg: The incoming message.
        context: The node's context (protocol state lives in ``context.state``).
        call_next: The next mod, or the user's handler.
    """
    if msg.metadata.message_type != _TRAIN or RECORD not in msg.content.config_records:
        return call_next(msg, context)
    rec = msg.content.config_records[RECORD]
    stage = _get(rec, "stage", str)
    if stage in _SS_STAGE_NAMES:
        return _ss_mod(msg, context, call_next, rec, stage)
    if stage == FAST_TRAIN:
        return _fast_train(msg, context, call_next, rec)
    if stage == FAST_KEYS:
        return _fast_keys(msg, context, call_next)
    if stage == FAST_INPUT:
        return _fast_input(msg, context, rec)
    if stage == FAST_UNMASK:
        return _fast_unmask(msg, context, rec)
    if stage == _TRAINED:  # plain aggregator, stage 0: train and report the sample count
        trained = _train(msg, context, call_next)
        if isinstance(trained, Message):
            return trained
        out, n = trained
        client_id = int(_get(rec, "client_id", int))
        dp_clip = float(rec.get("dp_clip", 0.0))  # type: ignore[arg-type]
        context.state[_STATE] = ConfigRecord(
            {"client_id": client_id, "stage": "plain", "dp_clip": dp_clip}
        )
        content = RecordDict({RECORD: ConfigRecord({"stage": _TRAINED, "num_examples": n})})
        for k, m in out.content.metric_records.items():
            content[k] = m
        return _reply(content, msg)
    if stage == str(Stage.ADVERTISE_KEYS):
        trained = _train(msg, context, call_next)
        if isinstance(trained, Message):
            return trained
        out, n = trained
        setup = _setup_from(rec)
        client_id = int(_get(rec, "client_id", int))
        delta_rec = context.state.array_records[_DELTA]
        delta = torch.from_numpy(delta_rec["delta"].numpy())
        client = MaskingClient(client_id, delta)
        keys = client.advertise_keys(setup)
        _save_state(context, client, {"dp_clip": float(rec.get("dp_clip", 0.0))})  # type: ignore[arg-type]
        content = _encode(keys, client_id)
        content.config_records[RECORD]["num_examples"] = n
        for k, m in out.content.metric_records.items():
            content[k] = m
        return _reply(content, msg)
    request = _decode_request(msg.content)
    if isinstance(request, InputRequest):
        st = context.state.config_records.get(_STATE)
        d = context.state.array_records.get(_DELTA)
        if st is None or d is None or st.get("stage") != "plain":
            raise ProtocolError("input request without a trained update on this node")
        delta = torch.from_numpy(np.asarray(d["delta"].numpy(), dtype=np.float32))
        clip = float(st.get("dp_clip", 0.0))  # type: ignore[arg-type]
        plain = PlainAggregator(
            dp=DifferentialPrivacy(clip_norm=clip, noise_multiplier=0.0) if clip > 0 else None
        )
        reply = plain.client_session(int(st["client_id"]), delta).respond(request)  # type: ignore[arg-type]
        _clear_state(context)
        return _reply(_encode(reply, reply.client_id), msg)
    client, saved = _load_state(context)
    if isinstance(request, ShareDelivery):
        weight = float(_get(rec, "weight", float))
        assert client.state.setup is not None
        client.state.setup = replace(client.state.setup, weight=weight)
    answer = client.respond(request)
    if isinstance(request, UnmaskRequest):
        _clear_state(context)
    else:
        _save_state(context, client, {"dp_clip": saved.get("dp_clip", 0.0)})
    return _reply(_encode(answer, client.client_id), msg)


# ------------------------------------------------- secret sharing over Flower
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


# ------------------------------------------- masking with reused keys (fast)
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


# ------------------------------------------------------------ the server
class SecureAggregation:
    """Server-side Flower workflow: ``fl`` strategy + ``fl`` aggregator over a ``Grid``.

    Call it from a ``ServerApp``'s ``main`` with the grid and the initial
    arrays; it runs ``num_rounds`` rounds and returns the final arrays and an
    :class:`~fl.History` (node ids in ``selected``/``survivors``). The
    ``ClientApp`` must use :func:`secure_aggregation_mod`.

    Args:
        aggregator: :class:`~fl.MaskingAggregator` (any ``bits``,
            ``threshold``, ``neighbours``, ``dp``),
            :class:`~fl.SecretSharingAggregator` (``parties`` of the round's
            nodes act as aggregation parties; ``frac_bits``, central ``dp``) or
            :class:`~fl.PlainAggregator`.
        strategy: Any :class:`~fl.Strategy` (default :class:`~fl.FedAvg`):
            samples the nodes, gives the fit configuration (sent as the
            ``"config"`` record: ``lr``, ``epochs``, ``batch_size``,
            ``proximal_mu``, ``server-round``) and applies the mean update.
        num_rounds: Rounds to run.
        timeout: Seconds to wait for the replies of one stage; later replies
            are dropouts. ``None`` waits for every reply (only for trusted,
            reliable nodes).
        train_timeout: Seconds for stage 0, which includes local training
            (default: ``timeout``).
        min_nodes: Wait (up to ``timeout``) until this many nodes are connected
            before each round.
        on_failure: ``"raise"`` (default) re-raises
            :class:`~fl.InsufficientClientsError`; ``"record"`` keeps the model
            and appends a failed :class:`~fl.RoundResult`.
        evaluate_fn: Optional ``f(round, arrays) -> (loss, accuracy)`` run on
            the server after each round.
        seed: Seed of node sampling (public randomness, not a secret).
        poll_interval: First wait (seconds) between pulls of the replies with
            ``grid.push_messages``/``pull_messages``, backing off to 0.02 s
            during a stage's first 10 s and to 0.1 s after; Flower's
            ``send_and_receive`` waits 0.1 s between pulls, which every stage
            would pay. ``None`` uses ``grid.send_and_receive``.
        reuse_keys: With a :class:`~fl.MaskingAggregator`: after a first
            standard round in which the nodes also advertise long-term key
            pairs, run each round in two exchanges (training + masked input,
            then unmask) on those keys while the selected nodes keep them
            (see "Masking in two exchanges" in the module docstring). Weights
            come from the sample counts the nodes reported in their previous
            round. Default ``False``: the four-stage protocol every round.

    Raises:
        ConfigError: Bad arguments (named).
    """

    def __init__(
        self,
        aggregator: Aggregator,
        strategy: Strategy | None = None,
        *,
        num_rounds: int = 1,
        timeout: float | None = 60.0,
        train_timeout: float | None = None,
        min_nodes: int = 1,
        on_failure: str | FailurePolicy = FailurePolicy.RAISE,
        evaluate_fn: Callable[[int, ArrayRecord], tuple[float, float]] | None = None,
        seed: int = 0,
        poll_interval: float | None = 0.005,
        reuse_keys: bool = False,
    ) -> None:
        if not isinstance(
            aggregator, MaskingAggregator | PlainAggregator | SecretSharingAggregator
        ):
            raise ConfigError(
                "`aggregator` must be a MaskingAggregator, SecretSharingAggregator or "
                f"PlainAggregator; got {type(aggregator).__name__}"
            )
        if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
            raise ConfigError(f"`num_rounds` must be a positive int; got {num_rounds!r}")
        for name, t in (("timeout", timeout), ("train_timeout", train_timeout)):
            if t is not None and not (t > 0 and math.isfinite(t)):
                raise ConfigError(f"`{name}` must be a positive number or None; got {t!r}")
        if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 1:
            raise ConfigError(f"`min_nodes` must be a positive int; got {min_nodes!r}")
        self.aggregator = aggregator
        self.strategy: Strategy = strategy if strategy is not None else FedAvg()
        self.num_rounds = num_rounds
        self.timeout = timeout
        self.train_timeout = train_timeout if train_timeout is not None else timeout
        self.min_nodes = min_nodes
        self.on_failure = FailurePolicy(on_failure)
        self.evaluate_fn = evaluate_fn
        self.seed = seed
        if poll_interval is not None and not (poll_interval > 0 and math.isfinite(poll_interval)):
            raise ConfigError(
                f"`poll_interval` must be a positive number or None; got {poll_interval!r}"
            )
        self.poll_interval = poll_interval
        if not isinstance(reuse_keys, bool):
            raise ConfigError(f"`reuse_keys` must be a bool; got {reuse_keys!r}")
        if reuse_keys and not isinstance(aggregator, MaskingAggregator):
            raise ConfigError(
                f"`reuse_keys` needs a MaskingAggregator; got {type(aggregator).__name__}"
            )
        self.reuse_keys = reuse_keys
        self._long_term: dict[int, tuple[bytes, bytes]] = {}
        self._counts: dict[int, int] = {}
        self.history = History()
        self.stage_seconds: list[dict[str, float]] = []
        """Diagnostics: wall seconds of each stage's exchange, one dict per round."""
        self.parties: list[tuple[int, ...]] = []
        """Secret sharing: the node ids of each round's aggregation parties (public)."""

    def __repr__(self) -> str:
        return (
            f"SecureAggregation({type(self.aggregator).__name__}, "
            f"{type(self.strategy).__name__}, num_rounds={self.num_rounds})"
        )

    # ------------------------------------------------------------ helpers
    def _nodes(self, grid: Any) -> list[int]:
        deadline = time.monotonic() + (self.timeout or 60.0)
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= self.min_nodes or time.monotonic() > deadline:
                return nodes
            time.sleep(0.2)

    def _exchange(
        self,
        grid: Any,
        round_index: int,
        stage: Stage | str,
        contents: Mapping[int, RecordDict],
        node_of: Mapping[int, int],
        timeout: float | None,
        wire: dict[int, int],
        need: int | None = None,
    ) -> tuple[dict[int, Any], dict[int, RecordDict]]:
        """One request/reply exchange; the decoded replies by client index.

        With ``need``, returns as soon as ``need`` replies decoded (the other
        nodes' later replies are never read); otherwise waits for every node
        or the timeout.
        """
        start = time.perf_counter()
        messages = []
        ttl = None if timeout is None else max(timeout * 2, 60.0)
        for cid, content in contents.items():
            messages.append(
                Message(content, node_of[cid], _TRAIN, ttl=ttl, group_id=str(round_index))
            )
        cid_of = {n: c for c, n in node_of.items()}
        replies: dict[int, Any] = {}
        raw: dict[int, RecordDict] = {}
        for batch in self._send_and_receive(grid, messages, timeout):
            for reply in batch:
                node = int(reply.metadata.src_node_id)
                if node not in cid_of or cid_of[node] not in contents or reply.has_error():
                    continue  # an error reply is a dropout of this stage
                cid = cid_of[node]
                try:
                    replies[cid] = (
                        _decode_reply(reply.content, cid, stage)
                        if isinstance(stage, Stage) and stage is not Stage.ADVERTISE_KEYS
                        else reply.content
                    )
                except (ProtocolError, ValueError, KeyError, TypeError):
                    continue  # a malformed reply is a dropout too (never trusted)
                raw[cid] = reply.content
                wire[cid] = wire.get(cid, 0) + _content_bytes(reply.content)
            if need is not None and len(replies) >= need:
                break
        times = self.stage_seconds[-1] if self.stage_seconds else {}
        times[str(stage)] = time.perf_counter() - start
        return replies, raw

    def _send_and_receive(
        self, grid: Any, messages: list[Message], timeout: float | None
    ) -> Iterator[list[Message]]:
        """Reply batches: ``grid.send_and_receive``, or push/pull polled every ``poll_interval``."""
        if self.poll_interval is None:
            yield list(grid.send_and_receive(messages, timeout=timeout))
            return
        pending = set(grid.push_messages(messages))
        begin = time.monotonic()
        deadline = None if timeout is None else begin + timeout
        wait = self.poll_interval
        while pending:
            got = list(grid.pull_messages(pending))
            pending -= {m.metadata.reply_to_message_id for m in got}
            if got:
                yield got
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return
            time.sleep(wait)
            # a reply is seen within 20 ms for the first 10 s (a stage's usual span); then
            # back off to Flower's own 0.1 s while waiting long (e.g. for slow training)
            cap = 0.02 if time.monotonic() - begin < 10.0 else 0.1
            wait = min(wait * 1.5, max(cap, self.poll_interval))

    def _fit_config(self, round_index: int) -> ConfigRecord:
        fc = self.strategy.fit_config(round_index)
        return ConfigRecord(
            {
                "lr": float(fc.lr),
                "epochs": int(fc.epochs),
                "batch_size": int(fc.batch_size),
                "proximal_mu": float(fc.proximal_mu),
                "server-round": int(round_index),
            }
        )

    # ---------------------------------------------------------- one round
    def _round(
        self, grid: Any, arrays: ArrayRecord, round_index: int
    ) -> tuple[torch.Tensor, RoundResult]:
        start = time.perf_counter()
        agg = self.aggregator
        nodes = self._nodes(grid)
        gen = torch.Generator()
        gen.manual_seed((self.seed * 1_000_003 + round_index) % (1 << 62))
        picked = self.strategy.sample(round_index, list(range(len(nodes))), gen)
        node_of = {cid: nodes[i] for cid, i in enumerate(sorted(picked))}
        selected = tuple(node_of.values())
        global_vector = flatten_arrays(arrays)
        dim = int(global_vector.numel())
        wire: dict[int, int] = {}
        self.stage_seconds.append({})
        config = self._fit_config(round_index)
        if self.reuse_keys:
            result, counts, losses = self._fast_round(
                grid,
                arrays,
                config,
                round_index,
                node_of,
                dim,
                wire,
                keys_first=not self._can_reuse_keys(node_of),
            )
        else:
            result, counts, losses = self._standard_round(
                grid, arrays, config, round_index, node_of, dim, wire, gen
            )

        agg.record_round()
        new_vector = self.strategy.apply(global_vector, result.mean).detach()
        surv = result.survivors
        n_tot = sum(counts[c] for c in surv if c in losses)
        train_loss = (
            sum(losses[c] * counts[c] for c in surv if c in losses) / n_tot if n_tot else math.nan
        )
        test_loss = test_acc = math.nan
        if self.evaluate_fn is not None:
            test_loss, test_acc = self.evaluate_fn(
                round_index, unflatten_arrays(new_vector, arrays)
            )
        up = [wire.get(c, 0) for c in surv]
        record = RoundResult(
            round=round_index,
            selected=selected,
            survivors=tuple(node_of[c] for c in surv),
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=time.perf_counter() - start,
            upload_bytes=sum(up) / len(up) if up else 0.0,
            epsilon=agg.epsilon,
        )
        return new_vector, record

    def _can_reuse_keys(self, node_of: Mapping[int, int]) -> bool:
        """A fast round needs every selected node's long-term keys and sample count."""
        return self.reuse_keys and all(
            n in self._long_term and n in self._counts for n in node_of.values()
        )

    def _fast_round(
        self,
        grid: Any,
        arrays: ArrayRecord,
        config: ConfigRecord,
        round_index: int,
        node_of: Mapping[int, int],
        dim: int,
        wire: dict[int, int],
        *,
        keys_first: bool = False,
    ) -> tuple[AggregateResult, dict[int, int], dict[int, float]]:
        """The masking round on long-term keys (``reuse_keys=True``).

        Two exchanges (``fast_train``, ``fast_unmask``) while every selected
        node's keys and sample count are known; otherwise (``keys_first``)
        three: ``fast_keys`` (training, the long-term public keys and the
        count), ``fast_input`` (the masked update) and ``fast_unmask``.
        """
        agg = self.aggregator
        assert isinstance(agg, MaskingAggregator)
        losses: dict[int, float] = {}
        stage = FAST_TRAIN
        if keys_first:  # (re)learn keys and counts: train + keys, then the masked input
            stage = FAST_INPUT
            first = {
                c: RecordDict(
                    {
                        RECORD: ConfigRecord({"stage": FAST_KEYS, "client_id": c}),
                        "arrays": arrays,
                        "config": config,
                    }
                )
                for c in node_of
            }
            got, _ = self._exchange(
                grid, round_index, FAST_KEYS, first, node_of, self.train_timeout, wire
            )
            for c, content in got.items():
                rec = content.config_records.get(RECORD)
                if rec is None or rec.get("stage") != FAST_KEYS:
                    continue
                n = rec.get("num_examples")
                lt = (rec.get("lt_c_pk"), rec.get("lt_s_pk"))
                if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                    continue
                if not all(isinstance(k, bytes) and len(k) == _KEY_BYTES for k in lt):
                    continue
                self._long_term[node_of[c]] = (bytes(lt[0]), bytes(lt[1]))
                self._counts[node_of[c]] = n
                losses.update(_losses(c, content))
            node_of = {c: n for c, n in node_of.items() if c in got and n in self._long_term}
            if not node_of:
                raise InsufficientClientsError(Stage.ADVERTISE_KEYS.value, 0, 1)
        counts = {c: self._counts[n] for c, n in node_of.items()}
        weights = agg.weights(counts)  # this round's counts, or those of the nodes' last round
        session = MaskingServer(agg, weights, dim)  # fresh round id, graph, threshold, quantizer
        t, rid = session.threshold, session.round_id
        contents: dict[int, RecordDict] = {}
        for c, setup in session.first().items():
            content = _encode(setup, c)
            holders = sorted((*setup.neighbours, c))
            rec = content.config_records[RECORD]
            rec["stage"] = stage
            rec["weight"] = float(weights[c])
            rec["dp_clip"] = float(agg.dp.clip_norm if agg.dp is not None else 0.0)
            rec["ids"] = holders
            rec["c_pks"] = [self._long_term[node_of[v]][0] for v in holders]
            rec["s_pks"] = [self._long_term[node_of[v]][1] for v in holders]
            if stage == FAST_TRAIN:
                content["arrays"] = arrays
                content["config"] = config
            contents[c] = content
        replies, _ = self._exchange(
            grid,
            round_index,
            stage,
            contents,
            node_of,
            self.train_timeout if stage == FAST_TRAIN else self.timeout,
            wire,
        )
        ys: dict[int, np.ndarray] = {}
        inbox: dict[int, dict[int, bytes]] = {c: {} for c in node_of}
        for c, content in replies.items():
            rec = content.config_records.get(RECORD)
            try:
                if rec is None or _get(rec, "stage", str) != stage:
                    raise ProtocolError("reply for another stage")
                n = _get(rec, "num_examples", int)
                if n <= 0:
                    raise ProtocolError("`num_examples` must be positive")
                y = session.quantizer.unpack(_array(content), dim)
                cts = _pairs(_ints(rec, "ids"), _blobs(rec, "cts"), "cts")
                if not set(cts) <= set(session.graph[c]):
                    raise ProtocolError("shares addressed to non-neighbours")
            except (ProtocolError, QuantizationRangeError, ValueError, TypeError):
                continue  # a malformed reply is a dropout, never trusted
            ys[c] = y
            self._counts[node_of[c]] = int(n)
            for v, ct in cts.items():
                inbox[v][c] = ct
            losses.update(_losses(c, content))
        for c, n in node_of.items():
            if c not in ys and stage == FAST_TRAIN:  # it may have lost its keys: it advertises
                self._long_term.pop(n, None)  # them again in a `fast_keys` exchange
        u2 = tuple(sorted(ys))
        if len(u2) < t:
            raise InsufficientClientsError(Stage.INPUT.value, len(u2), t)
        dropped = tuple(c for c in node_of if c not in ys)
        unmask = {
            c: RecordDict(
                {
                    RECORD: _config(
                        {
                            "stage": FAST_UNMASK,
                            "survivors": list(u2),
                            "dropped": list(dropped),
                            "ids": [u for u in sorted(inbox[c]) if u in ys],
                            "cts": [inbox[c][u] for u in sorted(inbox[c]) if u in ys],
                        }
                    )
                }
            )
            for c in u2
        }
        # nothing dropped: any t nodes' shares rebuild every self mask, so stop at t replies
        shares, _ = self._exchange(
            grid,
            round_index,
            FAST_UNMASK,
            unmask,
            node_of,
            self.timeout,
            wire,
            need=None if dropped else t,
        )
        b_pts: dict[int, dict[int, int]] = {u: {} for u in u2}
        pair: dict[tuple[int, int], bytes] = {}
        answered = 0
        for v, content in shares.items():
            rec = content.config_records.get(RECORD)
            try:
                if rec is None or _get(rec, "stage", str) != FAST_UNMASK:
                    raise ProtocolError("reply for another stage")
                b = _pairs(_ints(rec, "b_ids"), _blobs(rec, "b"), "b")
                pk = _pairs(_ints(rec, "p_ids"), _blobs(rec, "p"), "p")
            except (ProtocolError, ValueError, TypeError):
                continue
            answered += 1
            for u, share in b.items():
                if u in b_pts:
                    b_pts[u][session.participants.index(v) + 1] = int.from_bytes(share, "big")
            for w, key in pk.items():
                if w in dropped and w in session.graph[v] and len(key) == 16:
                    pair[(v, w)] = key
        if answered < t:
            raise InsufficientClientsError(Stage.UNMASK.value, answered, t)
        total = np.zeros(dim, dtype=np.uint32)
        for y in ys.values():
            total += y
        lagrange: dict[tuple[int, ...], Any] = {}
        minus: list[bytes] = []
        plus: list[bytes] = []
        for u in u2:
            if len(b_pts[u]) < t:
                raise InsufficientClientsError(Stage.UNMASK.value, len(b_pts[u]), t)
            seed = shamir.reconstruct(b_pts[u], t, lagrange).to_bytes(32, "big")
            minus.append(_self_key(seed, rid))
        for w in dropped:
            for u in session.graph[w]:
                if u not in ys:
                    continue
                if (u, w) not in pair:
                    raise AggregationError(
                        f"secure aggregation failed at stage `unmask`: node {node_of[u]} sent "
                        f"its input but not the key of its mask with dropped node {node_of[w]}; "
                        "with reused keys only it holds that key, so the round cannot complete"
                    )
                (minus if u < w else plus).append(pair[(u, w)])  # u added +mask when u < w
        _Masker().apply(total, plus, minus)
        summed = session.quantizer.dequantize(total)
        noised = agg.dp is not None and agg.dp.distributed
        mean, std = agg.finalize(summed, u2, weights, noised=noised)
        if noised:
            std = session._client_noise_std() * math.sqrt(len(u2))
        result = AggregateResult(
            mean=mean,
            survivors=u2,
            dropped=dropped,
            upload_bytes={c: wire.get(c, 0) for c in u2},
            noise_std=std,
        )
        return result, {c: self._counts[node_of[c]] for c in u2}, losses

    def _standard_round(
        self,
        grid: Any,
        arrays: ArrayRecord,
        config: ConfigRecord,
        round_index: int,
        node_of: Mapping[int, int],
        dim: int,
        wire: dict[int, int],
        gen: torch.Generator,
    ) -> tuple[AggregateResult, dict[int, int], dict[int, float]]:
        """Stage 0 (training) and the aggregator's own stages."""
        agg = self.aggregator
        dp_clip = agg.dp.clip_norm if agg.dp is not None else 0.0
        masking = isinstance(agg, MaskingAggregator)
        sharing = isinstance(agg, SecretSharingAggregator)
        session: Any
        round_id = os.urandom(16)  # secret sharing: binds keys and ciphertexts to the round
        if masking:
            assert isinstance(agg, MaskingAggregator)
            session = MaskingServer(agg, {c: 1.0 for c in node_of}, dim)
            first = {c: _encode(m, c) for c, m in session.first().items()}
        elif sharing:
            session = None
            first = {
                c: RecordDict(
                    {
                        RECORD: ConfigRecord(
                            {"stage": SS_TRAIN, "client_id": c, "round_id": round_id}
                        )
                    }
                )
                for c in node_of
            }
        else:
            session = None
            first = {
                c: RecordDict({RECORD: ConfigRecord({"stage": _TRAINED, "client_id": c})})
                for c in node_of
            }
        for content in first.values():
            content.config_records[RECORD]["dp_clip"] = float(dp_clip)
            content["arrays"] = arrays
            content["config"] = config
        stage0, raw = self._exchange(
            grid, round_index, Stage.ADVERTISE_KEYS, first, node_of, self.train_timeout, wire
        )
        counts: dict[int, int] = {}
        keys: dict[int, Any] = {}
        losses: dict[int, float] = {}
        for c, content in stage0.items():
            rec = content.config_records[RECORD]
            n = rec.get("num_examples")
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                continue
            try:
                if masking:
                    keys[c] = _decode_reply(content, c, Stage.ADVERTISE_KEYS)
                elif sharing:
                    keys[c] = _get(rec, "pk", bytes)
                    if len(keys[c]) != _KEY_BYTES:
                        raise ProtocolError("`pk` must be a 32-byte X25519 key")
            except ProtocolError:
                continue
            counts[c] = n
            for m in content.metric_records.values():
                loss = m.get("train_loss")
                if isinstance(loss, float | int):
                    losses[c] = float(loss)
        if not counts:
            raise InsufficientClientsError(
                Stage.ADVERTISE_KEYS.value, 0, session.threshold if masking else 1
            )
        weights = agg.weights(counts)
        if masking:
            session.weights = {c: weights.get(c, 0.0) for c in node_of}
            msgs = session.step(keys)
            stage = Stage.SHARE_KEYS
            while msgs is not None:
                contents = {c: _encode(m, c) for c, m in msgs.items()}
                if stage is Stage.INPUT:
                    for c, content in contents.items():
                        content.config_records[RECORD]["weight"] = float(weights[c])
                replies, _ = self._exchange(
                    grid, round_index, stage, contents, node_of, self.timeout, wire
                )
                msgs = session.step(replies)
                if stage is not Stage.UNMASK:
                    stage = list(Stage)[stage.order + 1]
            result = session.result()
        elif sharing:
            assert isinstance(agg, SecretSharingAggregator)
            result = self._secret_sharing(
                grid, round_index, round_id, node_of, keys, weights, dim, wire, gen
            )
        else:
            plain = agg.server_session(weights, dim, round_index=round_index)
            msgs = {c: m for c, m in plain.first().items() if c in counts}
            contents = {c: _encode(m, c) for c, m in msgs.items()}
            replies, _ = self._exchange(
                grid, round_index, Stage.INPUT, contents, node_of, self.timeout, wire
            )
            plain.step(replies)
            result = plain.result()
        return result, counts, losses

    def _secret_sharing(
        self,
        grid: Any,
        round_index: int,
        round_id: bytes,
        node_of: Mapping[int, int],
        keys: Mapping[int, bytes],
        weights: Mapping[int, float],
        dim: int,
        wire: dict[int, int],
        gen: torch.Generator,
    ) -> AggregateResult:
        """Stages ``ss_input`` and ``ss_sum`` of :class:`~fl.SecretSharingAggregator`."""
        from smpc import FixedPoint

        agg = self.aggregator
        assert isinstance(agg, SecretSharingAggregator)
        n_parties = agg.n_parties
        live = sorted(keys)
        if len(live) < n_parties:
            raise InsufficientClientsError("train", len(live), n_parties)
        # the parties: n_parties of the nodes that trained, picked with public randomness
        pick = torch.randperm(len(live), generator=gen)[:n_parties].tolist()
        parties = [live[i] for i in pick]
        self.parties.append(tuple(node_of[c] for c in parties))
        request = {
            "stage": SS_INPUT,
            "round_id": round_id,
            "frac_bits": int(agg.frac_bits),
            "parties": parties,
            "party_pks": [keys[c] for c in parties],
        }
        contents = {
            c: RecordDict({RECORD: _config(request | {"weight": float(weights[c])})}) for c in live
        }
        replies, _ = self._exchange(
            grid, round_index, SS_INPUT, contents, node_of, self.timeout, wire
        )
        shares: dict[int, tuple[bytes, list[bytes], Array]] = {}
        for c, content in replies.items():
            rec = content.config_records.get(RECORD)
            arrays = content.array_records.get(RECORD + ".arrays")
            try:
                if rec is None or arrays is None or "share" not in arrays:
                    raise ProtocolError("the reply carries no shares")
                if _get(rec, "stage", str) != SS_INPUT:
                    raise ProtocolError("reply for another stage")
                eph, cts = _get(rec, "eph", bytes), _blobs(rec, "cts")
                share = arrays["share"]
                if len(eph) != _KEY_BYTES or len(cts) != n_parties - 1:
                    raise ProtocolError("wrong key or number of seeds")
                if any(len(ct) != _SEED_BYTES + _TAG for ct in cts):
                    raise ProtocolError("a seed ciphertext has the wrong length")
                if share.dtype != "uint8" or tuple(share.shape) != (8 * dim + _TAG,):
                    raise ProtocolError(f"the share has shape {share.dtype}{share.shape}")
            except ProtocolError:
                continue  # malformed: a dropout of this stage, never relayed
            shares[c] = (eph, cts, share)
        survivors = sorted(shares)
        if not survivors:
            raise InsufficientClientsError("input", 0, 1)
        ephs = [shares[c][0] for c in survivors]
        last = n_parties - 1
        to_parties: dict[int, RecordDict] = {}
        for role, p in enumerate(parties):
            head = {
                "stage": SS_SUM,
                "round_id": round_id,
                "role": role,
                "last": last,
                "dim": dim,
                "ids": survivors,
                "eph": ephs,
            }
            if role < last:
                head["cts"] = [shares[c][1][role] for c in survivors]
            content = RecordDict({RECORD: _config(head)})
            if role == last:
                content[RECORD + ".arrays"] = ArrayRecord({str(c): shares[c][2] for c in survivors})
            to_parties[p] = content
        sums, _ = self._exchange(grid, round_index, SS_SUM, to_parties, node_of, self.timeout, wire)
        total = np.zeros(dim, dtype=np.uint64)
        got = 0
        for p in parties:
            content = sums.get(p)
            arrays = None if content is None else content.array_records.get(RECORD + ".arrays")
            if arrays is None or "y" not in arrays:
                continue
            y = arrays["y"].numpy()
            if y.dtype != np.uint64 or y.shape != (dim,):
                continue
            total += y
            got += 1
        if got < n_parties:
            raise InsufficientClientsError("sum", got, n_parties)
        ring = torch.from_numpy(total.view(np.int64))
        summed = FixedPoint(agg.frac_bits).decode(ring, torch.float64).to(torch.float32)
        mean, std = agg.finalize(summed, survivors, weights, noised=False)
        upload = {c: wire.get(c, 0) for c in survivors}
        return AggregateResult(
            mean=mean,
            survivors=tuple(survivors),
            dropped=tuple(sorted(set(node_of) - set(survivors))),
            upload_bytes=upload,
            noise_std=std,
        )

    def __call__(self, grid: Any, arrays: ArrayRecord) -> tuple[ArrayRecord, History]:
        """Run the rounds; return the final arrays and the history.

        Args:
            grid: The ``Grid`` given to the ``ServerApp``'s ``main``.
            arrays: The initial global model.

        Raises:
            InsufficientClientsError: A round lost too many nodes
                (with ``on_failure="raise"``), naming the stage.
        """
        if not isinstance(arrays, ArrayRecord):
            raise ConfigError(f"`arrays` must be a flwr ArrayRecord; got {type(arrays).__name__}")
        n_nodes = len(self._nodes(grid))
        self.aggregator.setup(
            num_rounds=self.num_rounds,
            sampling_rate=self.strategy.fraction_fit if n_nodes else 1.0,
        )
        for r in range(len(self.history) + 1, len(self.history) + self.num_rounds + 1):
            start = time.perf_counter()
            try:
                vector, record = self._round(grid, arrays, r)
            except AggregationError as exc:
                if self.on_failure is FailurePolicy.RAISE:
                    raise
                self.history.append(
                    RoundResult(
                        round=r,
                        selected=(),
                        survivors=(),
                        train_loss=math.nan,
                        test_loss=math.nan,
                        test_accuracy=math.nan,
                        seconds=time.perf_counter() - start,
                        failed=True,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )
                continue
            arrays = unflatten_arrays(vector, arrays)
            self.history.append(record)
        return arrays, self.history


def _losses(c: int, content: RecordDict) -> dict[int, float]:
    """``{c: train_loss}`` when a reply's metrics carry one."""
    for m in content.metric_records.values():
        loss = m.get("train_loss")
        if isinstance(loss, float | int) and not isinstance(loss, bool):
            return {c: float(loss)}
    return {}


def _value_bytes(v: Any) -> int:
    if isinstance(v, list):
        return sum(_value_bytes(x) for x in v)
    if isinstance(v, bytes | str):
        return len(v)
    return 8  # ints, floats and bools travel as 64-bit values


def _content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: arrays as serialized, records field by field."""
    total = 0
    for rec in content.values():
        if isinstance(rec, ArrayRecord):
            total += int(rec.count_bytes())
        else:
            total += sum(len(k) + _value_bytes(v) for k, v in rec.items())
    return total

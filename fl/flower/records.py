"""The wire format and node state of :mod:`fl.flower`: records, codecs, ``context.state``.

Every protocol message travels as a Flower ``RecordDict``: its typed fields
in the ``ConfigRecord`` named :data:`RECORD` (bytes, ints, floats and lists of
them; empty lists and bytes are left out and decode as empty), a vector as an
``ArrayRecord`` beside it. Decoding checks each field's type and raises
:class:`~fl.ProtocolError` on a malformed message; arrays are ``.npy`` loaded
without pickle. Between messages a node's protocol state (keys, held shares,
its update) lives in ``context.state`` under the keys defined here, and is
erased when its round ends. This module also names the stages of every
aggregator's round (see :mod:`fl.flower`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl.aggregators import InputRequest, PlainInput, Stage
from fl.dp import DifferentialPrivacy
from fl.errors import ConfigError, ProtocolError
from fl.secure_aggregation import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    MaskingClient,
    MaskingSetup,
    ShareDelivery,
    UnmaskRequest,
    UnmaskShares,
    _ClientState,
)
from fl.shamir import SHARE_BYTES

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


def _reply(content: RecordDict, to: Message) -> Message:
    return Message(content, reply_to=to)

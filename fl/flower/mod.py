"""The client side of :mod:`fl.flower`: the Flower ``Mod`` that answers every stage.

:func:`secure_aggregation_mod` routes each message that carries the
:data:`~fl.flower.records.RECORD` record by its stage: the plain aggregator's
two stages and the four masking stages (``ADVERTISE_KEYS`` with training,
``SHARE_KEYS``, ``INPUT``, ``UNMASK``, computed by
:class:`~fl.secure_aggregation.MaskingClient` on the state kept in the
context) here; the secret-sharing stages in :mod:`fl.flower.secret_sharing`
and the reused-keys stages in :mod:`fl.flower.reuse_keys`. Any other message
passes to the next layer unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fl.aggregators import InputRequest, PlainAggregator, Stage
from fl.dp import DifferentialPrivacy
from fl.errors import ProtocolError
from fl.flower.records import (
    _DELTA,
    _SS_STAGE_NAMES,
    _STATE,
    _TRAIN,
    _TRAINED,
    FAST_INPUT,
    FAST_KEYS,
    FAST_TRAIN,
    FAST_UNMASK,
    RECORD,
    _clear_state,
    _decode_request,
    _encode,
    _get,
    _load_state,
    _reply,
    _save_state,
    _setup_from,
)
from fl.flower.reuse_keys import _fast_input, _fast_keys, _fast_train, _fast_unmask
from fl.flower.secret_sharing import _ss_mod
from fl.flower.training import _train
from fl.secure_aggregation import MaskingClient, ShareDelivery, UnmaskRequest


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

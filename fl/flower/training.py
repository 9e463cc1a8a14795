"""Stage 0 on a node of :mod:`fl.flower`: the user's training, and the update it yields.

Every aggregator's round opens with it: the mod calls the user's ``train``
handler (through ``call_next``) once, checks that the reply holds the trained
arrays under the global model's names and a positive ``num-examples``
metric, and keeps ``delta = trained - global`` (flat float32) in
``context.state`` for the later stages, which never train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fl.errors import ProtocolError
from fl.flower.records import _DELTA, _clear_state, flatten_arrays


def _num_examples(content: RecordDict) -> int:
    for metrics in content.metric_records.values():
        if "num-examples" in metrics:
            n = metrics["num-examples"]
            if isinstance(n, int | float) and not isinstance(n, bool) and n > 0:
                return int(n)
    raise ProtocolError(
        "the train reply must hold a MetricRecord with a positive `num-examples` entry"
    )


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

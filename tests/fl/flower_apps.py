"""Flower apps and an in-process grid shared by the Flower tests (not a test module).

The client "trains" by adding a known update to the global model, so the test
knows every node's update and can compare the aggregate with the in-process
oracle (:meth:`fl.MaskingAggregator.aggregate`). Faults are read from the run
given to :func:`make_client_app` (node index -> ``"<kind>:<stage>[@round]"``,
kind ``raise`` or ``hang``).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fl.flower import RECORD, secure_aggregation_mod

DIM = 37
SHAPES = {"w": (5, 7), "b": (2,)}


def node_update(node_id: int, dim: int = DIM) -> np.ndarray:
    """The update node ``node_id`` adds to the model (public test data)."""
    g = torch.Generator().manual_seed(node_id % (1 << 62))
    return ((torch.rand(dim, generator=g) - 0.5) * 0.2).numpy()


def node_examples(node_id: int) -> int:
    """Node ``node_id``'s sample count."""
    return 10 + node_id % 7


def global_model() -> ArrayRecord:
    """The initial model of the tests (two arrays, 37 values)."""
    g = torch.Generator().manual_seed(7)
    return ArrayRecord(
        {k: Array(torch.rand(s, generator=g).numpy().astype(np.float32)) for k, s in SHAPES.items()}
    )


def _index(context: Context) -> int:
    return int(context.node_config.get("partition-id", -1))


def _matches(spec: str, kind: str, stage: str, round_id: str) -> bool:
    """``spec`` is ``"<kind>:<stage>"`` or ``"<kind>:<stage>@<round>"``, several joined by ``+``."""
    for one in spec.split("+"):
        want, _, rnd = one.partition("@")
        if want == f"{kind}:{stage}" and (not rnd or rnd == round_id):
            return True
    return False


def _stage(msg: Message) -> str | None:
    rec = msg.content.config_records.get(RECORD)
    if rec is None:
        return None
    stage = str(rec.get("stage"))
    # stage 0 of every aggregator is "advertise_keys"; the secret-sharing stages by their names
    names = {
        "trained": "advertise_keys",
        "ss_train": "advertise_keys",
        "ss_input": "input",
        "fast_train": "advertise_keys",  # reuse_keys: training + masked input in one exchange
        "fast_unmask": "unmask",
        "fast_keys": "advertise_keys",  # reuse_keys, first round: training + long-term keys
        "fast_input": "input",
    }
    return names.get(stage, "sum" if stage == "ss_sum" else stage)


def make_client_app(faults: dict[int, str] | None = None, hang_seconds: float = 0.0) -> ClientApp:
    """A ClientApp whose training adds :func:`node_update` to the global model.

    ``faults`` maps a node index to a fault spec (see :func:`_matches`): a
    ``raise`` fault raises in the ClientApp (Flower returns an error reply), a
    ``hang`` fault sleeps ``hang_seconds`` before answering.
    """
    faults = dict(faults or {})

    def fault_mod(msg: Message, context: Context, call_next: Any) -> Message:
        index, stage = _index(context), _stage(msg)
        specs = dict(faults)
        for item in str(context.run_config.get("faults", "")).split(","):
            if "=" in item:  # run config: "2=hang:share_keys@1,..." (deployment tests)
                i, spec = item.split("=", 1)
                specs[int(i)] = spec
        spec = specs.get(index)
        if spec is not None and stage is not None:
            if _matches(spec, "raise", stage, msg.metadata.group_id):
                raise RuntimeError(f"node {index} fails at {stage}")
            if _matches(spec, "hang", stage, msg.metadata.group_id):
                marker = str(context.run_config.get("marker-dir", ""))
                if marker:  # tell the test this node is now stuck in the round
                    Path(marker, f"node{index}-{stage}").write_text(str(os.getpid()))
                time.sleep(float(context.run_config.get("hang-seconds", hang_seconds)))
        return call_next(msg, context)

    app = ClientApp(mods=[fault_mod, secure_aggregation_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        nid = context.node_id
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        flat = np.concatenate([a.numpy().reshape(-1) for a in arrays.values()])
        new = flat + node_update(nid, flat.size)
        out, start = {}, 0
        for k, a in arrays.items():
            n = a.numpy().size
            out[k] = Array(new[start : start + n].reshape(a.numpy().shape).astype(np.float32))
            start += n
        metrics = MetricRecord({"num-examples": node_examples(nid), "train_loss": 0.5})
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": metrics}), reply_to=msg)

    return app


@contextlib.contextmanager
def server_task() -> Iterator[None]:
    """Flower's task identity as a ServerApp process has it (``Message()`` reads it)."""
    ids = ("_run_id", "_node_id", "_task_id")
    old = [getattr(TaskIdentity, k) for k in ids]
    for k in ids:
        setattr(TaskIdentity, k, 1)
    try:
        yield
    finally:
        for k, v in zip(ids, old, strict=True):
            setattr(TaskIdentity, k, v)


class LocalGrid(Grid):
    """A ``Grid`` that calls a ClientApp in process (one Context per node), for fast tests.

    ``faults`` maps a node index to ``"raise:<stage>"`` or ``"hang:<stage>"``;
    a hanging node's reply is withheld (as if it never answered).
    """

    def __init__(
        self, n: int, faults: dict[int, str] | None = None, app: ClientApp | None = None
    ) -> None:
        self.app = app if app is not None else make_client_app(faults)
        self.node_ids = [1000 + 17 * i for i in range(n)]
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": n},
                state=RecordDict(),
                run_config={},
            )
            for i, nid in enumerate(self.node_ids)
        }
        self.faults = faults or {}
        self._outbox: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self) -> Any:  # pragma: no cover - unused
        return None

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        msgs = list(messages)
        for reply in self.send_and_receive(msgs):
            self._outbox[reply.metadata.reply_to_message_id] = reply
        return [m.metadata.message_id for m in msgs]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._outbox.pop(i) for i in list(message_ids) if i in self._outbox]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            nid = msg.metadata.dst_node_id
            index = self.node_ids.index(nid)
            stage = _stage(msg) or ""
            if _matches(self.faults.get(index, ""), "hang", stage, msg.metadata.group_id):
                continue  # never answers in time
            try:
                out.append(self.app(msg, self.contexts[nid]))
            except Exception as exc:  # noqa: BLE001 - what Flower does: an error reply
                out.append(Message(Error(code=0, reason=str(exc)), reply_to=msg))
        return out

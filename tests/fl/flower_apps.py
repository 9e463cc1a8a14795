"""Flower apps and an in-process grid shared by the Flower tests (not a test module).

The client "trains" by adding a known update to the global model, so the test
knows every node's update and can compare the aggregate with the in-process
oracle (:meth:`fl.MaskingAggregator.aggregate`). Faults are read from the run
config (``fault.<node index>`` = ``"<kind>:<stage>"``, kind ``raise`` or
``hang``), which works the same in the simulation engine and in a deployment.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
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


def node_update(index: int, dim: int = DIM) -> np.ndarray:
    """The update node ``index`` adds to the model (public test data)."""
    g = torch.Generator().manual_seed(1000 + index)
    return ((torch.rand(dim, generator=g) - 0.5) * 0.2).numpy()


def node_examples(index: int) -> int:
    """Node ``index``'s sample count."""
    return 10 + 3 * index


def global_model() -> ArrayRecord:
    """The initial model of the tests (two arrays, 37 values)."""
    g = torch.Generator().manual_seed(7)
    return ArrayRecord(
        {k: Array(torch.rand(s, generator=g).numpy().astype(np.float32)) for k, s in SHAPES.items()}
    )


def _fault(context: Context, index: int) -> tuple[str, str] | None:
    spec = context.run_config.get(f"fault.{index}")
    if not isinstance(spec, str) or ":" not in spec:
        return None
    kind, stage = spec.split(":", 1)
    return kind, stage


def fault_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Injects the configured fault of this node at the configured stage."""
    index = int(context.node_config.get("partition-id", context.node_config.get("index", -1)))
    fault = _fault(context, index)
    rec = msg.content.config_records.get(RECORD)
    if fault is not None and rec is not None:
        stage = rec.get("stage")
        if stage == "trained":
            stage = "advertise_keys"
        if stage == fault[1]:
            if fault[0] == "raise":
                raise RuntimeError(f"node {index} fails at {stage}")
            time.sleep(float(context.run_config.get("hang-seconds", 30.0)))
    return call_next(msg, context)


def make_client_app() -> ClientApp:
    """A ClientApp whose training adds :func:`node_update` to the global model."""
    app = ClientApp(mods=[fault_mod, secure_aggregation_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        index = int(context.node_config.get("partition-id", context.node_config.get("index", -1)))
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        flat = np.concatenate([a.numpy().reshape(-1) for a in arrays.values()])
        new = flat + node_update(index, flat.size)
        out, start = {}, 0
        for k, a in arrays.items():
            n = a.numpy().size
            out[k] = Array(new[start : start + n].reshape(a.numpy().shape).astype(np.float32))
            start += n
        metrics = MetricRecord({"num-examples": node_examples(index), "train_loss": 0.5})
        return Message(RecordDict({"arrays": ArrayRecord(out), "metrics": metrics}), reply_to=msg)

    return app


class LocalGrid(Grid):
    """A ``Grid`` that calls a ClientApp in process (one Context per node), for fast tests.

    ``faults`` maps a node index to ``"raise:<stage>"`` or ``"hang:<stage>"``;
    a hanging node's reply is withheld (as if it never answered).
    """

    def __init__(self, app: ClientApp, n: int, faults: dict[int, str] | None = None) -> None:
        self.app = app
        self.node_ids = [1000 + 17 * i for i in range(n)]
        cfg = {f"fault.{i}": f for i, f in (faults or {}).items()}
        cfg["hang-seconds"] = 0.0
        self.contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": n},
                state=RecordDict(),
                run_config=dict(cfg),
            )
            for i, nid in enumerate(self.node_ids)
        }
        self.faults = faults or {}

    def set_run(self, run: Any) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self) -> Any:  # pragma: no cover - unused
        return None

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        ids = ("_run_id", "_node_id", "_task_id")
        old = [getattr(TaskIdentity, k) for k in ids]  # Message() reads the task's ids
        for k in ids:
            setattr(TaskIdentity, k, 1)
        try:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)
        finally:
            for k, v in zip(ids, old, strict=True):
                setattr(TaskIdentity, k, v)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            nid = msg.metadata.dst_node_id
            index = self.node_ids.index(nid)
            fault = self.faults.get(index, "")
            stage = msg.content.config_records[RECORD]["stage"]
            stage = "advertise_keys" if stage == "trained" else stage
            if fault == f"hang:{stage}":
                continue  # never answers in time
            try:
                out.append(self.app(msg, self.contexts[nid]))
            except Exception as exc:  # noqa: BLE001 - what Flower does: an error reply
                out.append(Message(Error(code=0, reason=str(exc)), reply_to=msg))
        return out

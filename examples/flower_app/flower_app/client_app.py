"""ClientApp: local training; fl's secure aggregation is the one mod added.

``secure_aggregation_mod`` runs the protocol stages and calls ``train`` below
once per round. Flower's own SecAgg+ (a legacy ``NumPyClient`` behind
``secaggplus_mod``) is here only so the benchmark compares both in one app.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from fl.flower import secure_aggregation_mod
from flower_app.task import load_data, mlp
from flower_app.task import train as local_train

modern = ClientApp(mods=[secure_aggregation_mod])


def _fit(state: dict[str, torch.Tensor], context: Context, config: Any) -> tuple[Any, int, float]:
    model = mlp()
    model.load_state_dict(state)
    pid = int(context.node_config["partition-id"])
    x, y = load_data(pid, int(context.node_config["num-partitions"]))
    loss = local_train(
        model,
        x,
        y,
        epochs=int(config.get("epochs", context.run_config.get("local-epochs", 1))),
        batch_size=int(config.get("batch_size", context.run_config.get("batch-size", 32))),
        lr=float(config.get("lr", context.run_config.get("lr", 0.05))),
        seed=pid * 1000 + int(config.get("server-round", 0)),
    )
    return model, len(y), loss


@modern.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this node's shard; reply with it and the sample count."""
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    config = msg.content.config_records.get("config", {})
    model, n, loss = _fit(arrays.to_torch_state_dict(), context, config)
    metrics = MetricRecord({"train_loss": loss, "num-examples": n})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content, reply_to=msg)


class _LegacyClient(NumPyClient):  # type: ignore[misc]
    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        keys = list(mlp().state_dict())
        state = {k: torch.from_numpy(v) for k, v in zip(keys, parameters, strict=True)}
        model, n, loss = _fit(state, self.context, config)
        return [v.numpy() for v in model.state_dict().values()], n, {"train_loss": loss}


legacy = ClientApp(
    client_fn=lambda context: _LegacyClient(context).to_client(), mods=[secaggplus_mod]
)

app = ClientApp()


@app.train()
def dispatch(msg: Message, context: Context) -> Message:
    """Flower's SecAgg+ messages go to the legacy client, all others to ``modern``."""
    legacy_msg = any(k.startswith(("fitins", "secaggplus")) for k in msg.content)
    return (legacy if legacy_msg else modern)(msg, context)

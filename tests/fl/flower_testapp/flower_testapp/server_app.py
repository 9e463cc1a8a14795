"""The test ServerApp: fl's masking aggregation; writes the history as JSON."""

from __future__ import annotations

import json

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

import fl
from fl.flower import SecureAggregation, flatten_arrays
from tests.fl.flower_apps import global_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the rounds; write survivors, failures and the models to ``result-file``."""
    cfg = context.run_config
    workflow = SecureAggregation(
        fl.MaskingAggregator(),
        fl.FedAvg(),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["stage-timeout"]),
        train_timeout=120.0,
        min_nodes=int(cfg["min-nodes"]),
        on_failure="record",
    )
    initial = global_model()
    arrays, history = workflow(grid, initial)
    out = {
        "arrays": [flatten_arrays(initial).tolist(), flatten_arrays(arrays).tolist()],
        "rounds": [
            {
                "selected": list(r.selected),
                "survivors": list(r.survivors),
                "failed": r.failed,
                "error": r.error,
            }
            for r in history
        ],
    }
    with open(str(cfg["result-file"]), "w", encoding="utf-8") as f:
        json.dump(out, f)

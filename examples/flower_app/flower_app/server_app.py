"""ServerApp: fl's secure aggregation under fl's FedAvg, in a few lines.

``aggregation`` in the run config picks the aggregation: ``masking``
(:class:`fl.MaskingAggregator`, the default), ``masking-fast`` (the same with
``reuse_keys=True``: two exchanges per round after the first),
``secret-sharing`` (:class:`fl.SecretSharingAggregator` with 3 SuperNodes as
parties), ``plain`` (:class:`fl.PlainAggregator`), or, for the benchmark only,
Flower's own ``flower-fedavg`` and ``flower-secaggplus``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

import fl
from fl.flower import SecureAggregation
from flower_app.task import mlp, test

app = ServerApp()


def _evaluate(arrays: ArrayRecord) -> tuple[float, float]:
    model = mlp()
    model.load_state_dict(arrays.to_torch_state_dict())
    return test(model)


def run(grid: Grid, context: Context, cfg: dict[str, Any]) -> dict[str, Any]:
    """Train for ``num-server-rounds`` rounds; return timings and the final accuracy."""
    rounds, mode = int(cfg["num-server-rounds"]), str(cfg["aggregation"])
    strategy = fl.FedAvg(
        epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]), lr=float(cfg["lr"])
    )
    fit = strategy.fit_config(1)
    initial = ArrayRecord(mlp().state_dict())
    stamps: list[float] = []
    accuracy: list[float] = []
    out: dict[str, Any] = {"aggregation": mode, "rounds": rounds}

    def evaluate(arrays: ArrayRecord) -> tuple[float, float]:
        loss, acc = _evaluate(arrays)
        stamps.append(time.perf_counter())
        accuracy.append(acc)
        return loss, acc

    if mode in ("masking", "masking-fast", "secret-sharing", "plain"):
        aggregator: fl.Aggregator
        if mode.startswith("masking"):
            aggregator = fl.MaskingAggregator(bits=int(cfg["bits"]))
        elif mode == "secret-sharing":
            aggregator = fl.SecretSharingAggregator(parties=3)
        else:
            aggregator = fl.PlainAggregator()
        evaluate(initial)
        workflow = SecureAggregation(
            aggregator,
            strategy,
            num_rounds=rounds,
            timeout=float(cfg["stage-timeout"]),
            min_nodes=int(cfg.get("min-nodes", 1)),
            evaluate_fn=lambda _r, arrays: evaluate(arrays),
            reuse_keys=mode == "masking-fast",
        )
        _, history = workflow(grid, initial)
        out["upload_bytes"] = [r.upload_bytes for r in history]
        out["survivors"] = [len(r.survivors) for r in history]
        stages = workflow.stage_seconds
        names = dict.fromkeys(k for d in stages for k in d)  # round 1 may differ (reuse_keys)
        out["stage_seconds"] = {
            k: sum(d[k] for d in stages if k in d) / sum(k in d for d in stages) for k in names
        }
    elif mode == "flower-fedavg":
        from flwr.serverapp.strategy import FedAvg

        n = len(list(grid.get_node_ids()))
        flower_avg = FedAvg(fraction_evaluate=0.0, min_available_nodes=n, min_train_nodes=n)
        flower_avg.start(
            grid,
            initial,
            num_rounds=rounds,
            train_config=ConfigRecord(
                {"lr": fit.lr, "epochs": fit.epochs, "batch_size": fit.batch_size}
            ),
            evaluate_fn=lambda _r, arrays: MetricRecord(
                dict(zip(("loss", "accuracy"), evaluate(arrays), strict=True))
            ),
        )
    elif mode == "flower-secaggplus":
        import numpy as np
        from flwr.common import ndarrays_to_parameters
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg as LegacyFedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        keys = list(initial.keys())
        n = len(list(grid.get_node_ids()))

        def legacy_eval(_r: int, nds: list[np.ndarray], _c: Any) -> tuple[float, dict[str, Any]]:
            arrays = ArrayRecord(dict(zip(keys, map(torch.from_numpy, nds), strict=True)))
            loss, acc = evaluate(arrays)
            return loss, {"accuracy": acc}

        legacy = LegacyFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters(initial.to_numpy_ndarrays()),
            evaluate_fn=legacy_eval,
            on_fit_config_fn=lambda r: {
                "lr": fit.lr,
                "epochs": fit.epochs,
                "batch_size": fit.batch_size,
                "server-round": r,
            },
        )
        ctx = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=legacy)
        # all pairs, threshold a majority: the same setting as MaskingAggregator's default
        DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=n // 2 + 1)
        )(grid, ctx)
    else:
        raise fl.ConfigError(
            "`aggregation` must be masking, masking-fast, secret-sharing, plain, "
            "flower-fedavg or flower-secaggplus; "
            f"got {mode!r}"
        )
    out["seconds_per_round"] = (stamps[-1] - stamps[0]) / rounds if len(stamps) > 1 else 0.0
    out["round_seconds"] = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out["accuracy"] = accuracy[-1] if accuracy else float("nan")
    return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured aggregation; write the summary to ``result-file`` if set."""
    cfg = dict(context.run_config)
    out = run(grid, context, cfg)
    print(
        f"{out['aggregation']}: accuracy {out['accuracy']:.4f}, "
        f"{out['seconds_per_round']:.3f} s per round"
    )
    if cfg.get("result-file"):
        with open(str(cfg["result-file"]), "w", encoding="utf-8") as f:
            json.dump(out, f)

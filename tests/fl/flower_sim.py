"""Runs :mod:`fl.flower` on Flower's simulation engine (Ray); prints the run as JSON.

Not a test module: ``tests/fl/test_flower.py`` starts it in a fresh network
namespace (only a loopback interface), so Ray cannot listen beyond loopback.

Rounds (10 SuperNodes, ``MaskingAggregator``, FedAvg):
    1. one node hangs at SHARE_KEYS, one raises at INPUT, one hangs at UNMASK;
    2. one node raises at ADVERTISE_KEYS (stage 0, with training);
    3. five nodes raise at SHARE_KEYS: too few survivors, a failed round.

With the argument ``secret-sharing`` (5 SuperNodes, ``SecretSharingAggregator(3)``):
    1. one node raises at INPUT;
    2. one node raises while training (stage 0);
    3. every node raises at the parties' SUM stage: a failed round.
    Then ``MaskingAggregator`` with ``reuse_keys=True``: round 1 (four stages;
    node 2 raises at INPUT), round 2 (two exchanges; node 4 raises while
    training).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def main() -> None:
    """Run the scenario and print ``{"nodes", "rounds", "arrays"}`` as one JSON line."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    import fl
    from fl.flower import SecureAggregation, flatten_arrays
    from tests.fl.flower_apps import global_model, make_client_app

    timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 6.0
    sharing = len(sys.argv) > 2 and sys.argv[2] == "secret-sharing"
    n = 5 if sharing else 10
    faults = {
        1: "hang:share_keys@1",
        2: "raise:input@1",
        3: "hang:unmask@1",
        4: "raise:advertise_keys@2",
        **{i: "raise:share_keys@3" for i in range(5, 10)},
    }
    if sharing:  # "+" joins several faults of one node
        faults = {i: "raise:sum@3" for i in range(5)}
        faults[2] = "raise:input@1+raise:sum@3"
        faults[4] = "raise:advertise_keys@2+raise:sum@3"
    agg: fl.Aggregator = fl.SecretSharingAggregator(3) if sharing else fl.MaskingAggregator()
    out: dict[str, Any] = {"arrays": []}
    server = ServerApp()
    wf = SecureAggregation(
        agg,
        fl.FedAvg(),
        num_rounds=1,
        timeout=timeout,
        train_timeout=120.0,
        min_nodes=n,
        on_failure="record",
    )

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        arrays = global_model()
        out["arrays"].append(flatten_arrays(arrays).tolist())
        for _ in range(3):
            arrays, history = wf(grid, arrays)
            out["arrays"].append(flatten_arrays(arrays).tolist())
        out["nodes"] = sorted(history.rounds[0].selected)
        out["rounds"] = [
            {"survivors": list(r.survivors), "failed": r.failed, "error": r.error} for r in history
        ]
        if sharing:  # then masking with reuse_keys on the same nodes: a standard, a fast round
            fast = SecureAggregation(
                fl.MaskingAggregator(), timeout=timeout, train_timeout=120.0, reuse_keys=True
            )
            out["fast_arrays"] = [out["arrays"][-1]]
            for _ in range(2):
                arrays, history = fast(grid, arrays)
                out["fast_arrays"].append(flatten_arrays(arrays).tolist())
            out["fast_rounds"] = [
                {"survivors": list(r.survivors), "failed": r.failed, "error": r.error}
                for r in history
            ]
            out["fast_stages"] = [sorted(d) for d in fast.stage_seconds]

    run_simulation(
        server,
        make_client_app(faults, hang_seconds=timeout + 4),
        num_supernodes=n,
        backend_config={
            "init_args": {
                "num_cpus": 4,
                "_node_ip_address": "127.0.0.1",
                "include_dashboard": False,
                "logging_level": "ERROR",
                "log_to_driver": False,
            },
            "client_resources": {"num_cpus": 1},
        },
    )
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

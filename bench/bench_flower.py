"""fl's masking over Flower vs Flower's own FedAvg and SecAgg+, in one simulation run.

W1 (same app, same run): ``examples/flower_app`` (MLP 784-128-64-10, the 4,000
shipped MNIST training digits split IID over 10 SuperNodes, 1 local epoch)
trained for ``--rounds`` rounds by, in turn on the same warmed-up SuperNodes:
Flower's plain ``FedAvg`` (Message API), Flower's ``SecAggPlusWorkflow``
(all pairs, threshold a majority: the setting of ``MaskingAggregator``'s
default), ``fl.MaskingAggregator`` through :class:`fl.flower.SecureAggregation`
(four exchanges per round, then with ``reuse_keys=True``: two exchanges per
round after the first) and ``fl.SecretSharingAggregator`` (3 SuperNodes as
parties, three exchanges).
Prints seconds per round, the ratios to Flower's plain round measured in the
same run, fl's upload per parameter and the final test accuracy of each.

W2: 50 SuperNodes x 1M parameters, fl's masking over Flower: seconds per round
(the client "training" adds a fixed random update; the round is aggregation).

Ray binds some of its ports to every interface; run this in a network
namespace with only a loopback interface, as the tests do::

    unshare -rn sh -c 'ip link set lo up && exec python bench/bench_flower.py'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "flower_app")]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), str(ROOT / "examples" / "flower_app"), os.environ.get("PYTHONPATH", "")]
)

from _common import StealMeter  # noqa: E402


def _backend(num_cpus: int) -> dict[str, Any]:
    return {
        "init_args": {
            "num_cpus": num_cpus,
            "_node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
        "client_resources": {"num_cpus": 1},
    }


MODES = ("flower-fedavg", "flower-secaggplus", "masking", "masking-fast", "secret-sharing")


def w1(rounds: int, nodes: int, cpus: int, modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    """Flower FedAvg, Flower SecAgg+ and fl masking on the example app, one run."""
    from flower_app.client_app import app as client_app
    from flower_app.server_app import run
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    base = {
        "bits": 32,
        "local-epochs": 1,
        "batch-size": 32,
        "lr": 0.05,
        "stage-timeout": 600.0,
        "min-nodes": nodes,
    }
    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run(grid, context, {**base, "aggregation": "plain", "num-server-rounds": 1})  # warm-up
        for mode in modes:
            out[mode] = run(
                grid, context, {**base, "aggregation": mode, "num-server-rounds": rounds}
            )

    run_simulation(server, client_app, num_supernodes=nodes, backend_config=_backend(cpus))
    return out


def w2(nodes: int, dim: int, rounds: int, cpus: int) -> dict[str, Any]:
    """Masking of ``fl`` over Flower: ``nodes`` SuperNodes x ``dim`` parameters."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    import fl
    from fl.flower import SecureAggregation
    from tests.fl.flower_apps import make_client_app

    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        arrays = ArrayRecord({"w": Array(np.zeros(dim, dtype=np.float32))})
        for name, reuse in (("masking", False), ("masking-fast", True)):
            wf = SecureAggregation(
                fl.MaskingAggregator(),
                fl.FedAvg(),
                num_rounds=rounds + 1,
                timeout=600.0,
                min_nodes=nodes,
                reuse_keys=reuse,
            )
            _, history = wf(grid, arrays)
            secs = [r.seconds for r in history.rounds[1:]]  # round 1 warms up / learns keys
            out[name] = {
                "first_round_seconds": history.rounds[0].seconds,
                "seconds_per_round": sum(secs) / len(secs),
                "upload_bytes_per_parameter": history.rounds[-1].upload_bytes / dim,
                "survivors": len(history.rounds[-1].survivors),
            }

    run_simulation(server, make_client_app(), num_supernodes=nodes, backend_config=_backend(cpus))
    return out


def main() -> None:
    """Run W1 and W2 and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=4, help="Ray CPUs (actors running ClientApps)")
    ap.add_argument("--big-nodes", type=int, default=50)
    ap.add_argument("--big-dim", type=int, default=1_000_000)
    ap.add_argument("--big-rounds", type=int, default=2)
    ap.add_argument("--only", choices=["W1", "W2"])
    ap.add_argument(
        "--modes",
        default=",".join(MODES),
        help="W1's aggregations, comma-separated (flower-fedavg is always run first)",
    )
    args = ap.parse_args()
    dim = 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    if args.only in (None, "W1"):
        with StealMeter() as steal:
            t0 = time.perf_counter()
            modes = ("flower-fedavg", *(m for m in args.modes.split(",") if m != "flower-fedavg"))
            res = w1(args.rounds, args.nodes, args.cpus, modes)
            wall = time.perf_counter() - t0
        plain = res["flower-fedavg"]["seconds_per_round"]
        print(
            f"W1: MLP 784-128-64-10 ({dim} parameters), {args.nodes} SuperNodes, "
            f"{args.rounds} rounds, IID (wall {wall:.0f} s, steal {steal.fraction:.0%})"
        )
        for mode, r in res.items():
            line = (
                f"  {mode:18s} {r['seconds_per_round']:.3f} s/round "
                f"({r['seconds_per_round'] / plain:.2f}x Flower FedAvg)  "
                f"accuracy {r['accuracy']:.4f}"
            )
            if "stage_seconds" in r:
                stages = ", ".join(f"{k} {v:.3f}" for k, v in r["stage_seconds"].items())
                line += f"\n{'':21s}per exchange (s): {stages}"
            if "upload_bytes" in r:
                line += (
                    f"  upload {sum(r['upload_bytes']) / len(r['upload_bytes']) / dim:.3f} B/param"
                )
            print(line)
        for mode in ("masking", "masking-fast", "secret-sharing"):
            if mode not in res or "flower-secaggplus" not in res:
                continue
            sec = res["flower-secaggplus"]["seconds_per_round"] / res[mode]["seconds_per_round"]
            print(f"  fl {mode} is {sec:.2f}x faster than Flower SecAgg+ per round")
        print("W1 " + json.dumps(res))
    if args.only in (None, "W2"):
        r2 = w2(args.big_nodes, args.big_dim, args.big_rounds, args.cpus)
        for name, r in r2.items():
            print(
                f"W2: {args.big_nodes} SuperNodes x {args.big_dim} parameters, fl {name} over "
                f"Flower: {r['seconds_per_round']:.2f} s/round after the first "
                f"({r['first_round_seconds']:.2f} s), "
                f"upload {r['upload_bytes_per_parameter']:.3f} B/param"
            )
        print("W2 " + json.dumps(r2))


if __name__ == "__main__":
    main()

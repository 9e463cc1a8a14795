"""Benchmarks of the federated layer: F1, F3 (docs/performance.md).

F1: 10 clients, IID split of the 4,000 MNIST training images, MLP 784-128-64-10,
    1 local epoch, batch 32, SGD lr 0.05, 20 rounds: accuracy per round and wall
    time with each aggregator (plus the non-IID "shards" split, 2 classes/client),
    then the adaptive server optimisers FedAdagrad, FedAdam, FedYogi (Reddi et
    al. 2021; server lr eta = 0.1, the best of {0.001, 0.003, 0.01, 0.03, 0.1} in
    a 10-round sweep on the IID split; client lr eta_l = 0.05 as FedAvg's) beside
    FedAvg on both splits, and FedAdam through the masking aggregator.
F3: aggregation only, MaskingAggregator, 1,000,000-parameter updates, 10/50/100
    clients, 0 % and 20 % dropouts (dropped after sharing keys, before sending
    their input: the costliest case for the server), all pairs and k neighbours:
    seconds per round (all clients simulated in this process, one after the
    other) and bytes uploaded per client per parameter.

Run: ``python bench/bench_fl.py [--quick] [--only F1|F3]``.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch import nn

import fl
import smpc
from fl.aggregators import Stage
from fl.types import ClientUpdate
from smpc.data import load_mnist

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def f1(rounds: int) -> None:
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    x, xt = (x - MNIST_MEAN) / MNIST_STD, (xt - MNIST_MEAN) / MNIST_STD  # the usual Normalize
    strategy = fl.FedAvg(epochs=1, batch_size=32, lr=0.05)
    iid = fl.make_clients(fl.partition(y, 10, "iid", seed=0), x, y)
    shards = fl.make_clients(fl.partition(y, 10, "shards", classes_per_client=2, seed=0), x, y)
    fl.run_simulation(mlp(), iid, num_rounds=1, strategy=strategy, test_data=(xt, yt))  # warm-up
    runs = [
        ("plain/iid", iid, fl.PlainAggregator()),
        ("masking/iid", iid, fl.MaskingAggregator()),
        ("secret-sharing/iid", iid, fl.SecretSharingAggregator(2)),
        (
            "plain+dp(z=0.3,C=2)/iid",
            iid,
            fl.PlainAggregator(dp=fl.DifferentialPrivacy(clip_norm=2.0, noise_multiplier=0.3)),
        ),
        ("plain/shards", shards, fl.PlainAggregator()),
        ("masking/shards", shards, fl.MaskingAggregator()),
    ]
    print(f"F1: {rounds} rounds, 10 clients, MLP 784-128-64-10, 1 epoch, batch 32, SGD lr 0.05")
    times: dict[str, float] = {}
    for name, clients, agg in runs:
        t = time.perf_counter()
        h = fl.run_simulation(
            mlp(), clients, num_rounds=rounds, strategy=strategy, aggregator=agg, test_data=(xt, yt)
        )
        times[name] = time.perf_counter() - t
        accs = " ".join(f"{a:.3f}" for a in h.accuracy)
        eps = f"  eps={h.epsilon[-1]:.2f}" if h.epsilon[-1] == h.epsilon[-1] else ""
        print(
            f"  {name:26s} {times[name]:6.2f} s  final acc {h.accuracy[-1]:.4f}{eps}\n"
            f"      per round: {accs}"
        )
    adaptive: list[tuple[str, list[fl.Client], fl.Aggregator, fl.FedAvg]] = [
        (f"{cls.__name__}/{split}", clients, fl.PlainAggregator(), cls(eta=0.1, eta_l=0.05))
        for split, clients in (("iid", iid), ("shards", shards))
        for cls in (fl.FedAdagrad, fl.FedAdam, fl.FedYogi)
    ]
    adaptive.append(
        ("FedAdam+masking/iid", iid, fl.MaskingAggregator(), fl.FedAdam(eta=0.1, eta_l=0.05))
    )
    for name, clients, agg, strat in adaptive:
        t = time.perf_counter()
        h = fl.run_simulation(
            mlp(), clients, num_rounds=rounds, strategy=strat, aggregator=agg, test_data=(xt, yt)
        )
        times[name] = time.perf_counter() - t
        accs = " ".join(f"{a:.3f}" for a in h.accuracy)
        print(
            f"  {name:26s} {times[name]:6.2f} s  final acc {h.accuracy[-1]:.4f}\n"
            f"      per round: {accs}"
        )
    dim = sum(p.numel() for p in mlp().parameters())
    w, d = torch.zeros(dim), torch.randn(dim, generator=torch.Generator().manual_seed(0)) * 1e-3
    step: dict[str, float] = {}
    for strat in (fl.FedAvg(), fl.FedAdagrad(), fl.FedAdam(), fl.FedYogi()):
        strat.apply(w, d)  # warm-up (allocates the moments)
        best = float("inf")
        for _ in range(100):  # best of 100: the machine may be shared
            t = time.perf_counter()
            strat.apply(w, d)
            best = min(best, time.perf_counter() - t)
        step[type(strat).__name__] = best
    print(
        f"  server step on {dim:,} parameters: "
        + ", ".join(
            f"{k} {v * 1e3:.3f} ms ({v / step['FedAvg']:.1f}x FedAvg)" for k, v in step.items()
        )
    )
    for name, _, _, _ in adaptive:
        base = "plain/" + name.split("/")[1]
        print(f"  {name} / FedAvg {base} time ratio: {times[name] / times[base]:.2f}")
    print(f"  masking / plain time ratio (iid): {times['masking/iid'] / times['plain/iid']:.2f}")
    print(
        "  secret-sharing / plain time ratio (iid): "
        f"{times['secret-sharing/iid'] / times['plain/iid']:.2f}"
    )


def f3(sizes: list[int], dim: int) -> None:
    print(f"F3: MaskingAggregator, aggregation only, {dim:,} parameters per update")
    print("  clients  graph          bits  dropout  s/round  bytes/param/client  survivors")
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        ups = [ClientUpdate(i, torch.rand(dim, generator=g) - 0.5, 100) for i in range(n)]
        for k, rate, bits in itertools.product((None, 8), (0.0, 0.2), (32, 24)):
            if k is not None and k >= n - 1:
                continue
            # SecAgg+: the threshold is per neighbourhood (k + 1 = 9 holders); t = 3
            # survives 20 % random dropouts with margin (t = 5 can fail when a
            # neighbourhood loses 5, which happens at n = 50).
            t = None if k is None else 3
            agg = fl.MaskingAggregator(clip_range=1.0, neighbours=k, threshold=t, bits=bits)
            dropped = list(range(0, n, 5))[: int(rate * n)] if rate else []
            start = time.perf_counter()
            try:
                res = agg.aggregate(ups, dropouts={Stage.INPUT: dropped} if dropped else None)
            except fl.InsufficientClientsError as exc:
                print(f"  {n:7d}  k={k}  {bits}  {rate:6.0%}  FAILED: {exc}")
                continue
            sec = time.perf_counter() - start
            per_param = sum(res.upload_bytes.values()) / len(res.upload_bytes) / dim
            graph = "all pairs" if k is None else f"{k} neighbours"
            print(
                f"  {n:7d}  {graph:13s}  {bits:4d}  {rate:6.0%}  {sec:7.2f}  {per_param:18.4f}  "
                f"{len(res.survivors)}"
            )
            del res


def main() -> None:
    smpc.perf.keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds, 100k parameters, 10/20 clients")
    ap.add_argument("--only", choices=["F1", "F3"])
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "F1"):
        f1(3 if args.quick else 20)
    if args.only in (None, "F3"):
        f3([10, 20] if args.quick else [10, 50, 100], 100_000 if args.quick else 1_000_000)


if __name__ == "__main__":
    main()

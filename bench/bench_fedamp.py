"""Benchmark of personalised federated learning: FedAMP against its baselines.

Pathological non-IID split (``fl.partition(..., "shards", classes_per_client=2)``)
of the 5,000 shipped MNIST digits (and of 5,000 Fashion-MNIST images, 500 per
class, when Debian's ``dataset-fashion-mnist`` IDX files are installed or
``--fashion-path`` names a directory of them) among 20 clients, each
holding out 25 % of its rows as its own test split (PFLlib's protocol). MLP
784-128-10 (101,770 parameters), 1 local epoch per round, batch 32, SGD.
``--per-class 7000 --datasets fashion-mnist`` runs on all 70,000 Fashion-MNIST
images instead (the shipped MNIST has 500 per class only).

Reported: mean personalised test accuracy (every client on its own test
split, pooled over test examples) of local-only training, FedAvg (the global
model), FedAvg + one epoch of local fine-tuning, FedProx, FedAMP and FedAMP on
secret shares (``fl.FedAMP(secure=True)``: 2 aggregation parties); then the
cost of one secure FedAMP step for 20 clients x 101,770 parameters (seconds,
rounds, bytes) beside the plaintext step measured in the same run.

With ``--validation`` the test splits are left unused: each client holds
out ``--val-fraction`` (default 25 %) of its training rows as a validation
split and every accuracy is measured there; ``--val-folds K`` averages K
disjoint folds per split (``--val-fraction 0.125 --val-folds 4`` trains on
87.5 % of the training rows, closer to the test protocol's training size, and
scores half of them). FedAMP's default hyperparameters were chosen that way
(``--validation --no-secure --methods local,fedamp --seeds 10 --lam ...``),
never on the test splits.

With two or more methods and more than four splits, the paired difference
FedAMP - local only is also tested for non-inferiority: its one-sided 95 %
lower confidence bound (Student's t over the splits) must lie above
-0.5 points, the same tolerance the secure run must meet against plaintext.

Run: ``python bench/bench_fedamp.py [--rounds R] [--seeds S] [--first-seed K] [--quick]
[--no-secure] [--datasets mnist,fashion-mnist] [--per-class N]
[--fashion-path DIR] [--validation [--val-fraction F] [--val-folds K]]
[--methods local,fedavg,fedprox,fedamp]
[--self-weight W] [--sigma S] [--lam L] [--alpha-k A]`` (``--methods local,fedamp``
runs only the comparison that matters for tuning; the paired per-split difference
FedAMP - local only is printed when both run)
(FedAMP's hyperparameters default to ``fl.FedAMP()``'s).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fl
from fl.client import load_vector
from fl.fedamp import cloud_models, secure_cloud_models
from fl.types import FitConfig
from smpc.data import load_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StealMeter  # noqa: E402

FASHION_DIRS = (
    "/usr/share/datasets/fashion-mnist",
    "/usr/share/dataset-fashion-mnist",
    "/usr/share/data/fashion-mnist",
)
PER_CLASS = 500
N_CLIENTS = 20
EPOCHS, BATCH, LR = 1, 32, 0.05
METHODS = ("local", "fedavg", "fedprox", "fedamp")
NON_INFERIORITY_MARGIN = 0.5  # points; the tolerance the secure run must meet, too


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def load_pooled(
    name: str, fashion_path: str | None = None, per_class: int = PER_CLASS
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The images of a dataset (at most ``per_class`` each), normalised; ``None`` when absent."""
    if name == "mnist":
        x, y = load_mnist("train")
        xt, yt = load_mnist("test")
    else:
        dirs = (fashion_path,) if fashion_path else FASHION_DIRS
        found = next((d for d in dirs if Path(d).is_dir()), None)
        if found is None:
            return None
        try:
            x, y = load_mnist("train", path=found)
            xt, yt = load_mnist("test", path=found)
        except (OSError, ValueError) as exc:
            print(f"  fashion-mnist at {found} unreadable: {exc}")
            return None
    xs, ys = torch.cat([x, xt]), torch.cat([y, yt])
    keep = torch.cat([torch.nonzero(ys == c).flatten()[:per_class] for c in range(10)])
    xs, ys = xs[keep], ys[keep]  # by default the shipped MNIST's size: both runs cost the same
    xs = (xs - xs.mean()) / xs.std()
    return xs, ys


def personalised_accuracy(clients: list[fl.Client], vectors: dict[int, torch.Tensor]) -> float:
    """Each client's model (``vectors[id]``) on its own test split, pooled."""
    worker = mlp()
    params = list(worker.parameters())
    correct, total = 0.0, 0
    for c in clients:
        load_vector(params, vectors[c.client_id])
        _, acc = c.evaluate_test(worker)
        correct += acc * c.num_test_examples
        total += c.num_test_examples
    return correct / total


def local_only(clients: list[fl.Client], rounds: int) -> float:
    worker = mlp()
    init = torch.nn.utils.parameters_to_vector(worker.parameters()).detach()
    cfg = FitConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR)
    own = {}
    for c in clients:
        w = init.clone()
        g = torch.Generator().manual_seed(c.client_id)
        for _ in range(rounds):
            w = w + c.fit(worker, w, cfg, generator=g).delta
        own[c.client_id] = w
    return personalised_accuracy(clients, own)


def global_runs(
    clients: list[fl.Client], rounds: int, strategy: fl.FedAvg, *, fine_tune: bool
) -> tuple[float, float]:
    server = fl.Server(mlp(), clients, strategy=strategy, seed=0)
    server.run(rounds, progress=False)
    glob = server.global_vector
    acc = personalised_accuracy(clients, dict.fromkeys((c.client_id for c in clients), glob))
    if not fine_tune:
        return acc, math.nan
    cfg = FitConfig(epochs=1, batch_size=BATCH, lr=LR)
    tuned = {}
    for c in clients:
        g = torch.Generator().manual_seed(c.client_id)
        tuned[c.client_id] = glob + c.fit(server.worker, glob, cfg, generator=g).delta
    return acc, personalised_accuracy(clients, tuned)


def fedamp_run(clients: list[fl.Client], rounds: int, strategy: fl.FedAMP) -> tuple[float, float]:
    server = fl.Server(mlp(), clients, strategy=strategy, seed=0)
    t = time.perf_counter()
    h = server.run(rounds, progress=False)
    return h.accuracy[-1], (time.perf_counter() - t) / rounds


def validation_clients(
    clients: list[fl.Client], seed: int, fraction: float = 0.25, fold: int = 0
) -> list[fl.Client]:
    """The clients with their test splits dropped and ``fraction`` of their training rows held out.

    Fold ``k`` holds out the ``k``-th block of ``fraction`` of the rows of a
    fixed random order (folds are disjoint). Hyperparameters are chosen on
    these validation splits (``--validation``), never on the test splits.
    """
    out = []
    for c in clients:
        g = torch.Generator().manual_seed(1000 + 100 * seed + c.client_id)
        order = torch.randperm(c.num_examples, generator=g)
        n_val = round(fraction * c.num_examples)
        held = torch.zeros(c.num_examples, dtype=torch.bool)
        held[order[fold * n_val : (fold + 1) * n_val]] = True
        val, train = torch.nonzero(held).flatten(), torch.nonzero(~held).flatten()
        out.append(
            fl.Client(
                c.client_id,
                c.features[train],
                c.labels[train],
                test_data=(c.features[val], c.labels[val]),
            )
        )
    return out


def one_split(
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    rounds: int,
    secure: bool,
    amp: dict[str, float],
    validation: bool = False,
    methods: frozenset[str] = frozenset(METHODS),
    val_fraction: float = 0.25,
    fold: int = 0,
) -> list[tuple[str, float, float]]:
    """The chosen methods on the split of ``seed``: (label, accuracy, seconds)."""
    part = fl.partition(y, N_CLIENTS, "shards", classes_per_client=2, seed=seed)
    clients = fl.make_clients(part, x, y, test_fraction=0.25, seed=seed)
    if validation:
        clients = validation_clients(clients, seed, val_fraction, fold)
    rows: list[tuple[str, float, float]] = []
    if "local" in methods:
        t = time.perf_counter()
        rows.append(("local only", local_only(clients, rounds), time.perf_counter() - t))
    if "fedavg" in methods:
        t = time.perf_counter()
        fedavg, tuned = global_runs(
            clients, rounds, fl.FedAvg(epochs=EPOCHS, batch_size=BATCH, lr=LR), fine_tune=True
        )
        dt = time.perf_counter() - t
        rows.append(("FedAvg (global model)", fedavg, dt))
        rows.append(("FedAvg + 1 epoch fine-tuning", tuned, dt))
    if "fedprox" in methods:
        t = time.perf_counter()
        prox_strategy = fl.FedProx(mu=0.01, epochs=EPOCHS, batch_size=BATCH, lr=LR)
        prox, _ = global_runs(clients, rounds, prox_strategy, fine_tune=False)
        rows.append(("FedProx (mu=0.01)", prox, time.perf_counter() - t))
    kw: dict[str, Any] = dict(amp, epochs=EPOCHS, batch_size=BATCH, lr=LR)
    if "fedamp" in methods or secure:
        t = time.perf_counter()
        plain, _ = fedamp_run(clients, rounds, fl.FedAMP(**kw))
        rows.append(("FedAMP", plain, time.perf_counter() - t))
    if secure:
        t = time.perf_counter()
        sec, _ = fedamp_run(clients, rounds, fl.FedAMP(secure=True, **kw))
        rows.append(("FedAMP, secret-shared (2 parties)", sec, time.perf_counter() - t))
    return rows


def t_quantile_95(df: int) -> float:
    """One-sided 95 % quantile of Student's t with ``df`` degrees of freedom.

    The Cornish-Fisher expansion around the normal quantile (Abramowitz and
    Stegun 26.7.5): within 0.002 of the exact value from ``df = 4`` on, so the
    benchmark needs no statistics package.
    """
    z = 1.6448536269514722
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def accuracy_table(
    name: str,
    rounds: int,
    secure: bool,
    amp: dict[str, float],
    seeds: range,
    fashion_path: str | None = None,
    validation: bool = False,
    methods: frozenset[str] = frozenset(METHODS),
    val_fraction: float = 0.25,
    val_folds: int = 1,
    per_class: int = PER_CLASS,
) -> None:
    data = load_pooled(name, fashion_path, per_class)
    if data is None:
        print(
            f"{name}: skipped (Debian's dataset-fashion-mnist IDX files are not installed; "
            f"looked in {fashion_path or ', '.join(FASHION_DIRS)}; or pass --fashion-path DIR)"
        )
        return
    x, y = data
    print(
        f"{name}: {N_CLIENTS} clients, 2 classes each, {y.numel()} rows (75 % train / 25 % test "
        f"per client), MLP 784-128-10, {rounds} rounds x {EPOCHS} epoch, batch {BATCH}, "
        f"SGD lr {LR}; split seeds {seeds.start}..{seeds.stop - 1}"
    )
    if validation:
        print(
            f"  VALIDATION: test splits unused; each client holds out {100 * val_fraction:g} % "
            f"of its training rows and is scored on them (mean over {val_folds} disjoint "
            "fold(s) per split)"
        )
    print(
        "  FedAMP: "
        + ", ".join(f"{k}={v}" for k, v in amp.items())
        + " (proximal mu = lam/alpha_k)"
    )
    results: dict[str, list[tuple[float, float]]] = {}
    folds = val_folds if validation else 1
    for seed in seeds:
        per_fold: dict[str, list[tuple[float, float]]] = {}
        for fold in range(folds):
            for label, acc, secs in one_split(
                x, y, seed, rounds, secure, amp, validation, methods, val_fraction, fold
            ):
                per_fold.setdefault(label, []).append((acc, secs))
        for label, vals in per_fold.items():
            mean_acc = sum(a for a, _ in vals) / len(vals)
            results.setdefault(label, []).append((mean_acc, sum(t for _, t in vals) / len(vals)))
    print(f"  {'method':36s} {'mean acc':>9s} {'std':>6s}  per seed{'':20s} seconds/run")
    for label, vals in results.items():
        accs = torch.tensor([100 * a for a, _ in vals], dtype=torch.float64)
        std = float(accs.std()) if len(vals) > 1 else 0.0
        per = " ".join(f"{a:.2f}" for a in accs.tolist())
        secs = sum(s for _, s in vals) / len(vals)
        print(f"  {label:36s} {float(accs.mean()):8.2f}% {std:6.2f}  {per:28s} {secs:8.1f}")
    if "local only" in results and "FedAMP" in results:
        paired = [
            100 * (a[0] - b[0])
            for a, b in zip(results["FedAMP"], results["local only"], strict=True)
        ]
        wins = sum(d > 0 for d in paired)
        losses = sum(d < 0 for d in paired)
        print(
            f"  FedAMP - local only per seed (points): {' '.join(f'{d:+.2f}' for d in paired)} "
            f"(mean {sum(paired) / len(paired):+.2f}; above on {wins}, below on {losses} "
            f"of {len(paired)} splits)"
        )
        if len(paired) > 4:
            diffs = torch.tensor(paired, dtype=torch.float64)
            mean, se = float(diffs.mean()), float(diffs.std()) / math.sqrt(len(paired))
            lower = mean - t_quantile_95(len(paired) - 1) * se
            verdict = "non-inferior" if lower > -NON_INFERIORITY_MARGIN else "not shown"
            print(
                f"  paired difference {mean:+.2f} +- {se:.2f} (standard error); one-sided 95 % "
                f"lower bound {lower:+.2f} points -> {verdict} at a margin of "
                f"{NON_INFERIORITY_MARGIN} points"
            )
    if secure:
        diff = [
            100 * (s[0] - p[0])
            for s, p in zip(
                results["FedAMP, secret-shared (2 parties)"], results["FedAMP"], strict=True
            )
        ]
        print(
            "  secure - plaintext FedAMP per seed (points): " + " ".join(f"{d:+.2f}" for d in diff)
        )


def secure_cost(n_clients: int, n_params: int, repeat: int) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n_params, generator=g) * 0.03
    models = {i: base + 0.01 * torch.randn(n_params, generator=g) for i in range(n_clients)}
    stacked = torch.stack([models[i] for i in range(n_clients)])
    t = time.perf_counter()
    for _ in range(repeat):
        ref = cloud_models(stacked, sigma=1000.0, self_weight=0.5)
    plain_s = (time.perf_counter() - t) / repeat
    best = math.inf
    with StealMeter() as steal:
        for _ in range(repeat):
            out, cost = secure_cloud_models(models, sigma=1000.0, self_weight=0.5)
            best = min(best, cost.seconds)
    err = max(float((out[i] - ref[i]).abs().max()) for i in range(n_clients))
    print(
        f"secure FedAMP step, {n_clients} clients x {n_params} parameters, 2 parties, "
        f"frac_bits 20 (best of {repeat}; CPU steal {100 * steal.fraction:.1f} %):\n"
        f"  seconds per round (server side, all parties in this process): {best:.2f}\n"
        f"  plaintext step (float64 torch) in the same run: {plain_s:.4f} s "
        f"-> ratio {best / plain_s:.0f}x\n"
        f"  rounds between the parties: {cost.rounds}\n"
        f"  bytes between the parties: {cost.party_bytes / 1e6:.1f} MB "
        f"({cost.party_bytes / (n_clients * n_params):.1f} B per client-parameter); "
        f"crypto provider: {cost.provider_bytes / 1e6:.1f} MB\n"
        f"  per client: upload {cost.upload_bytes_per_client / 1e6:.2f} MB, download "
        f"{cost.download_bytes_per_client / 1e6:.2f} MB (plaintext FedAMP: "
        f"{4 * n_params / 1e6:.2f} MB each way)\n"
        f"  max |secure - plaintext| over the cloud models: {err:.2e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="10 rounds, one timing repeat")
    ap.add_argument("--no-secure", action="store_true", help="skip the secret-shared runs")
    ap.add_argument("--seeds", type=int, default=1, help="number of splits")
    ap.add_argument("--first-seed", type=int, default=0, help="the first split's seed")
    ap.add_argument("--fashion-path", default=None, help="directory of Fashion-MNIST IDX files")
    ap.add_argument(
        "--datasets",
        default="mnist,fashion-mnist",
        help="comma-separated subset of mnist,fashion-mnist",
    )
    ap.add_argument(
        "--per-class",
        type=int,
        default=PER_CLASS,
        help="images per class (the shipped MNIST has 500; Fashion-MNIST has 7,000)",
    )
    ap.add_argument(
        "--validation",
        action="store_true",
        help="accuracy on validation splits of the training rows (for tuning), not the test splits",
    )
    ap.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="share of each client's training rows held out with --validation",
    )
    ap.add_argument(
        "--val-folds",
        type=int,
        default=1,
        help="disjoint validation folds per split, averaged (val-fraction x val-folds <= 1)",
    )
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (the secure run needs no flag)",
    )
    default = fl.FedAMP()  # the strategy's documented defaults
    ap.add_argument("--self-weight", type=float, default=default.self_weight)
    ap.add_argument("--sigma", type=float, default=default.sigma)
    ap.add_argument("--lam", type=float, default=default.lam)
    ap.add_argument("--alpha-k", type=float, default=default.alpha_k)
    args = ap.parse_args()
    rounds = 10 if args.quick else args.rounds
    methods = frozenset(m.strip() for m in args.methods.split(",") if m.strip())
    if not 0 < args.val_fraction < 1 or args.val_folds < 1:
        ap.error("--val-fraction must be in (0, 1) and --val-folds >= 1")
    if args.val_fraction * args.val_folds > 1 + 1e-9:
        ap.error("--val-fraction x --val-folds must be <= 1 (the folds are disjoint)")
    if not methods <= set(METHODS):
        ap.error(f"--methods: expected a subset of {','.join(METHODS)}; got {args.methods!r}")
    amp = {
        "self_weight": args.self_weight,
        "sigma": args.sigma,
        "lam": args.lam,
        "alpha_k": args.alpha_k,
    }
    torch.set_num_threads(1)  # faster than 2 on the shared machine
    print("machine shared with other engineers' jobs: timings are indicative\n")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or not set(datasets) <= {"mnist", "fashion-mnist"}:
        ap.error(f"--datasets: expected a subset of mnist,fashion-mnist; got {args.datasets!r}")
    if args.per_class < 10:
        ap.error(f"--per-class must be >= 10; got {args.per_class}")
    for name in datasets:
        accuracy_table(
            name,
            rounds,
            not args.no_secure,
            amp,
            range(args.first_seed, args.first_seed + args.seeds),
            args.fashion_path,
            args.validation,
            methods,
            args.val_fraction,
            args.val_folds,
            args.per_class,
        )
        print()
    if not args.no_secure:
        secure_cost(N_CLIENTS, 101_770, 1 if args.quick else 3)


if __name__ == "__main__":
    main()

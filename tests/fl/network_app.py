"""Process entry points for the networked test (imported by spawned processes)."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from torch import nn

import fl
from fl.network import NetworkConfig, run_client, run_server


def tiny_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(240, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    return x, (x @ w).argmax(dim=1)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


class LightSGD:
    """Duck-typed SGD: keeps the spawned processes from importing torch.optim's
    compile machinery (seconds of start-up per process on a loaded 2-core box)."""

    def __init__(self, params: Any, lr: float) -> None:
        self.params, self.lr = list(params), lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)


class KilledClient(fl.Client):
    """Kills its own process (SIGKILL) when asked to train in round `die_in`."""

    def __init__(self, *args: Any, die_in: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.die_in = die_in

    def fit(self, *args: Any, **kwargs: Any) -> fl.ClientUpdate:
        self.calls += 1
        if self.calls == self.die_in:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(*args, **kwargs)


def server_main(
    port: int,
    world: int,
    rounds: int,
    out: Any,
    transport: str = "auto",
    credentials: str | None = None,
) -> None:
    x, y = tiny_problem()
    config = NetworkConfig(
        world_size=world,
        master_port=port,
        stage_timeout=60.0,
        heartbeat_timeout=2.0,
        connect_timeout=60.0,
        transport=transport,
        credentials=credentials,
    )
    history = run_server(
        make_model(),
        config,
        num_rounds=rounds,
        strategy=fl.FedAvg(lr=0.1, batch_size=16),
        aggregator=fl.MaskingAggregator(clip_range=4.0),
        test_data=(x, y),
    )
    out.put(history.to_dicts())


def client_main(
    port: int,
    world: int,
    rank: int,
    die_in: int | None,
    transport: str = "auto",
    credentials: str | None = None,
) -> None:
    x, y = tiny_problem()
    part = fl.partition(y, world - 1, "iid", seed=0)
    cx, cy = part.subsets(x, y)[rank - 1]
    config = NetworkConfig(
        world_size=world,
        master_port=port,
        stage_timeout=60.0,
        heartbeat_timeout=2.0,
        connect_timeout=60.0,
        transport=transport,
        credentials=credentials,
    )
    client: fl.Client
    if die_in is None:
        client = fl.Client(rank - 1, cx, cy, optimizer=LightSGD)  # type: ignore[arg-type]
    else:
        client = KilledClient(rank - 1, cx, cy, die_in=die_in, optimizer=LightSGD)
    run_client(
        client, make_model(), config, rank=rank, aggregator=fl.MaskingAggregator(clip_range=4.0)
    )

"""Process entry points for tests/fl/test_network_faults.py (hostile clients, a dying server)."""

from __future__ import annotations

import os
import pickle
import signal
from typing import Any

import fl
import fl.network
from fl.network import NetworkConfig, run_client, run_server
from smpc.codec import Codec
from tests.fl.network_app import LightSGD, make_model, tiny_problem


class Evil:
    """Unpickling it creates ``marker`` (code chosen by the sender)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _config(port: int, world: int, transport: str, credentials: str | None) -> NetworkConfig:
    return NetworkConfig(
        world_size=world,
        master_port=port,
        stage_timeout=30.0,
        heartbeat_timeout=2.0,
        connect_timeout=60.0,
        idle_timeout=30.0,
        transport=transport,
        credentials=credentials,
    )


class _DiesInRound(fl.FedAvg):
    """The server process kills itself (SIGKILL) when it configures round ``die_in``."""

    def __init__(self, die_in: int) -> None:
        super().__init__(lr=0.1, batch_size=16)
        self.die_in = die_in

    def fit_config(self, round_index: int) -> fl.FitConfig:
        if round_index == self.die_in:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit_config(round_index)


def server_main(
    port: int,
    world: int,
    rounds: int,
    out: Any,
    transport: str,
    credentials: str | None,
    die_in: int | None = None,
) -> None:
    x, y = tiny_problem()
    strategy = fl.FedAvg(lr=0.1, batch_size=16) if die_in is None else _DiesInRound(die_in)
    history = run_server(
        make_model(),
        _config(port, world, transport, credentials),
        num_rounds=rounds,
        strategy=strategy,
        aggregator=fl.PlainAggregator(),
        test_data=(x, y),
    )
    out.put(("server", history.to_dicts()))


def _hostile_codec(attack: str, marker: str) -> type[Codec]:
    """A codec whose messages are replaced by an attacker's bytes."""

    class HostileCodec(Codec):
        sent: list[bytes] = []

        def encode_message(self, seq: int, kind: str, obj: object) -> bytes:
            data = super().encode_message(seq, kind, obj)
            HostileCodec.sent.append(data)
            if attack == "pickled-hello" and kind == "hello":
                return pickle.dumps(Evil(marker))
            if attack == "truncated-hello" and kind == "hello":
                return data[:-5]
            if attack == "replayed" and kind == "fitted":
                return HostileCodec.sent[0]  # the hello (message #0) again
            if attack == "wrong-kind" and kind == "fitted":
                return super().encode_message(seq, "agg", obj)  # an unexpected kind now
            return data

    return HostileCodec


def client_main(
    port: int,
    world: int,
    rank: int,
    out: Any,
    transport: str,
    credentials: str | None,
    attack: str | None = None,
    marker: str = "",
) -> None:
    if attack is not None:  # this process sends an attacker's bytes
        fl.network.Codec = _hostile_codec(attack, marker)  # type: ignore[misc]
    x, y = tiny_problem()
    part = fl.partition(y, world - 1, "iid", seed=0)
    cx, cy = part.subsets(x, y)[rank - 1]
    client = fl.Client(rank - 1, cx, cy, optimizer=LightSGD)  # type: ignore[arg-type]
    try:
        rounds = run_client(
            client,
            make_model(),
            _config(port, world, transport, credentials),
            rank=rank,
            aggregator=fl.PlainAggregator(),
        )
        out.put((rank, rounds))
    except Exception as exc:  # the test inspects it
        out.put((rank, exc))

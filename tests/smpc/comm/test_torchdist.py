"""The communicator of the distributed runtime over each transport (``smpc.comm.torchdist``)."""

from __future__ import annotations

import functools

import pytest
import torch

from smpc.comm import rendezvous, torchdist
from smpc.launch import run
from tests.smpc.comm.dist_programs import tensor_program


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_tcp_run_with_gloo_socket_ifname(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GLOO_SOCKET_IFNAME=lo`` used to break even a one-host gloo run."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    xp, wp = torch.tensor([[1.5, -2.0, 0.5]]), torch.tensor([[1.0], [2.0], [-1.0]])
    program = functools.partial(tensor_program, xp=xp, wp=wp)
    results = run(program, parties=2, timeout=20, transport="tcp")
    for res in results:
        torch.testing.assert_close(res["mul"], xp * xp + 3, atol=1e-3, rtol=0)
        torch.testing.assert_close(res["matmul"], xp @ wp, atol=1e-3, rtol=0)


def test_the_split_modules_keep_the_old_import_paths() -> None:
    """``connect`` and the message kinds stay importable from ``smpc.comm.torchdist``."""
    assert torchdist.connect is rendezvous.connect
    assert torchdist.TRANSPORTS == ("auto", "unix", "tcp", "tls")
    assert torchdist.MessageKind.OPEN == 1

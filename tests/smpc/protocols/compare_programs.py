"""Party programs for the distributed comparison tests (run in party processes).

Module-level functions of a session, so :func:`smpc.launch.run` can pickle them;
they import only torch and smpc.
"""

from __future__ import annotations

from typing import Any

import torch

import smpc
from smpc import ring
from smpc.protocols import compare
from smpc.sharing import additive_shares


def ltz_program(sess: smpc.Session, plain: torch.Tensor, native: bool) -> dict[str, Any]:
    """``ltz`` and ``relu`` of ``plain`` (shared by party 0), opened; C kernels or torch."""
    if not native:
        ring._kernels = None  # this party process only: the torch path
    comm = sess.comm
    if comm.rank is None or comm.rank == 0:
        x = comm.share_from(
            additive_shares(plain, comm.world_size, sess.prg), 0, tuple(plain.shape), "input"
        )
    else:
        x = comm.share_from(None, 0, None, "input")
    before = sess.stats.snapshot()
    z = compare.ltz(comm, sess.dealer, x)
    value, bit = compare.relu(comm, sess.dealer, x)
    cost = sess.stats - before
    z_open, value_open, bit_open = comm.open([z, value, bit], "check")
    return {"ltz": z_open, "relu": value_open, "bit": bit_open, "rounds": cost.rounds}

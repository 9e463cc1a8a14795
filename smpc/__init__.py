"""smpc: secure multi-party computation on PyTorch tensors.

Additive secret sharing over Z_2^64 among n >= 2 parties, fixed-point encoding,
Beaver-triple products from a crypto provider, exact-to-one-ulp truncation.
The same program runs with every party simulated in this process (default) or
with one OS process per party over torch.distributed (:func:`smpc.run`).

Nothing happens at import: create a :class:`Session` explicitly.
"""

from __future__ import annotations

from . import data, functional, nn, optim, perf
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .comm.stats import OpStats, Stats
from .encoding import FixedPoint
from .errors import (
    DealerError,
    EncodingOverflowError,
    GradientPendingError,
    PartyExitError,
    PartyTimeoutError,
    ProtocolDesyncError,
    ProtocolError,
    SecretBranchError,
    SessionClosedError,
    SessionMismatchError,
    ShapeError,
    SmpcError,
    UnsupportedModuleError,
)
from .functional import cat, stack, where
from .launch import run
from .session import Session, Truncation
from .tensor import SharedTensor

__all__ = [
    "Session",
    "SharedTensor",
    "FixedPoint",
    "Truncation",
    "Stats",
    "OpStats",
    "functional",
    "nn",
    "optim",
    "data",
    "perf",
    "no_grad",
    "enable_grad",
    "set_grad_enabled",
    "is_grad_enabled",
    "cat",
    "stack",
    "where",
    "run",
    "SmpcError",
    "EncodingOverflowError",
    "ShapeError",
    "SessionMismatchError",
    "SessionClosedError",
    "ProtocolDesyncError",
    "ProtocolError",
    "PartyTimeoutError",
    "PartyExitError",
    "DealerError",
    "SecretBranchError",
    "UnsupportedModuleError",
    "GradientPendingError",
]

__version__ = "0.1.0"

"""Typed errors of the smpc package (bottom layer, imported by every other module).

Every public entry point validates its inputs and raises one of these, with a
message that names the argument, what was expected and what was received.
"""

from __future__ import annotations

__all__ = [
    "SmpcError",
    "EncodingOverflowError",
    "ShapeError",
    "SessionMismatchError",
    "SessionClosedError",
    "ProtocolError",
    "ProtocolDesyncError",
    "PartyTimeoutError",
    "PartyExitError",
    "DealerError",
    "SecretBranchError",
    "UnsupportedModuleError",
    "GradientPendingError",
]


class SmpcError(Exception):
    """Base class of every error raised by smpc."""


class EncodingOverflowError(SmpcError, ValueError):
    """A value is NaN/inf or outside the representable fixed-point range."""


class ShapeError(SmpcError, ValueError):
    """Operand shapes do not fit the operation."""


class SessionMismatchError(SmpcError, ValueError):
    """Shared tensors of two different sessions were combined."""


class SessionClosedError(SmpcError, RuntimeError):
    """The session was closed; its shares can no longer be used."""


class ProtocolError(SmpcError, RuntimeError):
    """A peer sent bytes that break the wire protocol.

    Malformed, oversized, truncated, replayed or unexpected frames, or a value
    outside the allow-list of the codec (:mod:`smpc.codec`). The message names
    the peer and what was wrong. Nothing a peer sends is ever executed.
    """


class ProtocolDesyncError(ProtocolError):
    """Parties disagree on the message sequence (tag mismatch)."""


class PartyTimeoutError(SmpcError, TimeoutError):
    """A peer died or did not answer within the session timeout."""


class PartyExitError(SmpcError, RuntimeError):
    """A party (or the provider) process exited without reporting a result."""


class DealerError(SmpcError, RuntimeError):
    """The crypto provider failed or was asked for something it cannot give."""


class SecretBranchError(SmpcError, TypeError):
    """A shared value was used where Python needs a plain bool."""


class UnsupportedModuleError(SmpcError, TypeError):
    """A torch module contains layers that cannot be encrypted."""


class GradientPendingError(SmpcError, RuntimeError):
    """A gradient is held before its fixed-point truncation and was read as ``.grad``.

    Raised by :attr:`smpc.SharedTensor.grad` for a parameter whose optimizer keeps
    its gradient wide (see :attr:`smpc.SharedTensor.keep_wide_grad`): call
    :meth:`smpc.SharedTensor.materialize_grad` (one truncation round) first.
    """

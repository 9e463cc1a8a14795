"""Typed errors of the federated layer (top of the stack, above ``smpc``).

Every error raised on purpose by ``fl`` derives from :class:`FlError`, so a
caller can catch the whole family; each subclass also derives from the closest
built-in (``ValueError``, ``RuntimeError``...) so generic handlers still work.
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "CheckpointError",
    "ConfigError",
    "FlError",
    "InsufficientClientsError",
    "NetworkError",
    "PrivacyError",
    "ProtocolError",
    "QuantizationRangeError",
]


class FlError(Exception):
    """Base class of every error raised on purpose by ``fl``."""


class ConfigError(FlError, ValueError):
    """An argument or configuration value is invalid (name, expected, got)."""


class AggregationError(FlError, RuntimeError):
    """A round's aggregation could not produce a correct result."""


class InsufficientClientsError(AggregationError):
    """Fewer clients than the protocol's threshold survived a stage.

    Attributes:
        stage: The protocol stage at which the count fell below the threshold.
        alive: How many clients were still alive at that stage.
        threshold: The minimum the protocol needs.
    """

    def __init__(self, stage: str, alive: int, threshold: int) -> None:
        self.stage = stage
        self.alive = alive
        self.threshold = threshold
        super().__init__(
            f"secure aggregation failed at stage `{stage}`: {alive} client(s) alive, "
            f"the threshold is {threshold}; the round cannot complete"
        )


class QuantizationRangeError(AggregationError, ValueError):
    """An update lies outside the range the ring quantizer can represent."""


class ProtocolError(AggregationError):
    """A protocol message is malformed, out of order, or fails authentication."""


class PrivacyError(FlError, ValueError):
    """A differential-privacy setting is invalid or the budget cannot be met."""


class CheckpointError(FlError, RuntimeError):
    """A checkpoint cannot be written, read, or does not match the run."""


class NetworkError(FlError, RuntimeError):
    """The networked runtime failed (rendezvous, transport, or a protocol desync)."""

"""Runtimes: how a party reaches the others (in-process simulation or torch.distributed)."""

from .base import Communicator
from .stats import OpStats, Stats

__all__ = ["Communicator", "Stats", "OpStats"]

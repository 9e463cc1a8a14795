"""The crypto provider (dealer): correlated randomness for the protocols.

The request classes live beside their protocols (e.g. ``smpc.protocols.beaver.MulTriple``).
"""

from .base import (
    Component,
    Dealer,
    Elementwise,
    FusedCorrection,
    KeepsMasks,
    Kind,
    Request,
    UsesMasks,
)
from .local import LocalDealer

__all__ = [
    "Dealer",
    "Request",
    "Component",
    "Kind",
    "FusedCorrection",
    "KeepsMasks",
    "UsesMasks",
    "Elementwise",
    "LocalDealer",
]

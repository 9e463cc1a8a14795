"""The crypto provider (dealer): correlated randomness for the protocols."""

from .base import BilinearTriple, Component, Dealer, Kind, MulTriple, Request, SquarePair, TruncPair
from .local import LocalDealer

__all__ = [
    "Dealer",
    "Request",
    "Component",
    "Kind",
    "MulTriple",
    "SquarePair",
    "BilinearTriple",
    "TruncPair",
    "LocalDealer",
]

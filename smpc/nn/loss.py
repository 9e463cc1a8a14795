"""Loss modules (nn layer): MSE and softmax cross-entropy.

Both return a lazily computed loss: ``backward()`` needs only the gradient
(``2 (input - target) / n`` and ``(softmax - onehot) / batch``), so the loss
value (a square, or a logarithm) costs nothing unless it is revealed.
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..tensor import SharedTensor
from .modules import Module

__all__ = ["MSELoss", "CrossEntropyLoss"]


class MSELoss(Module):
    """Mean squared error, like ``torch.nn.MSELoss``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: SharedTensor, target: Any) -> SharedTensor:
        """Compute the output."""
        return F.mse_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy, like ``torch.nn.CrossEntropyLoss``.

    ``target`` holds class indices (public int64) or one-hot / probabilities
    (public float or shared).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: SharedTensor, target: Any) -> SharedTensor:
        """Compute the output."""
        return F.cross_entropy(input, target, reduction=self.reduction)

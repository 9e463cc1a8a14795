"""Torch-like neural network layers on secret-shared tensors (nn layer).

``smpc.nn.encrypt(torch_model, sess)`` shares a torch model's weights and
returns the equivalent encrypted module; ``.decrypt()`` gives a torch module
back. Layers: :class:`Linear`, :class:`Conv2d`, :class:`ReLU`, :class:`Flatten`,
:class:`AvgPool2d`, :class:`MaxPool2d`, :class:`Dropout`, :class:`BatchNorm`
(inference), :class:`Sequential`; losses :class:`MSELoss`,
:class:`CrossEntropyLoss`.
"""

from __future__ import annotations

from .convert import encrypt, register_layer, supported_layers
from .loss import CrossEntropyLoss, MSELoss
from .modules import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)

__all__ = [
    "Module",
    "Linear",
    "Conv2d",
    "ReLU",
    "Flatten",
    "AvgPool2d",
    "MaxPool2d",
    "Dropout",
    "BatchNorm",
    "Identity",
    "Sequential",
    "MSELoss",
    "CrossEntropyLoss",
    "encrypt",
    "register_layer",
    "supported_layers",
]

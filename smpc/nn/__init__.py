"""Torch-like neural network layers on secret-shared tensors (nn layer).

``smpc.nn.encrypt(torch_model, sess)`` shares a torch model's weights and
returns the equivalent encrypted module; ``.decrypt()`` gives a torch module
back. Layers: :class:`Linear`, :class:`Conv1d`, :class:`Conv2d` (grouped and
depthwise too), :class:`ReLU`, :class:`LeakyReLU`, :class:`Sigmoid`,
:class:`Tanh`, :class:`Softmax`, :class:`LogSoftmax`, :class:`Flatten`,
:class:`AvgPool2d`, :class:`AdaptiveAvgPool2d`, :class:`MaxPool2d`,
:class:`Dropout`, :class:`BatchNorm` (batch statistics when training),
:class:`Sequential`; losses
:class:`MSELoss`, :class:`CrossEntropyLoss`.
"""

from __future__ import annotations

from .convert import encrypt, register_layer, supported_layers
from .loss import CrossEntropyLoss, MSELoss
from .modules import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm,
    Conv1d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)

__all__ = [
    "Module",
    "Linear",
    "Conv1d",
    "Conv2d",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "AdaptiveAvgPool2d",
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

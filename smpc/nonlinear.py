"""Encoding-aware comparison and non-linear kernels on SharedTensor (tensor layer).

Placeholder signatures: the comparison issue fills these in on top of
:mod:`smpc.protocols.compare` and :mod:`smpc.protocols.nonlinear`.
"""

from __future__ import annotations

from typing import Any

from .tensor import SharedTensor

__all__ = [
    "lt", "le", "gt", "ge", "eq", "ne", "relu", "relu_with_bit", "sign", "abs", "where",
    "max", "min", "argmax", "argmin", "max_pool2d", "reciprocal", "div", "exp", "log",
    "sqrt", "rsqrt", "sigmoid", "tanh", "softmax", "log_softmax",
]


def _todo(name: str) -> Any:
    def f(*args: Any, **kwargs: Any) -> SharedTensor:
        raise NotImplementedError(f"{name} is not implemented yet")

    f.__name__ = name
    return f


lt = _todo("lt")
le = _todo("le")
gt = _todo("gt")
ge = _todo("ge")
eq = _todo("eq")
ne = _todo("ne")
relu = _todo("relu")
relu_with_bit = _todo("relu_with_bit")
sign = _todo("sign")
abs = _todo("abs")
max = _todo("max")
min = _todo("min")
argmax = _todo("argmax")
argmin = _todo("argmin")
max_pool2d = _todo("max_pool2d")
reciprocal = _todo("reciprocal")
exp = _todo("exp")
log = _todo("log")
sqrt = _todo("sqrt")
rsqrt = _todo("rsqrt")
sigmoid = _todo("sigmoid")
tanh = _todo("tanh")
softmax = _todo("softmax")
log_softmax = _todo("log_softmax")


def where(cond: SharedTensor, a: Any, b: Any) -> SharedTensor:
    """Select ``a`` where ``cond`` (shared 0/1) is 1, else ``b``: ``b + cond * (a - b)``."""
    from . import ops

    if isinstance(a, SharedTensor) or isinstance(b, SharedTensor):
        return ops.add(b, ops.mul(cond, ops.sub(a, b)))
    import torch

    diff = torch.as_tensor(a) - torch.as_tensor(b)
    return ops.add(ops.mul(cond, diff), b)


def div(x: SharedTensor, y: Any) -> SharedTensor:
    """``x / y``: public divisor by one public product; shared by ``x * reciprocal(y)``."""
    from . import ops

    if isinstance(y, SharedTensor):
        return ops.mul(x, reciprocal(y))
    import torch

    t = torch.as_tensor(y, dtype=torch.float64)
    if bool((t == 0).any()):
        raise ZeroDivisionError("div: public divisor contains zero")
    return ops.mul(x, 1.0 / t)

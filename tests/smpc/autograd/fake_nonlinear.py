"""Test double for :mod:`smpc.ops` comparison and approximation kernels that have not landed yet.

Each fake reveals its input and re-shares the plaintext result: insecure, but
exact, so the autograd rules built on top can be tested independently of the
comparison protocols. Used only where the real kernel raises NotImplementedError.
"""

from __future__ import annotations

from typing import Any

import torch

from smpc import ops as nl
from smpc.tensor import SharedTensor


def _plain(x: SharedTensor) -> torch.Tensor:
    v = x.reveal()
    assert v is not None
    return v.double()


def _share(x: SharedTensor, v: torch.Tensor) -> SharedTensor:
    return x.session.share(v.float())


def relu_with_bit(x: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
    v = _plain(x)
    return _share(x, v.clamp(min=0)), _share(x, (v > 0).double())


def relu(x: SharedTensor) -> SharedTensor:
    return relu_with_bit(x)[0]


def softmax(x: SharedTensor, dim: int) -> SharedTensor:
    return _share(x, torch.softmax(_plain(x), dim))


def log_softmax(x: SharedTensor, dim: int) -> SharedTensor:
    return _share(x, torch.log_softmax(_plain(x), dim))


def argmax(x: SharedTensor, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
    v = _plain(x)
    assert dim is not None
    idx = v.argmax(dim, keepdim=True)
    return _share(x, torch.zeros_like(v).scatter_(dim, idx, 1.0))


def max_pool2d(x: SharedTensor, k: Any, s: Any = None, p: Any = 0) -> SharedTensor:
    return _share(x, torch.nn.functional.max_pool2d(_plain(x), k, s, p))


def _unary(fn: Any) -> Any:
    return lambda x: _share(x, fn(_plain(x)))


FAKES: dict[str, Any] = {
    "relu_with_bit": relu_with_bit,
    "relu": relu,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "argmax": argmax,
    "max_pool2d": max_pool2d,
    "exp": _unary(torch.exp),
    "log": _unary(torch.log),
    "reciprocal": _unary(torch.reciprocal),
    "sqrt": _unary(torch.sqrt),
    "sigmoid": _unary(torch.sigmoid),
    "tanh": _unary(torch.tanh),
}


def missing() -> list[str]:
    """Names of nonlinear kernels that still raise NotImplementedError."""
    out = []
    with __import__("smpc").Session(2) as sess:
        x = sess.share(torch.tensor([[0.5, -0.25]]))
        for name in FAKES:
            fn = getattr(nl, name)
            try:
                if name in ("softmax", "log_softmax"):
                    fn(x, 1)
                elif name == "argmax":
                    fn(x, 1, False)
                elif name == "max_pool2d":
                    fn(x.reshape(1, 1, 1, 2), (1, 2), None, 0)
                elif name in ("log", "reciprocal", "sqrt"):
                    fn(x * x + 1.0)
                else:
                    fn(x)
            except NotImplementedError:
                out.append(name)
    return out


def install(monkeypatch: Any) -> list[str]:
    """Patch the missing kernels with fakes; return their names."""
    names = missing()
    for name in names:
        monkeypatch.setattr(nl, name, FAKES[name])
    return names

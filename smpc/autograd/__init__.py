"""Autograd over shared tensors: a small explicit tape (autograd layer).

* :class:`Function` -- ops with ``forward(ctx, ...)`` / ``backward(ctx, grad)``.
* :func:`backward` -- reverse topological pass; fills ``.grad`` of leaves and
  frees the graph.
* :func:`materialize_grads` -- truncate pending wide gradients (the optimizer
  contract: :attr:`smpc.tensor.SharedTensor.wide_grad`), one round for all.
* :class:`no_grad`, :class:`enable_grad`, :class:`set_grad_enabled`,
  :func:`is_grad_enabled` -- grad mode, held in a ``ContextVar``.
"""

from __future__ import annotations

from .function import Context, Function
from .tape import (
    backward,
    enable_grad,
    is_grad_enabled,
    materialize_grads,
    no_grad,
    set_grad_enabled,
)

__all__ = [
    "Context",
    "Function",
    "backward",
    "enable_grad",
    "is_grad_enabled",
    "materialize_grads",
    "no_grad",
    "set_grad_enabled",
]

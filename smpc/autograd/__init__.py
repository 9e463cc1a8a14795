"""Autograd over shared tensors: a small explicit tape (autograd layer).

* :class:`Function` -- ops with ``forward(ctx, ...)`` / ``backward(ctx, grad)``.
* :func:`backward` -- reverse topological pass; fills ``.grad`` of leaves and
  frees the graph.
* :class:`no_grad`, :class:`enable_grad`, :class:`set_grad_enabled`,
  :func:`is_grad_enabled` -- grad mode, held in a ``ContextVar``.
"""

from __future__ import annotations

from .function import Context, Function
from .tape import backward, enable_grad, is_grad_enabled, no_grad, set_grad_enabled

__all__ = [
    "Context",
    "Function",
    "backward",
    "enable_grad",
    "is_grad_enabled",
    "no_grad",
    "set_grad_enabled",
]

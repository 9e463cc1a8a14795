"""``Function``: an op with a forward and a backward over shared tensors (autograd layer).

Shaped like ``torch.autograd.Function``: subclasses define static
``forward(ctx, *args)`` and ``backward(ctx, grad)``; ``apply`` runs forward
(never recording inside it) and, when grad mode is on and some input requires
grad, attaches a :class:`~smpc.autograd.tape.Node` to the output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..tensor import SharedTensor
from .tape import _GRAD_ENABLED, Node

__all__ = ["Context", "Function"]


class Context:
    """Per-call scratch space: ``save_for_backward``, ``saved_tensors``, ``needs_input_grad``."""

    __slots__ = ("saved_tensors", "needs_input_grad", "__dict__")

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.saved_tensors: tuple[Any, ...] = ()
        self.needs_input_grad = needs_input_grad

    if TYPE_CHECKING:
        # Functions stash arbitrary per-call attributes on ctx (like torch's ctx).
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def save_for_backward(self, *tensors: Any) -> None:
        """Keep tensors for backward (freed after backward)."""
        self.saved_tensors = tensors


class Function:
    """Base class of differentiable smpc ops.

    ``backward`` returns one gradient (SharedTensor, public tensor or ``None``)
    per positional argument of ``apply``. Gradients are computed with the
    non-differentiable kernels of :mod:`smpc.ops`:
    no differentiating through protocol internals, no higher-order gradients.
    """

    @staticmethod
    def forward(ctx: Context, *args: Any) -> SharedTensor:
        """Compute the output (override)."""
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: Any) -> Any:
        """Gradients w.r.t. the inputs (override)."""
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any) -> SharedTensor:
        """Run forward; record a node when grad mode is on and an input requires grad."""
        needs = tuple(isinstance(a, SharedTensor) and a.requires_grad for a in args)
        record = any(needs) and _GRAD_ENABLED.get()
        ctx = Context(needs if record else (False,) * len(args))
        token = _GRAD_ENABLED.set(False)
        try:
            out = cls.forward(ctx, *args)
        finally:
            _GRAD_ENABLED.reset(token)
        if record:
            out.requires_grad = True
            out.grad_fn = Node(
                cls, ctx, tuple(a if n else None for a, n in zip(args, needs, strict=True))
            )
        return out

"""The autograd tape: grad mode, graph nodes and topological backward (autograd layer).

Torch's own autograd cannot follow int64 ring shares, so smpc records its own
small graph. :class:`~smpc.autograd.function.Function.apply` attaches a
:class:`Node` to its output when grad mode is on and an input requires grad;
:func:`backward` walks the nodes once in reverse topological order, adds the
gradients of every leaf into its ``.grad`` and frees each node (saved tensors
and edges) as soon as it has run, so memory does not grow across training steps.

Grad mode lives in a :class:`contextvars.ContextVar`: no global state, and
threads or asyncio tasks each see their own mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, TypeVar

import torch

from ..errors import SessionMismatchError
from ..tensor import SharedTensor, WideGrad

__all__ = [
    "WIDE_MAX_FRAC_BITS",
    "Node",
    "WideGrad",
    "backward",
    "enable_grad",
    "is_grad_enabled",
    "no_grad",
    "set_grad_enabled",
    "as_shared",
    "materialize_grads",
    "wants_wide_grad",
]

_GRAD_ENABLED: ContextVar[bool] = ContextVar("smpc_grad_enabled", default=True)

F = TypeVar("F", bound=Callable[..., Any])

Grad = SharedTensor | torch.Tensor


def is_grad_enabled() -> bool:
    """Whether operations on tensors that require grad are recorded."""
    return _GRAD_ENABLED.get()


class set_grad_enabled:  # noqa: N801 - torch's name
    """Context manager (and decorator) that sets grad mode, like ``torch.set_grad_enabled``."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self._tokens: list[Token[bool]] = []

    def __enter__(self) -> None:
        self._tokens.append(_GRAD_ENABLED.set(self.mode))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _GRAD_ENABLED.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        """Use as a decorator."""
        mode = self.mode

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]  # same signature as fn


class no_grad(set_grad_enabled):  # noqa: N801 - torch's name
    """Disable recording, like ``torch.no_grad`` (context manager or decorator)."""

    def __init__(self) -> None:
        super().__init__(False)


class enable_grad(set_grad_enabled):  # noqa: N801 - torch's name
    """Enable recording inside a ``no_grad`` block, like ``torch.enable_grad``."""

    def __init__(self) -> None:
        super().__init__(True)


class Node:
    """One recorded operation: its Function, its context and its inputs.

    ``inputs`` holds, per positional argument of ``apply``, the SharedTensor
    that requires grad (or ``None``). Both are dropped after backward.
    """

    __slots__ = ("fn", "ctx", "inputs", "__weakref__")

    def __init__(self, fn: Any, ctx: Any, inputs: tuple[SharedTensor | None, ...]) -> None:
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs

    @property
    def name(self) -> str:
        """The Function's name (like ``torch``'s ``grad_fn`` names)."""
        return f"{self.fn.__name__}Backward"

    def __repr__(self) -> str:
        return f"<{self.name}>"


# Gradients are kept wide only while the optimizer's update at scale 2^3f keeps
# 14 bits of range under the truncation bound 2^62: f <= 16 (the default).
WIDE_MAX_FRAC_BITS = 16


def wants_wide_grad(t: object) -> bool:
    """Whether a Function may return ``t``'s gradient as a :class:`WideGrad`.

    True for a shared leaf with :attr:`~smpc.tensor.SharedTensor.keep_wide_grad`
    (set by the optimizers) and ``frac_bits <= WIDE_MAX_FRAC_BITS``. ``backward()``
    still truncates a wide gradient given for any other tensor, so this only
    decides where the truncation is paid: in the Function's own rounds (no) or
    with the optimizer's update (yes).
    """
    return (
        isinstance(t, SharedTensor)
        and t.grad_fn is None
        and t.keep_wide_grad
        and t.frac_bits <= WIDE_MAX_FRAC_BITS
    )


def materialize_grads(tensors: Iterable[SharedTensor]) -> None:
    """Truncate every pending wide gradient among ``tensors``, all in one round.

    Each tensor's :attr:`~smpc.tensor.SharedTensor.grad` is then readable. The
    batched form of :meth:`~smpc.tensor.SharedTensor.materialize_grad`: one
    truncation request and one round for all of them, none if nothing is
    pending. Every party must call it at the same point of the program.

    Raises:
        TypeError: an element is not a SharedTensor.
        SessionMismatchError: the tensors belong to different sessions.
    """
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, SharedTensor):
            raise TypeError(f"`tensors[{i}]` must be a SharedTensor; got {type(t).__name__}")
        if t.session is not tensors[0].session:
            raise SessionMismatchError("`tensors` must all belong to one session")
    pending = [(t, wg) for t in tensors if (wg := t.take_wide_grad()) is not None]
    if not pending:
        return
    from ..ops import rescale_many

    sess = pending[0][0].session
    done = rescale_many(sess, [(wg.share, t.frac_bits) for t, wg in pending])
    for (t, _), share in zip(pending, done, strict=True):
        t.grad = SharedTensor(share, t.session, dtype=t._dtype)


def as_shared(g: Grad, like: SharedTensor) -> SharedTensor:
    """A public gradient as a (trivially) shared tensor in ``like``'s session."""
    if isinstance(g, SharedTensor):
        return g
    from .. import ops

    g = g.expand(like.shape) if tuple(g.shape) != tuple(like.shape) else g
    return ops.public_shared(like.session, g, name="grad")


def _like(g: SharedTensor, t: SharedTensor) -> SharedTensor:
    """Give a gradient its tensor's plaintext dtype (as torch's ``.grad`` has)."""
    if g._dtype == t._dtype:
        return g
    return SharedTensor(g.share, g.session, dtype=t._dtype)


def _add_to_leaf(t: SharedTensor, g: Grad) -> None:
    """Add ``g`` into a leaf's gradient (into its pending wide one, exactly, if it has one)."""
    if t.wide_grad is not None:  # keep the sum wide: g times 2^f is exact
        t.add_wide_grad(WideGrad(as_shared(g, t).share * (1 << t.frac_bits)))
        return
    t.grad = _like(as_shared(_accumulate(t.grad, g), t), t)


def _accumulate(a: Grad | None, b: Grad) -> Grad:
    if a is None:
        return b
    if isinstance(a, SharedTensor) or isinstance(b, SharedTensor):
        from .. import ops

        return ops.add(a, b)
    return a + b


def _topo_order(root: Node) -> list[Node]:
    """Nodes reachable from ``root``, each after every node that consumes it."""
    order: list[Node] = []
    seen: set[int] = {id(root)}
    stack: list[tuple[Node, int]] = [(root, 0)]
    while stack:
        node, i = stack.pop()
        inputs = node.inputs
        while i < len(inputs):
            t = inputs[i]
            i += 1
            child = t.grad_fn if t is not None else None
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append((node, i))
                stack.append((child, 0))
                break
        else:
            order.append(node)
    order.reverse()
    return order


def backward(root: SharedTensor, grad: Grad | None = None) -> None:
    """Back-propagate from ``root``, adding into ``.grad`` of every leaf that requires grad.

    Args:
        root: the tensor to differentiate (usually a scalar loss).
        grad: d(out)/d(root), public or shared; default 1 for a one-element root.

    Raises:
        RuntimeError: ``root`` does not require grad, the graph was already
            freed by an earlier ``backward()``, or ``grad`` is missing for a
            non-scalar root.
    """
    if not root.requires_grad:
        raise RuntimeError(
            "backward(): this tensor does not require grad and has no grad_fn; "
            "share an input with `requires_grad=True` (outside `no_grad()`)"
        )
    if grad is None:
        if root.numel() != 1:
            raise RuntimeError(
                f"backward(): `grad` can be implied only for a one-element tensor; "
                f"got shape {tuple(root.shape)}"
            )
        grad = torch.ones(tuple(root.shape))
    elif tuple(grad.shape) != tuple(root.shape):
        raise ValueError(
            f"backward(): `grad` must have the tensor's shape {tuple(root.shape)}; "
            f"got {tuple(grad.shape)}"
        )
    if root.grad_fn is None:  # a leaf
        _add_to_leaf(root, grad)
        return
    top: Node = root.grad_fn
    if top.ctx is None:
        raise RuntimeError(
            "backward(): the graph of this tensor was freed by an earlier backward(); "
            "run the forward pass again"
        )
    grads: dict[int, Grad] = {id(top): grad}
    with set_grad_enabled(False):
        for node in _topo_order(top):
            g = grads.pop(id(node), None)
            inputs = node.inputs
            ctx = node.ctx
            # Free the node before recursing further: its saved tensors are not needed again.
            node.inputs = ()
            node.ctx = None
            if g is None or ctx is None:
                continue
            in_grads = node.fn.backward(ctx, g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            for t, gi in zip(inputs, in_grads, strict=False):
                if t is None or gi is None:
                    continue
                if isinstance(gi, WideGrad):
                    if wants_wide_grad(t):
                        t.add_wide_grad(gi)
                        continue
                    from ..ops import rescale  # kept wide only for the optimizer

                    gi = SharedTensor(rescale(t.session, gi.share), t.session)
                if t.grad_fn is None:
                    _add_to_leaf(t, gi)
                else:
                    key = id(t.grad_fn)
                    grads[key] = _accumulate(grads.get(key), gi)

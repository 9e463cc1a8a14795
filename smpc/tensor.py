"""SharedTensor: a secret-shared fixed-point tensor (tensor layer).

It holds this runtime's ring shares (every party's, stacked on a leading axis,
in simulation) and a reference to its :class:`~smpc.session.Session`. Shape
operations are local and implemented here; arithmetic and everything that
communicates goes through :mod:`smpc.functional` (imported lazily: the one
sanctioned upward edge). ``repr`` never shows a value and ``bool()`` raises.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import GradientPendingError, SecretBranchError, ShapeError
from .perf import ThreadPolicy, current_thread_policy
from .sharing import lead

if TYPE_CHECKING:
    from . import functional as F
    from .session import Session
else:

    class _LazyFunctional:
        """``smpc.functional``, imported on first use (the one sanctioned upward edge)."""

        def __getattr__(self, name: str) -> Any:
            from . import functional

            return getattr(functional, name)

    F = _LazyFunctional()

__all__ = ["SharedTensor", "WideGrad", "result_dtype", "tag_results"]


@dataclass(frozen=True, slots=True, repr=False)
class WideGrad:
    """A gradient share before its fixed-point truncation: scale ``2^(2f)``, not ``2^f``.

    The contract between autograd and the optimizers (``f = frac_bits``, at most
    16): a :class:`~smpc.autograd.function.Function` may return one for a leaf
    weight whose gradient is a shared product (``linear``'s ``g^T @ x``);
    ``backward()`` adds it to the leaf's :attr:`SharedTensor.wide_grad` when the
    leaf has :attr:`SharedTensor.keep_wide_grad` (and truncates it at once
    otherwise); the optimizer reads it and truncates it together with the update
    (one truncation of the weight instead of two: the gradient's bytes, provider
    material and, for a first layer, a round are saved).
    :meth:`SharedTensor.materialize_grad` truncates it on request. ``repr``
    shows only the shape.

    Attributes:
        share: this runtime's ring shares (the party axis first in simulation),
            the shape of the tensor's own shares.
    """

    share: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.share, torch.Tensor) or self.share.dtype != torch.int64:
            raise TypeError(
                "`share` must be an int64 ring tensor; got "
                + (
                    str(self.share.dtype)
                    if isinstance(self.share, torch.Tensor)
                    else type(self.share).__name__
                )
            )

    def __repr__(self) -> str:
        return f"WideGrad(shape={tuple(self.share.shape)})"


def _shape_args(shape: tuple[Any, ...]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return tuple(int(s) for s in shape[0])
    return tuple(int(s) for s in shape)


class SharedTensor:
    """A tensor secret-shared among the parties of a session.

    Create with :meth:`Session.share`. Values are fixed point with the session's
    ``frac_bits``; :meth:`reveal` returns the plaintext dtype :attr:`dtype`: the
    dtype that was shared (integers as int64), promoted through operations like
    torch's type promotion.

    Attributes:
        session: the owning session.
        requires_grad: whether autograd records operations on it.
        grad: gradient (a SharedTensor) after ``backward()``.
        wide_grad: a gradient kept before its truncation for the optimizer
            (:class:`WideGrad`), with :attr:`keep_wide_grad`.
    """

    __slots__ = (
        "_share", "session", "requires_grad", "_grad", "_wide_grad", "_keep_wide_grad",
        "grad_fn", "_dtype", "__weakref__",
    )  # fmt: skip

    __array_priority__ = 1000  # make torch/numpy defer to our reflected operators

    def __init__(
        self,
        share: torch.Tensor,
        session: Session,
        *,
        requires_grad: bool = False,
        dtype: torch.dtype | None = None,
    ):
        if share.dtype != torch.int64:
            raise TypeError(f"`share` must be an int64 ring tensor; got {share.dtype}")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"`dtype` must be a torch.dtype or None; got {type(dtype).__name__}")
        self._dtype = dtype
        self._share = share
        self.session = session
        self.requires_grad = requires_grad
        self._grad: SharedTensor | None = None
        self._wide_grad: WideGrad | None = None
        self._keep_wide_grad = False
        self.grad_fn: Any = None

    # ------------------------------------------------------------ gradients
    @property
    def grad(self) -> SharedTensor | None:
        """The gradient after ``backward()`` (a SharedTensor), or ``None``.

        Reading it never communicates. While a wide gradient is pending
        (:attr:`wide_grad`, kept for an optimizer that folds its truncation into
        the update: see :attr:`keep_wide_grad`) there is no truncated gradient
        to return, and reading raises :class:`~smpc.errors.GradientPendingError`;
        :meth:`materialize_grad` truncates it (one round) and returns it.

        Raises:
            GradientPendingError: a wide gradient is pending.
        """
        if self._wide_grad is not None:
            raise GradientPendingError(
                "`.grad` is pending its fixed-point truncation: this parameter's "
                "optimizer keeps the gradient wide to truncate it with the update "
                "(`keep_wide_grad=True`); call `materialize_grad()` (one round, every "
                "party at the same point) to read it, or `opt.step()` to use it"
            )
        return self._grad

    @grad.setter
    def grad(self, value: SharedTensor | None) -> None:
        if value is not None and not isinstance(value, SharedTensor):
            raise TypeError(f"`grad` must be a SharedTensor or None; got {type(value).__name__}")
        self._grad = value
        self._wide_grad = None

    @property
    def wide_grad(self) -> WideGrad | None:
        """The pending gradient before its fixed-point truncation, or ``None``.

        Only a leaf with :attr:`keep_wide_grad` gets one from ``backward()`` (a
        ``linear`` weight's gradient, scale ``2^(2f)``); it then holds the whole
        gradient (an earlier truncated part is folded in) and :attr:`grad` is
        unavailable until :meth:`materialize_grad`. Reading it never communicates.
        """
        return self._wide_grad

    @property
    def keep_wide_grad(self) -> bool:
        """Whether ``backward()`` may leave this leaf's gradient untruncated.

        ``False`` by default: every gradient is truncated inside ``backward()``
        and :attr:`grad` is ready. :class:`smpc.optim.SGD` and
        :class:`smpc.optim.Adam` set it on their parameters: a ``linear``
        weight's gradient then stays at scale ``2^(2f)`` (:attr:`wide_grad`) and
        the optimizer truncates it together with its update, one truncation
        instead of two (only for ``frac_bits <= 16``).
        """
        return self._keep_wide_grad

    @keep_wide_grad.setter
    def keep_wide_grad(self, flag: bool) -> None:
        if not isinstance(flag, bool):
            raise TypeError(f"`keep_wide_grad` must be a bool; got {type(flag).__name__}")
        self._keep_wide_grad = flag

    def add_wide_grad(self, grad: WideGrad) -> None:
        """Accumulate a gradient at scale ``2^(2f)`` into :attr:`wide_grad` (local).

        A truncated gradient already stored is widened exactly (times ``2^f``)
        and folded in, so that the pending gradient is the whole sum.

        Args:
            grad: the wide gradient, with this tensor's shape.

        Raises:
            TypeError: ``grad`` is not a :class:`WideGrad`.
            ShapeError: its shape is not this tensor's.
        """
        if not isinstance(grad, WideGrad):
            raise TypeError(f"`grad` must be a WideGrad; got {type(grad).__name__}")
        share = grad.share
        if tuple(share.shape) != tuple(self._share.shape):
            raise ShapeError(
                f"`grad` must have this tensor's shape {tuple(self.shape)}; "
                f"got shares of shape {tuple(share.shape)}"
            )
        if self._grad is not None:  # widen the truncated part: exact, x 2^f
            share = share + self._grad.share * (1 << self.frac_bits)
            self._grad = None
        pending = self._wide_grad
        if pending is not None:
            self._wide_grad = WideGrad(pending.share + share)
        else:
            self._wide_grad = grad if share is grad.share else WideGrad(share)

    def take_wide_grad(self) -> WideGrad | None:
        """Remove and return the pending wide gradient (local; ``None`` if none)."""
        pending, self._wide_grad = self._wide_grad, None
        return pending

    def materialize_grad(self) -> SharedTensor | None:
        """Truncate a pending wide gradient into :attr:`grad` and return :attr:`grad`.

        Without a pending one this is :attr:`grad` (local). With one, a
        truncation by ``frac_bits`` (the session's truncation protocol: one
        round); every party must call it at the same point of the program, as
        any op that communicates. For many parameters at once,
        :func:`smpc.autograd.materialize_grads` truncates all in one round.
        """
        pending = self._wide_grad
        if pending is not None:
            self._wide_grad = None
            self._grad = SharedTensor(
                F._rescale_share(self.session, pending.share), self.session, dtype=self._dtype
            )
        return self._grad

    @property
    def has_grad(self) -> bool:
        """Whether a gradient is stored, truncated or wide (local)."""
        return self._grad is not None or self._wide_grad is not None

    # ------------------------------------------------------------ raw access
    @property
    def share(self) -> torch.Tensor:
        """This runtime's raw ring shares (stacked on a party axis in simulation)."""
        return self._share

    @property
    def shares(self) -> list[torch.Tensor]:
        """Every party's ring shares (simulation only)."""
        if not self.session.simulated:
            raise RuntimeError(
                "`shares` lists every party's shares and exists only in simulation; "
                "use `.share` for this party's share"
            )
        return list(self._share.unbind(0))

    @property
    def _lead(self) -> int:
        return lead(self.session.comm)

    # ------------------------------------------------------------ metadata
    @property
    def shape(self) -> torch.Size:
        """Shape of the shared value."""
        return self._share.shape[self._lead :]

    def size(self, dim: int | None = None) -> torch.Size | int:
        """Like ``torch.Tensor.size``."""
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        """Number of dimensions of the shared value."""
        return len(self.shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions of the shared value."""
        return self.dim()

    def numel(self) -> int:
        """Number of elements of the shared value."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __len__(self) -> int:
        if self.dim() == 0:
            raise TypeError("len() of a 0-d SharedTensor")
        return self.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The plaintext dtype :meth:`reveal` returns (not the ring's int64).

        The dtype that was shared (floats keep theirs; integers and bools are
        int64), promoted through operations with torch's rules
        (``torch.result_type``); operations that are real-valued by nature
        (``/``, ``mean``, ``exp``, ``sigmoid``, ``softmax``...) give torch's default
        float dtype for integer operands, as torch does. A tensor built from raw
        shares without a dtype reveals float32.
        """
        return torch.float32 if self._dtype is None else self._dtype

    @property
    def frac_bits(self) -> int:
        """Fractional bits of the encoding."""
        return self.session.encoding.frac_bits

    @property
    def is_leaf(self) -> bool:
        """True when not produced by a recorded operation."""
        return self.grad_fn is None

    def _dim(self, d: int) -> int:
        nd = self.dim()
        span = max(nd, 1)  # torch lets a 0-d tensor take dim 0 or -1
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"`dim` must be an int; got {d!r}")
        if not -span <= d < span:
            raise IndexError(f"`dim` must be in [{-span}, {span - 1}] for a {nd}-d tensor; got {d}")
        return d % span + self._lead

    def _new(self, share: torch.Tensor) -> SharedTensor:
        return SharedTensor(share, self.session, dtype=self._dtype)

    # ------------------------------------------------------------ revealing
    def reveal(
        self, to: int | str | None = None, *, dtype: torch.dtype | None = None
    ) -> torch.Tensor | None:
        """Reconstruct the value to every party, or only to party ``to``.

        Args:
            to: the party that learns the value (name or index); ``None``: all.
            dtype: the dtype of the result; default :attr:`dtype` (the dtype that
                was shared, promoted through operations). float64 keeps every bit
                the ring holds while ``|v| < 2^(53 - frac_bits)``; integer dtypes
                round to the nearest integer.

        In a distributed run, parties other than ``to`` get ``None``.
        Cost: 1 round.
        """
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"`dtype` must be a torch.dtype or None; got {type(dtype).__name__}")
        sess = self.session
        sess.check_open()
        if to is None:
            (plain,) = sess.comm.open([self._share], "reveal")
        else:
            dst = sess.party_index(to, name="to")
            got = sess.comm.reveal_to(self._share, dst, "reveal")
            if got is None:
                return None
            plain = got
        return sess.encoding.decode(plain, self.dtype if dtype is None else dtype)

    def get_plain_text(self) -> torch.Tensor:
        """Alias of ``reveal()`` (CrypTen's name)."""
        out = self.reveal()
        assert out is not None
        return out

    def __repr__(self) -> str:
        rg = ", requires_grad=True" if self.requires_grad else ""
        return (
            f"SharedTensor(shape={tuple(self.shape)}, frac_bits={self.frac_bits}, "
            f"parties={self.session.world_size}{rg})"
        )

    __str__ = __repr__

    def __bool__(self) -> bool:
        raise SecretBranchError(
            "a SharedTensor has no plain truth value: branching on a secret would leak it; "
            "use smpc.where(cond, a, b) or call .reveal() explicitly"
        )

    def __float__(self) -> float:
        raise SecretBranchError("cannot convert a SharedTensor to float; call .reveal() explicitly")

    def __int__(self) -> int:
        raise SecretBranchError("cannot convert a SharedTensor to int; call .reveal() explicitly")

    def __index__(self) -> int:
        raise SecretBranchError("a SharedTensor cannot be used as an index; call .reveal()")

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield self[i]

    def __hash__(self) -> int:
        return id(self)

    # ------------------------------------------------------------ shape ops (via functional)
    def reshape(self, *shape: Any) -> SharedTensor:
        """Like ``torch.Tensor.reshape``."""
        return F.reshape(self, _shape_args(shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> SharedTensor:
        """Like ``torch.flatten``."""
        shp = list(self.shape)
        if not shp:
            return self.reshape(1)
        s, e = start_dim % len(shp), end_dim % len(shp)
        if s > e:
            raise ShapeError(f"flatten: start_dim {start_dim} is after end_dim {end_dim}")
        n = 1
        for v in shp[s : e + 1]:
            n *= v
        return self.reshape(*shp[:s], n, *shp[e + 1 :])

    def transpose(self, dim0: int, dim1: int) -> SharedTensor:
        """Swap two dims."""
        return F.transpose(self, dim0, dim1)

    def t(self) -> SharedTensor:
        """Transpose a matrix (<= 2-D), like ``torch.Tensor.t``."""
        if self.dim() > 2:
            raise ShapeError(f"t() expects a tensor with <= 2 dims; got {self.dim()}")
        return self if self.dim() < 2 else self.transpose(0, 1)

    @property
    def T(self) -> SharedTensor:  # noqa: N802 - torch's name
        """Reverse all dims."""
        return self.permute(*reversed(range(self.dim())))

    def permute(self, *dims: Any) -> SharedTensor:
        """Like ``torch.Tensor.permute``."""
        return F.permute(self, _shape_args(dims))

    def expand(self, *sizes: Any) -> SharedTensor:
        """Like ``torch.Tensor.expand`` (materialised)."""
        return F.expand(self, _shape_args(sizes))

    def expand_as(self, other: SharedTensor | torch.Tensor) -> SharedTensor:
        """Expand to ``other``'s shape."""
        return self.expand(*other.shape)

    def unsqueeze(self, dim: int) -> SharedTensor:
        """Insert a singleton dim."""
        nd = self.dim() + 1
        if not -nd <= dim < nd:
            raise IndexError(f"`dim` must be in [{-nd}, {nd}); got {dim}")
        d = dim % nd
        shp = list(self.shape)
        shp.insert(d, 1)
        return self.reshape(*shp)

    def squeeze(self, dim: int | None = None) -> SharedTensor:
        """Remove singleton dims (or one)."""
        shp = list(self.shape)
        if dim is None:
            return self.reshape(*[s for s in shp if s != 1])
        d = dim % max(len(shp), 1)
        if shp and shp[d] == 1:
            shp.pop(d)
        return self.reshape(*shp)

    def __getitem__(self, index: Any) -> SharedTensor:
        return F.getitem(self, index)

    def contiguous(self) -> SharedTensor:
        """Return self (shares are always usable)."""
        return self

    def clone(self) -> SharedTensor:
        """A copy with the same value (not recorded by autograd)."""
        out = self._new(self._share.clone())
        return out

    def detach(self) -> SharedTensor:
        """The same shares, detached from autograd."""
        return self._new(self._share)

    def requires_grad_(self, flag: bool = True) -> SharedTensor:
        """Set ``requires_grad`` in place."""
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------ arithmetic
    def __add__(self, other: Any) -> SharedTensor:
        return F.add(self, other)

    def __radd__(self, other: Any) -> SharedTensor:
        return F.add(other, self)

    def __sub__(self, other: Any) -> SharedTensor:
        return F.sub(self, other)

    def __rsub__(self, other: Any) -> SharedTensor:
        return F.sub(other, self)

    def __mul__(self, other: Any) -> SharedTensor:
        return F.mul(self, other)

    def __rmul__(self, other: Any) -> SharedTensor:
        return F.mul(other, self)

    def __matmul__(self, other: Any) -> SharedTensor:
        return F.matmul(self, other)

    def __rmatmul__(self, other: Any) -> SharedTensor:
        return F.matmul(other, self)

    def __truediv__(self, other: Any) -> SharedTensor:
        return F.div(self, other)

    def __rtruediv__(self, other: Any) -> SharedTensor:
        return F.mul(F.reciprocal(self), other)

    def __neg__(self) -> SharedTensor:
        return F.neg(self)

    def __pos__(self) -> SharedTensor:
        return self

    def __pow__(self, exponent: int) -> SharedTensor:
        return F.pow(self, exponent)

    def __abs__(self) -> SharedTensor:
        return F.abs(self)

    def add(self, other: Any) -> SharedTensor:
        """``self + other``."""
        return F.add(self, other)

    def sub(self, other: Any) -> SharedTensor:
        """``self - other``."""
        return F.sub(self, other)

    def mul(self, other: Any) -> SharedTensor:
        """``self * other``."""
        return F.mul(self, other)

    def matmul(self, other: Any) -> SharedTensor:
        """``self @ other``."""
        return F.matmul(self, other)

    def div(self, other: Any) -> SharedTensor:
        """``self / other`` (public or shared divisor)."""
        return F.div(self, other)

    def neg(self) -> SharedTensor:
        """``-self``."""
        return F.neg(self)

    def square(self) -> SharedTensor:
        """``self * self`` with a square pair."""
        return F.square(self)

    def pow(self, exponent: int) -> SharedTensor:
        """Integer power by repeated squaring."""
        return F.pow(self, exponent)

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> SharedTensor:
        """Sum over ``dim`` (all when ``None``)."""
        return F.sum(self, dim, keepdim)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> SharedTensor:
        """Mean over ``dim`` (all when ``None``)."""
        return F.mean(self, dim, keepdim)

    # ------------------------------------------------------------ comparison & non-linear
    def __lt__(self, other: Any) -> SharedTensor:
        return F.lt(self, other)

    def __le__(self, other: Any) -> SharedTensor:
        return F.le(self, other)

    def __gt__(self, other: Any) -> SharedTensor:
        return F.gt(self, other)

    def __ge__(self, other: Any) -> SharedTensor:
        return F.ge(self, other)

    def __eq__(self, other: Any) -> SharedTensor:  # type: ignore[override]  # elementwise, like torch
        return F.eq(self, other)

    def __ne__(self, other: Any) -> SharedTensor:  # type: ignore[override]  # elementwise, like torch
        return F.ne(self, other)

    def lt(self, other: Any) -> SharedTensor:
        """Elementwise ``self < other`` as shared 0/1."""
        return F.lt(self, other)

    def le(self, other: Any) -> SharedTensor:
        """Elementwise ``self <= other`` as shared 0/1."""
        return F.le(self, other)

    def gt(self, other: Any) -> SharedTensor:
        """Elementwise ``self > other`` as shared 0/1."""
        return F.gt(self, other)

    def ge(self, other: Any) -> SharedTensor:
        """Elementwise ``self >= other`` as shared 0/1."""
        return F.ge(self, other)

    def eq(self, other: Any) -> SharedTensor:
        """Elementwise ``self == other`` as shared 0/1."""
        return F.eq(self, other)

    def ne(self, other: Any) -> SharedTensor:
        """Elementwise ``self != other`` as shared 0/1."""
        return F.ne(self, other)

    def relu(self) -> SharedTensor:
        """``max(self, 0)``."""
        return F.relu(self)

    def sign(self) -> SharedTensor:
        """-1, 0 or 1."""
        return F.sign(self)

    def abs(self) -> SharedTensor:
        """Absolute value."""
        return F.abs(self)

    def max(self, dim: int | None = None, keepdim: bool = False) -> Any:
        """Maximum over ``dim`` (all elements when ``None``)."""
        return F.max(self, dim, keepdim)

    def min(self, dim: int | None = None, keepdim: bool = False) -> Any:
        """Minimum over ``dim`` (all elements when ``None``)."""
        return F.min(self, dim, keepdim)

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
        """One-hot argmax over ``dim``."""
        return F.argmax(self, dim, keepdim)

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> SharedTensor:
        """One-hot argmin over ``dim``."""
        return F.argmin(self, dim, keepdim)

    def reciprocal(self) -> SharedTensor:
        """``1 / self``."""
        return F.reciprocal(self)

    def exp(self) -> SharedTensor:
        """``e ** self``."""
        return F.exp(self)

    def log(self) -> SharedTensor:
        """Natural logarithm."""
        return F.log(self)

    def sqrt(self) -> SharedTensor:
        """Square root."""
        return F.sqrt(self)

    def rsqrt(self) -> SharedTensor:
        """Inverse square root."""
        return F.rsqrt(self)

    def sigmoid(self) -> SharedTensor:
        """Logistic sigmoid."""
        return F.sigmoid(self)

    def tanh(self) -> SharedTensor:
        """Hyperbolic tangent."""
        return F.tanh(self)

    def softmax(self, dim: int) -> SharedTensor:
        """Softmax over ``dim``."""
        return F.softmax(self, dim)

    def log_softmax(self, dim: int) -> SharedTensor:
        """Log-softmax over ``dim``."""
        return F.log_softmax(self, dim)

    # ------------------------------------------------------------ autograd
    def backward(self, grad: SharedTensor | torch.Tensor | None = None) -> None:
        """Back-propagate from this tensor (see :mod:`smpc.autograd`)."""
        return F.backward(self, grad)


# ----------------------------------------------------------------- plaintext dtypes
# Ops tag their results with the plaintext dtype reveal() returns: torch's type
# promotion over the operands (shared tensors count as dimensioned tensors of
# their dtype; public tensors and Python numbers as in torch). Real-valued ops
# give torch's default float dtype for integer operands (as ``torch.exp`` does).

_REAL_VALUED = frozenset(
    {
        "div", "mean", "reciprocal", "exp", "log", "sqrt", "rsqrt", "rsqrt_wide", "sigmoid",
        "tanh", "softmax", "log_softmax", "mse_loss", "cross_entropy", "avg_pool2d",
        "adaptive_avg_pool2d", "leaky_relu",
    }
)  # fmt: skip
_SCALARS = (bool, int, float)


def _operands(args: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    for a in args:
        if isinstance(a, (list, tuple)):
            flat.extend(v for v in a if isinstance(v, (SharedTensor, torch.Tensor)))
        elif isinstance(a, (SharedTensor, torch.Tensor, *_SCALARS)):
            flat.append(a)
    return flat


def result_dtype(*operands: Any, real: bool = False) -> torch.dtype | None:
    """The plaintext dtype of an op on ``operands``; ``None`` if none is shared.

    Shared tensors count as dimensioned tensors of their :attr:`SharedTensor.dtype`,
    public tensors and Python numbers as in ``torch.result_type``; sequences (as
    for ``cat``) contribute their tensors. With ``real``, an integer result becomes
    torch's default float dtype.
    """
    ops = _operands(operands)
    shared = [a.dtype for a in ops if isinstance(a, SharedTensor)]
    if not shared:
        return None
    dt = shared[0]
    if (
        not all(
            (isinstance(a, SharedTensor) and a.dtype == dt) or isinstance(a, _SCALARS) for a in ops
        )
        or not dt.is_floating_point
    ):
        acc = torch.zeros(1, dtype=dt)
        for a in ops:
            if isinstance(a, SharedTensor):
                rep: Any = torch.zeros(1, dtype=a.dtype)
            elif isinstance(a, torch.Tensor):
                rep = torch.zeros(() if a.dim() == 0 else 1, dtype=a.dtype)
            else:
                rep = a
            acc = torch.zeros(1, dtype=torch.result_type(acc, rep))
        dt = acc.dtype
    if real and not dt.is_floating_point:
        return torch.get_default_dtype()
    return dt


def _with_threads(policy: ThreadPolicy, fn: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """Run ``fn`` with the thread count ``policy`` gives its size if that is more, then restore.

    The adaptive policy instead sets the count it reads off the machine's load
    and leaves it (the bookkeeping until the next op follows it too).
    """
    if policy.monitor is not None:
        want = policy.threads_now()
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
        return fn(*args, **kwargs)
    ops = _operands([*args, *kwargs.values()])
    numel = max((a.numel() for a in ops if isinstance(a, SharedTensor)), default=0)
    want = policy.threads_for(numel)
    prev = torch.get_num_threads()
    if want <= prev:  # never lower the count inside a large op
        return fn(*args, **kwargs)
    torch.set_num_threads(want)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(prev)


_current_policy = current_thread_policy


def _typed(fn: Any, name: str) -> Any:
    real = name in _REAL_VALUED
    skip_first = name == "where"  # the condition does not enter torch.where's dtype

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        policy = _current_policy()
        if policy is None:
            for a in args:  # the session's own policy (adaptive by default)
                if type(a) is SharedTensor:
                    policy = a.session.thread_policy
                    break
        out = fn(*args, **kwargs) if policy is None else _with_threads(policy, fn, args, kwargs)
        if not kwargs and not skip_first and type(out) is SharedTensor:
            # fast path (most calls): shared operands of one float dtype, Python numbers
            first: Any = None
            for a in args:
                if type(a) is SharedTensor:
                    if a is out:
                        break
                    d = a._dtype
                    if first is None:
                        first = d if d is not None else torch.float32
                    elif (d if d is not None else torch.float32) is not first:
                        break
                elif type(a) not in (int, float, bool):
                    break
            else:
                if first is not None and first.is_floating_point:
                    out._dtype = first
                    return out
        operands = [*args[1:]] if skip_first else [*args]
        operands += [v for k, v in kwargs.items() if not (skip_first and k == "cond")]
        dt = result_dtype(*operands, real=real)
        if dt is not None:
            inputs = {id(a) for a in _operands(operands)}
            for o in out if isinstance(out, tuple) else (out,):
                if isinstance(o, SharedTensor) and id(o) not in inputs:
                    o._dtype = dt
        return out

    return wrapper


def tag_results(namespace: dict[str, Any], names: Sequence[str]) -> None:
    """Wrap the functions ``names`` of a module ``namespace`` so they tag result dtypes.

    Called once by each op module (``smpc.ops.arith``, ``smpc.ops.shape``,
    ``smpc.ops.compare``, ``smpc.ops.approx``, ``smpc.functional``) at the end
    of its definitions, like a decorator.
    """
    for name in names:
        fn = namespace[name]
        if callable(fn) and not isinstance(fn, type):
            namespace[name] = _typed(fn, name)

"""Torch-like layers over shared parameters (nn layer).

A :class:`Module` holds :class:`~smpc.SharedTensor` parameters and child
modules, registered by attribute assignment as in ``torch.nn``. Layers are
built from a torch layer (:meth:`Linear.from_torch`, usually through
:func:`smpc.nn.encrypt`) or from scratch with a session; ``to_torch`` gives the
plaintext layer back (revealing the weights).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch

from .. import functional as F
from .. import ops
from ..autograd import is_grad_enabled, no_grad
from ..autograd import linear_relu as _lr
from ..errors import ShapeError
from ..session import Session
from ..tensor import SharedTensor

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
]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _reveal(t: SharedTensor) -> torch.Tensor:
    out = t.reveal()
    assert out is not None
    return out


class Module:
    """Base class: parameters, children, train/eval, ``__call__`` -> ``forward``."""

    _parameters: OrderedDict[str, SharedTensor | None]
    _modules: OrderedDict[str, Module]
    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        params: OrderedDict[str, SharedTensor | None] = self.__dict__.get("_parameters")  # type: ignore[assignment]
        if params is None:
            raise RuntimeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Module):
            self._modules[name] = value
        elif isinstance(value, SharedTensor) and value.requires_grad:
            params[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any) -> Any:
        """Compute the output (override)."""
        raise NotImplementedError

    def __call__(self, *args: Any) -> Any:
        """Run :meth:`forward`."""
        return self.forward(*args)

    # ------------------------------------------------------------- traversal
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, SharedTensor]]:
        """``(name, parameter)`` pairs of this module and its children."""
        for n, p in self._parameters.items():
            if p is not None:
                yield prefix + n, p
        for mn, m in self._modules.items():
            yield from m.named_parameters(prefix + mn + ".")

    def parameters(self) -> Iterator[SharedTensor]:
        """All parameters (shared tensors with ``requires_grad``)."""
        for _, p in self.named_parameters():
            yield p

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(name, module)`` for this module and every descendant."""
        yield prefix.rstrip("."), self
        for mn, m in self._modules.items():
            yield from m.named_modules(prefix + mn + ".")

    def children(self) -> Iterator[Module]:
        """Direct children."""
        yield from self._modules.values()

    def train(self, mode: bool = True) -> Module:
        """Set training mode (Dropout active) recursively."""
        object.__setattr__(self, "training", mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Clear the ``.grad`` of every parameter."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True) -> Module:
        """Set ``requires_grad`` of every parameter."""
        for p in self.parameters():
            p.requires_grad = flag
        return self

    # ------------------------------------------------------------- conversion
    def to_torch(self) -> torch.nn.Module:
        """A plaintext torch module with this module's (revealed) weights."""
        raise NotImplementedError(f"{type(self).__name__} cannot be converted back to torch")

    def decrypt(self) -> torch.nn.Module:
        """Reveal the weights into a plain ``torch.nn.Module`` (alias of :meth:`to_torch`)."""
        return self.to_torch()

    def extra_repr(self) -> str:
        """Extra text for ``repr``."""
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for n, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({n}): {sub}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")


def _share_param(sess: Session, t: torch.Tensor, src: int | str | None) -> SharedTensor:
    return sess.share(t.detach().float(), src=src, requires_grad=True)


class Linear(Module):
    """``y = x W^T + b`` with shared ``weight`` (out, in) and ``bias`` (out,).

    Args:
        in_features, out_features, bias: as ``torch.nn.Linear``.
        session: the session that holds the shares.
        src: the party that owns the initial weights (default: the first).
        weight: initial weights (default: torch's initialisation).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        session: Session,
        src: int | str | None = None,
        init: torch.nn.Linear | None = None,
    ) -> None:
        super().__init__()
        plain = init if init is not None else torch.nn.Linear(in_features, out_features, bias)
        if plain.in_features != in_features or plain.out_features != out_features:
            raise ShapeError("Linear: `init` has the wrong shape")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = _share_param(session, plain.weight, src)
        self.bias: SharedTensor | None = (
            _share_param(session, plain.bias, src) if plain.bias is not None else None
        )

    @classmethod
    def from_torch(
        cls, m: torch.nn.Linear, session: Session, src: int | str | None = None
    ) -> Linear:
        """Share a torch ``Linear``'s weights."""
        return cls(
            m.in_features, m.out_features, m.bias is not None, session=session, src=src, init=m
        )

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output.

        In eval mode without gradients (inference) the weight is opened once under
        a mask the provider keeps, and each batch then sends only its own masked
        input (:func:`smpc.ops.matmul_kept`); any change of the weight's shares
        (training) makes the next inference mask it afresh.
        """
        if x.shape[-1] != self.in_features if x.dim() else True:
            raise ShapeError(
                f"Linear: expected input (..., {self.in_features}); got {tuple(x.shape)}"
            )
        if (
            not self.training
            and not is_grad_enabled()
            and isinstance(x, SharedTensor)
            and x.dim() == 2
            and x.session is self.weight.session
            and ops.can_keep(x.session)
        ):
            out = ops.matmul_kept(x, self._kept_weight())
            return out if self.bias is None else ops.add(out, self.bias)
        return F.linear(x, self.weight, self.bias)

    def _kept_weight(self) -> ops.KeptOperand:
        """``weight.T`` opened once under a kept mask, redone when the weight's shares change."""
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] is not self.weight.share:
            kept = (self.weight.share, ops.keep_operand(self.weight.t()))
            object.__setattr__(self, "_kept", kept)
        return kept[1]

    def to_torch(self) -> torch.nn.Linear:
        """The plaintext torch layer (reveals the weights)."""
        m = torch.nn.Linear(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            m.weight.copy_(_reveal(self.weight))
            if self.bias is not None:
                m.bias.copy_(_reveal(self.bias))
        return m

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


def _conv_padding(init: torch.nn.Conv1d | torch.nn.Conv2d) -> tuple[int, ...]:
    """The layer's integer zero padding (string padding and other modes are refused)."""
    pad = init.padding
    if init.padding_mode != "zeros" or isinstance(pad, str):
        raise ValueError(
            f"{type(init).__name__}: only zero, integer padding is supported; "
            f"got padding_mode={init.padding_mode!r}, padding={pad!r}"
        )
    return tuple(int(p) for p in pad)


class _ConvNd(Module):
    """Shared ``weight`` and ``bias`` of a convolution; subclasses give the shapes.

    Grouped and depthwise convolutions (``groups > 1``) are supported, with
    gradients; the Beaver convolution triple carries ``groups`` in its
    :class:`smpc.ring.Conv2dOp`.
    """

    _torch_cls: type[torch.nn.Conv1d] | type[torch.nn.Conv2d]
    _input_layout: str  # e.g. "(N, C, H, W)", for error messages

    def __init__(
        self,
        init: torch.nn.Conv1d | torch.nn.Conv2d,
        *,
        session: Session,
        src: int | str | None = None,
    ) -> None:
        super().__init__()
        pad = _conv_padding(init)
        self.in_channels = init.in_channels
        self.out_channels = init.out_channels
        self.kernel_size: Any = self._size(init.kernel_size)
        self.stride: Any = self._size(init.stride)
        self.padding: Any = self._size(pad)
        self.dilation: Any = self._size(init.dilation)
        self.groups = init.groups
        self.weight = _share_param(session, init.weight, src)
        self.bias: SharedTensor | None = (
            _share_param(session, init.bias, src) if init.bias is not None else None
        )

    @staticmethod
    def _size(value: Any) -> Any:
        raise NotImplementedError

    def _check_input(self, x: SharedTensor) -> None:
        spatial = len(self._input_layout.split(",")) - 2
        if x.dim() not in (spatial + 1, spatial + 2) or x.shape[-spatial - 1] != self.in_channels:
            layout = self._input_layout.replace(" C,", f" {self.in_channels},")
            raise ShapeError(
                f"{type(self).__name__}: expected input {layout}; got {tuple(x.shape)}"
            )

    def to_torch(self) -> Any:
        """The plaintext torch layer (reveals the weights)."""
        m = self._torch_cls(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            m.weight.copy_(_reveal(self.weight))
            if self.bias is not None:
                if m.bias is None:
                    name = type(self).__name__
                    raise RuntimeError(f"{name}.to_torch: torch.nn.{name}(bias=True) has no bias")
                m.bias.copy_(_reveal(self.bias))
        return m

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
            + (f", groups={self.groups}" if self.groups != 1 else "")
        )


class Conv2d(_ConvNd):
    """2-D convolution with shared ``weight`` (O, C/groups, kh, kw) and ``bias`` (O,)."""

    _torch_cls = torch.nn.Conv2d
    _input_layout = "(N, C, H, W)"

    @staticmethod
    def _size(value: Any) -> tuple[int, int]:
        return _pair(value)

    @classmethod
    def from_torch(
        cls, m: torch.nn.Conv2d, session: Session, src: int | str | None = None
    ) -> Conv2d:
        """Share a torch ``Conv2d``'s weights."""
        return cls(m, session=session, src=src)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        self._check_input(x)
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def to_torch(self) -> torch.nn.Conv2d:
        """The plaintext torch layer (reveals the weights)."""
        return cast(torch.nn.Conv2d, super().to_torch())


class Conv1d(_ConvNd):
    """1-D convolution with shared ``weight`` (O, C/groups, k) and ``bias`` (O,).

    Computed as a :class:`Conv2d` of height 1 (:func:`smpc.functional.conv1d`),
    grouped or not, with gradients.
    """

    _torch_cls = torch.nn.Conv1d
    _input_layout = "(N, C, L)"

    @staticmethod
    def _size(value: Any) -> int:
        return int(value[0]) if isinstance(value, tuple | list) else int(value)

    @classmethod
    def from_torch(
        cls, m: torch.nn.Conv1d, session: Session, src: int | str | None = None
    ) -> Conv1d:
        """Share a torch ``Conv1d``'s weights."""
        return cls(m, session=session, src=src)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        self._check_input(x)
        return F.conv1d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def to_torch(self) -> torch.nn.Conv1d:
        """The plaintext torch layer (reveals the weights)."""
        return cast(torch.nn.Conv1d, super().to_torch())


class ReLU(Module):
    """``max(x, 0)`` (gradient through the saved comparison bit)."""

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.relu(x)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.ReLU()


class LeakyReLU(Module):
    """``max(x, 0) + negative_slope * min(x, 0)`` (:func:`smpc.functional.leaky_relu`)."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.leaky_relu(x, self.negative_slope)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer."""
        return torch.nn.LeakyReLU(self.negative_slope)

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    """Logistic sigmoid (:func:`smpc.functional.sigmoid`, an approximation; see its range)."""

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.sigmoid(x)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer."""
        return torch.nn.Sigmoid()


class Tanh(Module):
    """Hyperbolic tangent (:func:`smpc.functional.tanh`, an approximation; see its range)."""

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.tanh(x)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer."""
        return torch.nn.Tanh()


def _softmax_dim(dim: int | None, ndim: int) -> int:
    """Torch's implicit dim for ``dim=None``: 0 for 0-, 1- and 3-d inputs, else 1."""
    if dim is not None:
        return dim
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(Module):
    """Softmax over ``dim`` (:func:`smpc.functional.softmax`)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.softmax(x, _softmax_dim(self.dim, x.dim()))

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer."""
        return torch.nn.Softmax(self.dim)

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """Log-softmax over ``dim`` (:func:`smpc.functional.log_softmax`)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.log_softmax(x, _softmax_dim(self.dim, x.dim()))

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer."""
        return torch.nn.LogSoftmax(self.dim)

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return f"dim={self.dim}"


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling for output sizes that divide the input.

    Equal disjoint windows: :func:`smpc.functional.adaptive_avg_pool2d` (an
    average pooling, one truncation); other sizes raise
    :class:`~smpc.errors.ShapeError`.
    """

    def __init__(self, output_size: int | Sequence[int | None]) -> None:
        super().__init__()
        self.output_size = output_size if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.adaptive_avg_pool2d(x, self.output_size)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer."""
        return torch.nn.AdaptiveAvgPool2d(self.output_size)

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return f"output_size={self.output_size}"


class Identity(Module):
    """Returns its input."""

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return x

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.Identity()


class Flatten(Module):
    """Flatten dims ``start_dim..end_dim`` (local)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return x.flatten(self.start_dim, self.end_dim)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.Flatten(self.start_dim, self.end_dim)


class AvgPool2d(Module):
    """Average pooling (a public convolution: one truncation)."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.AvgPool2d(self.kernel_size, self.stride, self.padding)


class MaxPool2d(Module):
    """Max pooling (comparisons; gradient through the saved one-hot argmax)."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.MaxPool2d(self.kernel_size, self.stride, self.padding)


class Dropout(Module):
    """Dropout with a *public* random mask (independent of the data); no-op in eval mode."""

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: `p` must be in [0, 1); got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand(tuple(x.shape), generator=self.generator) >= self.p).to(torch.float32)
        return F.mul(x, keep / (1.0 - self.p))

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.Dropout(self.p)


class BatchNorm(Module):
    """Batch norm like ``torch.nn.BatchNorm1d/2d``, on shares.

    Training mode normalises with the batch's statistics, computed on shares:
    ``mean`` and ``var`` over every dim but the channel (local sums, a square
    and public products), ``1 / sqrt(var + eps)`` by
    :func:`smpc.functional.rsqrt_wide` (per channel), then ``gamma`` and ``beta``
    (shared parameters, trained by the optimizer); every step goes through
    autograd, so the input's and the parameters' gradients are torch's. The
    running statistics (shared, not parameters) are updated as torch does
    (``momentum``, or a cumulative average for ``momentum=None``; the variance
    unbiased). Eval mode uses the running statistics: without autograd the
    per-channel ``scale = gamma / sqrt(running_var + eps)`` and ``shift`` are
    computed once and kept until the statistics or parameters change, so
    inference costs one product.

    When an eval-mode batch norm follows a Linear/Conv2d in a Sequential,
    :func:`smpc.nn.encrypt` folds it into that layer's weights instead (no
    extra product at all; it is then no longer a batch norm).

    Accuracy: ``1 / sqrt(var + eps)`` errs by at most ``5e-4`` relative plus two
    units ``2^-f`` for ``var + eps`` in ``[2^-6, 2^14]`` (at ``f = 16``; below,
    the encoding's ``2^-f`` dominates: a channel of near-constant activations
    is normalised less precisely); values must keep ``x^2`` inside the
    encoding's range.

    Cost of a training forward: a square and two products on the input's
    elements, rsqrt_wide on the channels (75 rounds), and the running
    statistics' public products.
    """

    def __init__(
        self,
        init: torch.nn.modules.batchnorm._BatchNorm,
        *,
        session: Session,
        src: int | str | None = None,
    ) -> None:
        super().__init__()
        self.num_features = init.num_features
        self.kind = type(init)
        self.eps = float(init.eps)
        self.momentum = None if init.momentum is None else float(init.momentum)
        self.affine = init.affine
        self.weight: SharedTensor | None = (
            _share_param(session, init.weight, src) if init.weight is not None else None
        )
        self.bias: SharedTensor | None = (
            _share_param(session, init.bias, src) if init.bias is not None else None
        )
        rm, rv = init.running_mean, init.running_var
        self.running_mean: SharedTensor | None = (
            None if rm is None else session.share(rm.detach().float(), src=src)
        )
        self.running_var: SharedTensor | None = (
            None if rv is None else session.share(rv.detach().float(), src=src)
        )
        nbt = init.num_batches_tracked
        self.num_batches_tracked = 0 if nbt is None else int(nbt)
        self.init_training = init.training  # the torch layer's own mode (kept by encrypt)

    @property
    def track_running_stats(self) -> bool:
        """Whether running statistics are kept (and used in eval mode)."""
        return self.running_mean is not None and self.running_var is not None

    def forward(self, x: SharedTensor) -> SharedTensor:
        """Compute the output."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ShapeError(
                f"BatchNorm: expected input (N, {self.num_features}, ...); got {tuple(x.shape)}"
            )
        shape = [1, self.num_features] + [1] * (x.dim() - 2)
        if self.training or not self.track_running_stats:
            return self._batch_forward(x, shape)
        if not is_grad_enabled():
            scale, shift = self._frozen_affine()
            return ops.add(ops.mul(x, scale.reshape(shape)), shift.reshape(shape))
        assert self.running_mean is not None and self.running_var is not None
        inv = self._inv_std().reshape(shape)
        y = F.mul(F.sub(x, self.running_mean.reshape(shape)), inv)
        return self._affine(y, shape)

    def _affine(self, y: SharedTensor, shape: list[int]) -> SharedTensor:
        if self.weight is not None:
            y = F.mul(y, self.weight.reshape(shape))
        if self.bias is not None:
            y = F.add(y, self.bias.reshape(shape))
        return y

    def _batch_forward(self, x: SharedTensor, shape: list[int]) -> SharedTensor:
        dims = [0, *range(2, x.dim())]
        n = x.numel() // self.num_features
        if n <= 1:
            raise ShapeError(
                f"BatchNorm: expected more than 1 value per channel when training; "
                f"got input {tuple(x.shape)}"
            )
        mean = F.mean(x, dims, keepdim=True)
        xc = F.sub(x, mean)
        var = F.mean(F.square(xc), dims, keepdim=True)
        inv = F.rsqrt_wide(F.add(var, self.eps))
        out = self._affine(F.mul(xc, inv), shape)
        if self.training and self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            self.num_batches_tracked += 1
            m = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
            c = self.num_features
            with no_grad():
                rm = ops.add(ops.mul(self.running_mean, 1.0 - m), ops.mul(mean.reshape(c), m))
                rv = ops.add(
                    ops.mul(self.running_var, 1.0 - m), ops.mul(var.reshape(c), m * n / (n - 1))
                )
            object.__setattr__(self, "running_mean", rm)
            object.__setattr__(self, "running_var", rv)
        return out

    def _inv_std(self) -> SharedTensor:
        """``1 / sqrt(running_var + eps)``, kept until the running variance changes."""
        assert self.running_var is not None
        kept = self.__dict__.get("_kept_inv")
        if kept is None or kept[0] is not self.running_var.share:
            with no_grad():
                inv = ops.rsqrt_wide(ops.add(self.running_var, self.eps))
            kept = (self.running_var.share, inv)
            object.__setattr__(self, "_kept_inv", kept)
        return kept[1]

    def _frozen_affine(self) -> tuple[SharedTensor, SharedTensor]:
        """Eval mode's per-channel ``(scale, shift)``, kept until any of its inputs change."""
        assert self.running_mean is not None and self.running_var is not None
        key = tuple(
            t.share if t is not None else None
            for t in (self.running_mean, self.running_var, self.weight, self.bias)
        )
        kept = self.__dict__.get("_kept_affine")
        if kept is None or any(a is not b for a, b in zip(kept[0], key, strict=True)):
            with no_grad():
                scale = self._inv_std()
                if self.weight is not None:
                    scale = ops.mul(scale, self.weight)
                shift = ops.neg(ops.mul(self.running_mean, scale))
                if self.bias is not None:
                    shift = ops.add(shift, self.bias)
            kept = (key, (scale, shift))
            object.__setattr__(self, "_kept_affine", kept)
        return kept[1]

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights and running statistics)."""
        m = self.kind(
            self.num_features,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
        )
        with torch.no_grad():
            if self.weight is not None and m.weight is not None:
                m.weight.copy_(_reveal(self.weight))
            if self.bias is not None and m.bias is not None:
                m.bias.copy_(_reveal(self.bias))
            if self.running_mean is not None and m.running_mean is not None:
                m.running_mean.copy_(_reveal(self.running_mean))
            if self.running_var is not None and m.running_var is not None:
                m.running_var.copy_(_reveal(self.running_var))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(self.num_batches_tracked)
        return m.train(self.training)

    def extra_repr(self) -> str:
        """Extra text for repr."""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def bn_affine(bn: torch.nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of an eval-mode batch norm."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm: `track_running_stats=True` is required to encrypt it")
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean.detach() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale.float(), shift.float()


class Sequential(Module):
    """Modules applied in order."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(
                    f"Sequential: item {i} must be a smpc.nn.Module; got {type(m).__name__}"
                )
            setattr(self, str(i), m)

    def forward(self, x: Any) -> Any:
        """Compute the output.

        Under autograd a :class:`Linear` followed by a :class:`ReLU` runs as one
        fused op (:class:`smpc.autograd.linear_relu.LinearReLU`: no truncation round
        in the forward), and the next :class:`Linear` multiplies its input gradient
        by that ReLU's bit inside its truncation (no product round in the backward).
        """
        mods = list(self._modules.values())
        link: _lr.ReluLink | None = None
        i = 0
        while i < len(mods):
            m = mods[i]
            relu_next = i + 1 < len(mods) and type(mods[i + 1]) is ReLU
            if (
                type(m) is Linear
                and (relu_next or link is not None)
                and is_grad_enabled()
                and _lr.fusable(x, m.weight, m.bias)
                and (x.requires_grad or m.weight.requires_grad)
            ):
                out_link = _lr.ReluLink() if relu_next else None
                x = _lr.LinearReLU.apply(x, m.weight, m.bias, link, out_link)
                link = out_link
                i += 2 if relu_next else 1
                continue
            x = m(x)
            link = None
            i += 1
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def to_torch(self) -> torch.nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        return torch.nn.Sequential(OrderedDict((n, m.to_torch()) for n, m in self._modules.items()))

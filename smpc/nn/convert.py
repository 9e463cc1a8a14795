"""Convert a torch model into an encrypted one, and back (nn layer).

:func:`encrypt` walks a ``torch.nn.Module`` through a registry of supported
layers (``@register_layer(torch.nn.Linear)``), shares every weight from the
model owner, and returns a :class:`~smpc.nn.modules.Module`. Containers
(``Sequential``) convert child by child; any other module is traced with
``torch.fx`` and its graph is replayed on shared tensors, so plain Modules
whose ``forward`` uses supported layers and functions work too. Before
anything is shared, every unsupported submodule or function is collected and
reported in one :class:`~smpc.errors.UnsupportedModuleError`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import functional as F
from ..errors import UnsupportedModuleError
from ..session import Session
from . import modules as M

__all__ = ["encrypt", "register_layer", "supported_layers", "Traced"]

Converter = Callable[[Any, Session, "int | str | None"], M.Module]
_REGISTRY: dict[type[nn.Module], Converter] = {}


def register_layer(*types: type[nn.Module]) -> Callable[[Converter], Converter]:
    """Register a converter ``fn(torch_layer, session, src) -> smpc.nn.Module`` for layer types."""

    def deco(fn: Converter) -> Converter:
        for t in types:
            _REGISTRY[t] = fn
        return fn

    return deco


def supported_layers() -> tuple[type[nn.Module], ...]:
    """The torch layer types :func:`encrypt` converts."""
    return tuple(_REGISTRY)


def _unsupported_reason(m: nn.Module) -> str | None:
    """Why a registered layer's configuration cannot be converted (None if it can)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and (
        m.padding_mode != "zeros" or isinstance(m.padding, str)
    ):
        return "only zero, integer padding"
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.ceil_mode:
        return "ceil_mode=True"
    if isinstance(m, nn.MaxPool2d) and m.dilation not in (1, (1, 1)):
        return "dilation != 1"
    if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override):
        return "count_include_pad=False or divisor_override"
    return None


@register_layer(nn.Linear)
def _linear(m: nn.Linear, sess: Session, src: int | str | None) -> M.Module:
    return M.Linear.from_torch(m, sess, src)


@register_layer(nn.Conv2d)
def _conv(m: nn.Conv2d, sess: Session, src: int | str | None) -> M.Module:
    return M.Conv2d.from_torch(m, sess, src)


@register_layer(nn.Conv1d)
def _conv1d(m: nn.Conv1d, sess: Session, src: int | str | None) -> M.Module:
    return M.Conv1d.from_torch(m, sess, src)


@register_layer(nn.LeakyReLU)
def _leaky_relu(m: nn.LeakyReLU, sess: Session, src: int | str | None) -> M.Module:
    return M.LeakyReLU(m.negative_slope)


@register_layer(nn.Sigmoid)
def _sigmoid(m: nn.Sigmoid, sess: Session, src: int | str | None) -> M.Module:
    return M.Sigmoid()


@register_layer(nn.Tanh)
def _tanh(m: nn.Tanh, sess: Session, src: int | str | None) -> M.Module:
    return M.Tanh()


@register_layer(nn.Softmax)
def _softmax(m: nn.Softmax, sess: Session, src: int | str | None) -> M.Module:
    return M.Softmax(m.dim)


@register_layer(nn.LogSoftmax)
def _log_softmax(m: nn.LogSoftmax, sess: Session, src: int | str | None) -> M.Module:
    return M.LogSoftmax(m.dim)


@register_layer(nn.AdaptiveAvgPool2d)
def _adaptive_avgpool(m: nn.AdaptiveAvgPool2d, sess: Session, src: int | str | None) -> M.Module:
    if m.output_size is None:
        raise UnsupportedModuleError("encrypt: AdaptiveAvgPool2d needs an `output_size`; got None")
    return M.AdaptiveAvgPool2d(m.output_size)


@register_layer(nn.ReLU)
def _relu(m: nn.ReLU, sess: Session, src: int | str | None) -> M.Module:
    return M.ReLU()


@register_layer(nn.Flatten)
def _flatten(m: nn.Flatten, sess: Session, src: int | str | None) -> M.Module:
    return M.Flatten(m.start_dim, m.end_dim)


@register_layer(nn.AvgPool2d)
def _avgpool(m: nn.AvgPool2d, sess: Session, src: int | str | None) -> M.Module:
    return M.AvgPool2d(m.kernel_size, m.stride, m.padding)


@register_layer(nn.MaxPool2d)
def _maxpool(m: nn.MaxPool2d, sess: Session, src: int | str | None) -> M.Module:
    return M.MaxPool2d(m.kernel_size, m.stride, m.padding)


@register_layer(nn.Dropout)
def _dropout(m: nn.Dropout, sess: Session, src: int | str | None) -> M.Module:
    d = M.Dropout(m.p)
    return d.train(m.training)


@register_layer(nn.Identity)
def _identity(m: nn.Identity, sess: Session, src: int | str | None) -> M.Module:
    return M.Identity()


@register_layer(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm(
    m: nn.modules.batchnorm._BatchNorm, sess: Session, src: int | str | None
) -> M.Module:
    return M.BatchNorm(m, session=sess, src=src)


def _fold_bn(
    layer: nn.Linear | nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm
) -> nn.Linear | nn.Conv2d:
    """A copy of ``layer`` (Linear/Conv2d) with the following eval-mode batch norm folded in."""
    scale, shift = M.bn_affine(bn)
    out = copy.deepcopy(layer)
    with torch.no_grad():
        shape = (-1,) + (1,) * (out.weight.dim() - 1)
        out.weight.mul_(scale.reshape(shape))
        bias = out.bias.detach() if out.bias is not None else torch.zeros_like(scale)
        new_bias = bias * scale + shift
        if out.bias is None:
            out.bias = nn.Parameter(new_bias)
        else:
            out.bias.copy_(new_bias)
    return out


@register_layer(nn.Sequential)
def _sequential(m: nn.Sequential, sess: Session, src: int | str | None) -> M.Module:
    children = list(m.named_children())
    out = M.Sequential()
    i = 0
    while i < len(children):
        name, child = children[i]
        nxt = children[i + 1][1] if i + 1 < len(children) else None
        if (
            isinstance(child, (nn.Linear, nn.Conv2d))
            and isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d))
            and not nxt.training
        ):
            # Fold inference batch norm into the preceding layer: no extra product.
            setattr(out, name, _convert(_fold_bn(child, nxt), sess, src))
            setattr(out, children[i + 1][0], M.Identity())
            i += 2
            continue
        setattr(out, name, _convert(child, sess, src))
        i += 1
    return out


# Functions and tensor methods a traced forward may call (fx targets -> smpc).
_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    operator.add: operator.add,
    operator.sub: operator.sub,
    operator.mul: operator.mul,
    operator.neg: operator.neg,
    operator.matmul: operator.matmul,
    operator.truediv: operator.truediv,
    operator.getitem: operator.getitem,
    torch.add: F.add,
    torch.sub: F.sub,
    torch.mul: F.mul,
    torch.matmul: F.matmul,
    torch.relu: F.relu,
    torch.flatten: lambda x, start_dim=0, end_dim=-1: x.flatten(start_dim, end_dim),
    torch.cat: F.cat,
    torch.stack: F.stack,
    torch.sigmoid: F.sigmoid,
    torch.tanh: F.tanh,
    torch.nn.functional.relu: lambda x, inplace=False: F.relu(x),
    torch.nn.functional.linear: F.linear,
    torch.nn.functional.conv2d: F.conv2d,
    torch.nn.functional.conv1d: F.conv1d,
    torch.nn.functional.leaky_relu: lambda x, negative_slope=0.01, inplace=False: F.leaky_relu(
        x, negative_slope
    ),
    torch.nn.functional.adaptive_avg_pool2d: F.adaptive_avg_pool2d,
    torch.nn.functional.avg_pool2d: lambda x, kernel_size, stride=None, padding=0, *a, **k: (
        F.avg_pool2d(x, kernel_size, stride, padding)
    ),
    torch.nn.functional.max_pool2d: lambda x, kernel_size, stride=None, padding=0, *a, **k: (
        F.max_pool2d(x, kernel_size, stride, padding)
    ),
    torch.nn.functional.softmax: lambda x, dim=None, *a, **k: F.softmax(x, dim),
    torch.nn.functional.log_softmax: lambda x, dim=None, *a, **k: F.log_softmax(x, dim),
    torch.nn.functional.sigmoid: F.sigmoid,
    torch.nn.functional.tanh: F.tanh,
}
_METHODS = frozenset(
    {
        "view",
        "reshape",
        "flatten",
        "relu",
        "size",
        "permute",
        "transpose",
        "t",
        "unsqueeze",
        "squeeze",
        "sum",
        "mean",
        "softmax",
        "log_softmax",
        "contiguous",
        "add",
        "sub",
        "mul",
        "matmul",
        "neg",
        "square",
        "sigmoid",
        "tanh",
        "dim",
        "expand",
        "expand_as",
    }
)


def _fname(target: Any) -> str:
    mod = getattr(target, "__module__", "") or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


class Traced(M.Module):
    """A custom torch Module replayed on shared tensors from its ``torch.fx`` graph."""

    _graph: torch.fx.Graph
    _skeleton: nn.Module
    _names: dict[str, M.Module]

    def __init__(
        self, original: nn.Module, graph: torch.fx.Graph, subs: dict[str, M.Module]
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_original_type", type(original))
        # Structure only: every parameterised submodule is replaced on decrypt().
        object.__setattr__(self, "_skeleton", copy.deepcopy(original))
        object.__setattr__(self, "_names", dict(subs))
        for name, sub in subs.items():
            setattr(self, name.replace(".", "_"), sub)

    def forward(self, *args: Any) -> Any:
        """Compute the output."""
        env: dict[str, Any] = {}
        it = iter(args)

        def load(a: Any) -> Any:
            return torch.fx.node.map_arg(a, lambda n: env[n.name])

        for node in self._graph.nodes:
            if node.op == "placeholder":
                env[node.name] = next(it)
            elif node.op == "call_module":
                env[node.name] = self._names[node.target](*load(node.args))
            elif node.op == "call_function":
                fn = _FUNCTIONS[node.target]
                env[node.name] = fn(*load(node.args), **load(node.kwargs))
            elif node.op == "call_method":
                a = load(node.args)
                env[node.name] = getattr(a[0], node.target)(*a[1:], **load(node.kwargs))
            elif node.op == "output":
                return load(node.args[0])
            else:
                raise UnsupportedModuleError(f"encrypt: fx node kind {node.op!r} is not supported")
        return None

    def to_torch(self) -> nn.Module:
        """The plaintext torch layer (reveals the weights)."""
        out = copy.deepcopy(self._skeleton)
        for name, sub in self._names.items():
            out.set_submodule(name, sub.to_torch())
        return out


def _collect_unsupported(m: nn.Module, prefix: str, bad: list[str]) -> None:
    t = type(m)
    if t in _REGISTRY and t is not nn.Sequential:
        reason = _unsupported_reason(m)
        if reason:
            bad.append(f"{prefix or '<root>'} ({t.__name__}: {reason})")
        return
    children = list(m.named_children())
    if t is not nn.Sequential:
        if not children or (isinstance(m, (nn.ModuleList, nn.ModuleDict))):
            bad.append(f"{prefix or '<root>'} ({t.__name__})")
            return
        if list(m.named_parameters(recurse=False)):
            bad.append(f"{prefix or '<root>'} ({t.__name__} with its own parameters)")
    for n, c in children:
        _collect_unsupported(c, f"{prefix}.{n}" if prefix else n, bad)


def _convert(m: nn.Module, sess: Session, src: int | str | None) -> M.Module:
    conv = _REGISTRY.get(type(m))
    if conv is not None:
        return conv(m, sess, src)
    try:
        gm = torch.fx.symbolic_trace(m)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds; all mean "cannot trace"
        raise UnsupportedModuleError(
            f"encrypt: cannot trace {type(m).__name__}.forward with torch.fx ({err}); "
            "use nn.Sequential or a forward without data-dependent control flow"
        ) from err
    bad = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target not in _FUNCTIONS:
            bad.append(f"function {_fname(node.target)}")
        elif node.op == "call_method" and node.target not in _METHODS:
            bad.append(f"tensor method .{node.target}()")
        elif node.op == "get_attr":
            bad.append(f"attribute {node.target} used directly in forward")
    if bad:
        raise UnsupportedModuleError(
            f"encrypt: {type(m).__name__}.forward uses unsupported operations: {', '.join(bad)}"
        )
    subs: dict[str, M.Module] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in subs:
            subs[node.target] = _convert(m.get_submodule(node.target), sess, src)
    return Traced(m, gm.graph, subs)


def encrypt(module: nn.Module, session: Session, *, src: int | str | None = None) -> M.Module:
    """Secret-share a torch model's weights and return the equivalent encrypted module.

    Args:
        module: a ``torch.nn.Module``: an ``nn.Sequential`` or a Module whose
            ``forward`` uses supported layers (see :func:`supported_layers`) and
            simple tensor functions (traced with ``torch.fx``).
        session: the session whose parties hold the shares.
        src: the party that owns the model (default: the first party).

    Returns:
        A :class:`smpc.nn.Module`; call it on SharedTensors, train it with
        :class:`smpc.optim.SGD`, and ``.decrypt()`` it back to torch.

    Raises:
        UnsupportedModuleError: naming every unsupported layer (with its path)
            or function, before anything is shared.
        TypeError: ``module`` is not a torch module.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"encrypt: `module` must be a torch.nn.Module; got {type(module).__name__}")
    if not isinstance(session, Session):
        raise TypeError(f"encrypt: `session` must be a smpc.Session; got {type(session).__name__}")
    bad: list[str] = []
    _collect_unsupported(module, "", bad)
    if bad:
        names = ", ".join(t.__name__ for t in _REGISTRY)
        raise UnsupportedModuleError(
            f"encrypt: unsupported layer(s): {'; '.join(bad)}. Supported layers: {names}"
        )
    out = _convert(module, session, src).train(module.training)
    for _, sub in out.named_modules():
        if isinstance(sub, M.BatchNorm):  # its own mode, as in torch (e.g. a frozen one)
            sub.train(sub.init_training)
    return out

"""Encoding-aware kernels on SharedTensor: linear ops, products, rescaling (tensor layer).

Every value is fixed point with the session's ``frac_bits``. A product of two
encoded values has scale 2^(2f) and is truncated back with the session's
truncation protocol. Kernels here are *not* differentiable; :mod:`smpc.functional`
wraps them for autograd. Public operands are encoded and range-checked here.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import ring
from ..encoding import as_plain_tensor
from ..errors import EncodingOverflowError, SessionMismatchError, ShapeError
from ..protocols import beaver, truncation
from ..session import Session, Truncation
from ..sharing import add_public, lead, public_share
from ..tensor import SharedTensor, tag_results

__all__ = [
    "Public",
    "rescale",
    "add",
    "sub",
    "neg",
    "mul",
    "square",
    "matmul",
    "conv2d",
    "sum",
    "mean",
    "is_public_int",
    "chunked",
]

Public = torch.Tensor | float | int


def _session(*xs: object) -> Session:
    sess: Session | None = None
    for x in xs:
        if isinstance(x, SharedTensor):
            if sess is None:
                sess = x.session
            elif x.session is not sess:
                raise SessionMismatchError(
                    "shared tensors belong to different sessions; share both inputs in one Session"
                )
    assert sess is not None
    sess.check_open()
    return sess


def is_public_int(y: object) -> bool:
    """Whether ``y`` is a public integer (no rescaling needed to multiply by it)."""
    if isinstance(y, bool):
        return True
    if isinstance(y, int):
        return True
    return isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex()


def _public_tensor(y: Public, name: str = "other") -> torch.Tensor:
    if isinstance(y, SharedTensor):
        raise TypeError("expected a public value")
    return as_plain_tensor(y, name=name).detach().cpu()


# A public integer factor k multiplies the ring element locally: |k| <= 2^31 keeps the
# product of an in-range input (at most 2^31 ulps) below 2^62, like a shared product.
MAX_PUBLIC_INT = 1 << 31


def _public_int(sess: Session, y: Public, name: str = "other") -> torch.Tensor:
    """A public integer factor as int64, range-checked (no wrap-around, no -2^63)."""
    pub = _public_tensor(y, name).to(torch.int64)
    if pub.numel():
        lo, hi = int(pub.min()), int(pub.max())
        worst = hi if hi >= -lo else lo
        if abs(worst) > MAX_PUBLIC_INT:
            raise EncodingOverflowError(
                f"`{name}` (a public integer factor) must satisfy |k| <= 2^31 so that "
                f"products stay in the 64-bit ring; got {worst}"
            )
    return pub


def _encode_public(sess: Session, y: Public, name: str = "other") -> torch.Tensor:
    return sess.encoding.encode(_public_tensor(y, name), name=name)


def _aligned(sess: Session, x: SharedTensor, ndim: int) -> torch.Tensor:
    """X's share with singleton data dims prepended up to ``ndim`` data dims."""
    s = x.share
    extra = ndim - x.dim()
    if extra <= 0:
        return s
    lead_shape = s.shape[: lead(sess.comm)]
    return s.reshape(*lead_shape, *([1] * extra), *x.shape)


def _check_broadcast(a: torch.Size, b: torch.Size, op: str) -> torch.Size:
    try:
        return ring.broadcast_shapes(a, b)
    except RuntimeError as err:
        raise ShapeError(f"{op}: shapes {tuple(a)} and {tuple(b)} are not broadcastable") from err


def rescale(sess: Session, share: torch.Tensor) -> torch.Tensor:
    """Truncate a product share from scale 2^(2f) back to 2^f (session's protocol)."""
    f = sess.encoding.frac_bits
    if f == 0:
        return share
    if sess.truncation is Truncation.LOCAL:
        return truncation.trunc_local(sess.comm, share, f)
    return truncation.trunc(sess.comm, sess.dealer, share, f)


def rescale_many(sess: Session, items: Sequence[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """Truncate several shares, each by its own number of bits, in one round.

    The session's protocol: :func:`smpc.protocols.truncation.trunc_many` (or
    local truncations under the opt-in local protocol).
    """
    if sess.truncation is Truncation.LOCAL:
        return [truncation.trunc_local(sess.comm, x, f) if f else x for x, f in items]
    out = iter(truncation.trunc_many(sess.comm, sess.dealer, [(x, f) for x, f in items if f]))
    return [next(out) if f else x for x, f in items]


def _fused(sess: Session) -> bool:
    """Whether products fold the truncation mask into their triple (the default protocol)."""
    return sess.truncation is Truncation.PROBABILISTIC and sess.encoding.frac_bits > 0


def _wrap(sess: Session, share: torch.Tensor) -> SharedTensor:
    return SharedTensor(share, sess)


def add(x: SharedTensor | Public, y: SharedTensor | Public) -> SharedTensor:
    """``x + y`` (at least one shared). Cost: local."""
    if not isinstance(x, SharedTensor):
        x, y = y, x
    assert isinstance(x, SharedTensor)
    sess = _session(x, y)
    if isinstance(y, SharedTensor):
        shape = _check_broadcast(x.shape, y.shape, "add")
        nd = len(shape)
        return _wrap(sess, _aligned(sess, x, nd) + _aligned(sess, y, nd))
    pub = _encode_public(sess, y)
    shape = _check_broadcast(x.shape, pub.shape, "add")
    return _wrap(sess, add_public(sess.comm, _aligned(sess, x, len(shape)), pub))


def neg(x: SharedTensor) -> SharedTensor:
    """``-x``. Cost: local."""
    return _wrap(_session(x), -x.share)


def sub(x: SharedTensor | Public, y: SharedTensor | Public) -> SharedTensor:
    """``x - y`` (at least one shared). Cost: local."""
    if isinstance(y, SharedTensor):
        return add(x, neg(y))
    if isinstance(x, SharedTensor):
        pub = _public_tensor(y)
        return add(x, -(pub.to(torch.int64) if pub.dtype == torch.bool else pub))
    raise TypeError("sub: at least one operand must be a SharedTensor")


def mul(x: SharedTensor | Public, y: SharedTensor | Public) -> SharedTensor:
    """Elementwise ``x * y`` with broadcasting.

    Shared × shared: Beaver product (1 round) then truncation (1 round).
    Shared × public float: local product then truncation (1 round).
    Shared × public int: local, no rounds.
    """
    if not isinstance(x, SharedTensor):
        x, y = y, x
    assert isinstance(x, SharedTensor)
    sess = _session(x, y)
    if isinstance(y, SharedTensor):
        shape = _check_broadcast(x.shape, y.shape, "mul")
        nd = len(shape)
        xs, ys = _aligned(sess, x, nd), _aligned(sess, y, nd)
        if _fused(sess):
            f = sess.encoding.frac_bits
            return _wrap(sess, beaver.mul_trunc(sess.comm, sess.dealer, xs, ys, f))
        return _wrap(sess, rescale(sess, beaver.mul(sess.comm, sess.dealer, xs, ys)))
    if is_public_int(y):
        pub = _public_int(sess, y)
        shape = _check_broadcast(x.shape, pub.shape, "mul")
        return _wrap(sess, _aligned(sess, x, len(shape)) * pub)
    pub = _encode_public(sess, y)
    shape = _check_broadcast(x.shape, pub.shape, "mul")
    return _wrap(sess, rescale(sess, _aligned(sess, x, len(shape)) * pub))


def square(x: SharedTensor) -> SharedTensor:
    """``x * x`` with a square pair (1 round, one element sent) then truncation."""
    sess = _session(x)
    return _wrap(sess, rescale(sess, beaver.square(sess.comm, sess.dealer, x.share)))


def _mm_operand(sess: Session, t: SharedTensor | torch.Tensor, nd: int) -> torch.Tensor:
    if isinstance(t, SharedTensor):
        return _aligned(sess, t, nd)
    extra = nd - t.dim()
    return t.reshape(*([1] * extra), *t.shape) if extra > 0 else t


def _matmul_operands(
    sess: Session, x: SharedTensor | Public, y: SharedTensor | Public
) -> tuple[
    SharedTensor | torch.Tensor, SharedTensor | torch.Tensor, torch.Tensor, torch.Tensor, torch.Size
]:
    """Check and align ``x @ y``'s operands: ``(x2, y2, x share, y share, out_shape)``."""
    xt = x if isinstance(x, SharedTensor) else _encode_public(sess, x, "input")
    yt = y if isinstance(y, SharedTensor) else _encode_public(sess, y, "other")
    xshape, yshape = tuple(xt.shape), tuple(yt.shape)
    if len(xshape) == 0 or len(yshape) == 0:
        raise ShapeError(f"matmul: both operands need >= 1 dim; got {xshape} @ {yshape}")
    k_x = xshape[-1]
    k_y = yshape[-2] if len(yshape) > 1 else yshape[0]
    if k_x != k_y:
        raise ShapeError(
            f"matmul: inner dimensions must match; got {xshape} @ {yshape} ({k_x} != {k_y})"
        )
    try:
        out_shape = ring.MatmulOp().out_shape(torch.Size(xshape), torch.Size(yshape))
    except RuntimeError as err:
        raise ShapeError(f"matmul: shapes {xshape} and {yshape} do not broadcast") from err
    # Promote 1-D operands to matrices as torch does, and align batch dims.
    x2 = xt.unsqueeze(0) if len(xshape) == 1 else xt
    y2 = yt.unsqueeze(-1) if len(yshape) == 1 else yt
    nd = max(x2.dim(), y2.dim())
    return x2, y2, _mm_operand(sess, x2, nd), _mm_operand(sess, y2, nd), out_shape


def matmul(x: SharedTensor | Public, y: SharedTensor | Public) -> SharedTensor:
    """``x @ y`` with torch's semantics (1-D operands, batch broadcasting).

    Shared @ shared: Beaver matrix triple (1 round) then truncation (1 round).
    With one public operand: local ring matmul then truncation.
    """
    sess = _session(x, y)
    x2, y2, xs, ys, out_shape = _matmul_operands(sess, x, y)
    if isinstance(x2, SharedTensor) and isinstance(y2, SharedTensor) and _fused(sess):
        f = sess.encoding.frac_bits
        z = beaver.bilinear_trunc(sess.comm, sess.dealer, ring.MatmulOp(), xs, ys, f)
    elif isinstance(x2, SharedTensor) and isinstance(y2, SharedTensor):
        z = rescale(sess, beaver.matmul(sess.comm, sess.dealer, xs, ys))
    else:
        z = rescale(sess, ring.matmul(xs, ys))
    return _wrap(sess, z.reshape(*z.shape[: lead(sess.comm)], *out_shape))


def matmuls(
    pairs: Sequence[tuple[SharedTensor | Public, SharedTensor | Public]],
) -> list[SharedTensor]:
    """``[x @ y for x, y in pairs]``, the shared @ shared products in the rounds of one.

    Independent products (e.g. a backward pass's ``g @ W`` and ``g^T @ x``)
    share their two rounds: :func:`smpc.protocols.beaver.bilinear_trunc_many`.
    Products with a public operand, and every product under the opt-in local
    truncation, run one by one as :func:`matmul`.

    Raises:
        ShapeError: as :func:`matmul`, for any pair.
        SessionMismatchError: the operands belong to different sessions.
    """
    out = matmuls_keep_scale(pairs, [False] * len(pairs))
    return [z for z in out if isinstance(z, SharedTensor)]


def matmuls_keep_scale(
    pairs: Sequence[tuple[SharedTensor | Public, SharedTensor | Public]],
    keep: Sequence[bool],
) -> list[SharedTensor | torch.Tensor]:
    """:func:`matmuls`, where ``keep[i]`` asks for product ``i`` before its truncation.

    Where the default protocol runs (shared @ shared, fused truncation), a kept
    product comes back as its raw share tensor at scale ``2^(2f)`` (one round
    less when nothing else is truncated), for a caller that folds the
    truncation into a later one (autograd's weight gradients, see
    :class:`smpc.autograd.tape.WideGrad`); elsewhere it is a truncated
    SharedTensor as usual. Cost: as :func:`matmuls`, minus the kept products'
    truncation bytes.
    """
    if len(keep) != len(pairs):
        raise ValueError(f"`keep` must have {len(pairs)} flags; got {len(keep)}")
    if not pairs:
        return []
    if not any(isinstance(v, SharedTensor) for pair in pairs for v in pair):
        raise TypeError("matmuls: at least one operand must be a SharedTensor")
    sess = _session(*(v for pair in pairs for v in pair))
    prepared = [_matmul_operands(sess, x, y) for x, y in pairs]
    batched = [
        i
        for i, (x2, y2, _, _, _) in enumerate(prepared)
        if isinstance(x2, SharedTensor) and isinstance(y2, SharedTensor)
    ]
    out: list[SharedTensor | torch.Tensor | None] = [None] * len(pairs)
    if (len(batched) > 1 or any(keep[i] for i in batched)) and _fused(sess):
        f = sess.encoding.frac_bits
        items = [(ring.MatmulOp(), prepared[i][2], prepared[i][3]) for i in batched]
        cut = [not keep[i] for i in batched]
        zs = beaver.bilinear_trunc_many(sess.comm, sess.dealer, items, f, truncate=cut)
        for i, z in zip(batched, zs, strict=True):
            z = z.reshape(*z.shape[: lead(sess.comm)], *prepared[i][4])
            out[i] = z if keep[i] else _wrap(sess, z)
    for i, (x, y) in enumerate(pairs):
        if out[i] is None:
            out[i] = matmul(x, y)
    return [z for z in out if z is not None]


def bilinears(
    items: Sequence[tuple[ring.BilinearOp, SharedTensor, SharedTensor]],
) -> list[SharedTensor]:
    """Several truncated shared-by-shared bilinear products (``op(x, y)``) in the rounds of one.

    E.g. a convolution's two gradients: :func:`smpc.protocols.beaver.bilinear_trunc_many`
    under the default truncation, else one product after the other.

    Raises:
        TypeError: an operand is not a SharedTensor.
        ShapeError: an op cannot take its operands' shapes.
        SessionMismatchError: the operands belong to different sessions.
    """
    if not items:
        return []
    for i, (op, x, y) in enumerate(items):
        if not isinstance(x, SharedTensor) or not isinstance(y, SharedTensor):
            raise TypeError(
                f"bilinears: item {i} needs two SharedTensors; got "
                f"{type(x).__name__} and {type(y).__name__}"
            )
        try:
            op.out_shape(torch.Size(x.shape), torch.Size(y.shape))
        except RuntimeError as err:
            raise ShapeError(
                f"bilinears: item {i} ({type(op).__name__}) cannot take shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}: {err}"
            ) from err
    sess = _session(*(v for _, x, y in items for v in (x, y)))
    if len(items) > 1 and _fused(sess):
        f = sess.encoding.frac_bits
        shares = [(op, x.share, y.share) for op, x, y in items]
        return [
            _wrap(sess, z) for z in beaver.bilinear_trunc_many(sess.comm, sess.dealer, shares, f)
        ]
    return [_bilinear(sess, op, x, y) for op, x, y in items]


def linear_forward(
    x: SharedTensor, wt: SharedTensor
) -> tuple[SharedTensor, beaver.LinearMasks] | None:
    """``x @ wt`` for 2-D shared operands, keeping the masks for :func:`linear_backward`.

    A linear layer's forward under autograd: the backward's two products then
    open only the output gradient (:func:`smpc.protocols.beaver.linear_backward`).
    Returns ``None`` where this path does not apply (other ranks, the opt-in
    local truncation): the caller then uses :func:`matmul`. Cost: as :func:`matmul`.
    """
    sess = _session(x, wt)
    if not _fused(sess) or x.dim() != 2 or wt.dim() != 2 or x.shape[1] != wt.shape[0]:
        return None
    key = sess.transient_mask_key()  # x's mask kept under key, wt's under key + 1
    f = sess.encoding.frac_bits
    z, masks = beaver.linear_forward(sess.comm, sess.dealer, x.share, wt.share, f, key)
    return _wrap(sess, z), masks


def linear_backward(
    g: SharedTensor,
    masks: beaver.LinearMasks,
    *,
    grad_input: bool,
    grad_weight: bool,
    keep_weight_scale: bool,
) -> tuple[SharedTensor | None, SharedTensor | torch.Tensor | None]:
    """A linear layer's ``g @ W`` and ``g^T @ x`` on the masks its :func:`linear_forward` kept.

    ``keep_weight_scale``: return ``g^T @ x`` as its raw share tensor at scale
    ``2^(2f)`` (as :func:`matmuls_keep_scale`). Cost: 2 rounds (1 if nothing is
    truncated); ``numel(g)`` ring elements in the first.
    """
    sess = _session(g)
    f = sess.encoding.frac_bits
    gx, gw = beaver.linear_backward(
        sess.comm,
        sess.dealer,
        g.share,
        masks,
        f,
        grad_input=grad_input,
        grad_weight=grad_weight,
        truncate_weight=not keep_weight_scale,
    )
    sess.release_mask_key(masks.key)  # the provider released them with this request
    wrapped_w: SharedTensor | torch.Tensor | None = gw
    if gw is not None and not keep_weight_scale:
        wrapped_w = _wrap(sess, gw)
    return (None if gx is None else _wrap(sess, gx)), wrapped_w


def can_keep(sess: Session) -> bool:
    """Whether :func:`matmul_kept` is available (the default probabilistic truncation)."""
    return _fused(sess)


@dataclass(frozen=True)
class KeptOperand:
    """A right operand opened once under a mask the provider keeps (see :func:`keep_operand`)."""

    session: Session
    masked: beaver.MaskedOperand

    @property
    def shape(self) -> tuple[int, int]:
        """The operand's shape ``(k, n)``."""
        k, n = self.masked.f.shape
        return (int(k), int(n))


def keep_operand(y: SharedTensor) -> KeptOperand:
    """Open a 2-D right operand once under a mask that later :func:`matmul_kept` calls reuse.

    For a value that does not change across many products (a trained model's
    weights in inference). Cost: 1 round, ``numel(y)`` ring elements.

    Raises:
        ShapeError: ``y`` is not 2-D.
    """
    sess = _session(y)
    if y.dim() != 2:
        raise ShapeError(f"keep_operand: `y` must be 2-D; got shape {tuple(y.shape)}")
    masked = beaver.mask_operand(sess.comm, sess.dealer, y.share, sess.new_mask_key())
    return KeptOperand(sess, masked)


def matmul_kept(x: SharedTensor, y: KeptOperand) -> SharedTensor:
    """``x @ y`` for a shared 2-D ``x`` and an operand kept by :func:`keep_operand`.

    Cost: 2 rounds; ``numel(x)`` then ``numel(out)`` ring elements (``y`` is not
    sent again). Needs the default (probabilistic) truncation.

    Raises:
        SessionMismatchError: ``x`` and ``y`` belong to different sessions.
        ShapeError: ``x`` is not ``(m, k)`` for ``y`` of shape ``(k, n)``.
        ValueError: the session truncates with the opt-in local truncation.
    """
    sess = _session(x)
    if not isinstance(y, KeptOperand):
        raise TypeError(f"matmul_kept: `y` must come from keep_operand; got {type(y).__name__}")
    if y.session is not sess:
        raise SessionMismatchError(
            "matmul_kept: `x` and the kept operand belong to different sessions"
        )
    if not _fused(sess):
        raise ValueError("matmul_kept needs the default probabilistic truncation")
    k, _ = y.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise ShapeError(f"matmul_kept: expected `x` of shape (m, {k}); got {tuple(x.shape)}")
    f = sess.encoding.frac_bits
    z = beaver.bilinear_trunc_kept(sess.comm, sess.dealer, ring.MatmulOp(), x.share, y.masked, f)
    return _wrap(sess, z)


def pair_arg(v: int | Sequence[int], name: str, minimum: int = 0) -> tuple[int, int]:
    """A convolution/pooling size given as an int or a pair, as torch takes it, checked.

    Raises:
        TypeError: ``v`` is not an int or a pair of ints (a bool or float included).
        ValueError: not a pair, or an entry is below ``minimum`` (``stride=0``...).
    """
    bad = f"`{name}` must be an int >= {minimum} or a pair of them; got {v!r}"
    if isinstance(v, bool):
        raise TypeError(bad)
    if isinstance(v, Sequence) and not isinstance(v, str):
        t: tuple[object, ...] = tuple(v)
        if len(t) != 2:
            raise ValueError(bad)
    else:
        t = (v, v)
    out = []
    for i in t:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(bad)
        k = operator.index(i)  # ints, numpy ints
        if k < minimum:
            raise ValueError(bad)
        out.append(k)
    return (out[0], out[1])


def check_groups(groups: int) -> int:
    """``groups`` of a convolution: an int >= 1 (else TypeError/ValueError naming it)."""
    if isinstance(groups, bool) or not hasattr(groups, "__index__"):
        raise TypeError(f"`groups` must be an int >= 1; got {groups!r}")
    if operator.index(groups) < 1:
        raise ValueError(f"`groups` must be an int >= 1; got {groups!r}")
    return operator.index(groups)


def conv2d(
    input: SharedTensor | torch.Tensor,
    weight: SharedTensor | torch.Tensor,
    bias: SharedTensor | torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> SharedTensor:
    """2-D convolution, argument names as ``torch.nn.functional.conv2d``.

    Shared input and weight: Beaver convolution triple (1 round) then truncation.
    One public operand: local ring convolution then truncation.
    """
    sess = _session(input, weight, bias)
    st, pd = pair_arg(stride, "stride", 1), pair_arg(padding, "padding")
    dl, groups = pair_arg(dilation, "dilation", 1), check_groups(groups)
    op = ring.Conv2dOp(stride=st, padding=pd, dilation=dl, groups=groups)
    xin = input if isinstance(input, SharedTensor) else _encode_public(sess, input, "input")
    w = weight if isinstance(weight, SharedTensor) else _encode_public(sess, weight, "weight")
    squeeze = False
    if xin.dim() == 3:
        squeeze = True
        xin = xin.unsqueeze(0)
    if xin.dim() != 4 or w.dim() != 4:
        raise ShapeError(
            f"conv2d: expected input (N,C,H,W) and weight (O,C/groups,kh,kw); "
            f"got {tuple(xin.shape)} and {tuple(w.shape)}"
        )
    if w.shape[0] % groups:
        raise ShapeError(
            f"conv2d: weight's {w.shape[0]} output channels are not divisible by "
            f"groups={groups} (weight {tuple(w.shape)})"
        )
    if xin.shape[1] != w.shape[1] * groups:
        raise ShapeError(
            f"conv2d: input has {xin.shape[1]} channels but weight expects "
            f"{w.shape[1] * groups} (weight {tuple(w.shape)}, groups={groups})"
        )
    try:
        op.out_shape(torch.Size(xin.shape), torch.Size(w.shape))
    except RuntimeError as err:
        raise ShapeError(f"conv2d: {err}") from err
    return _conv_finish(sess, _bilinear(sess, op, xin, w), bias, squeeze)


def _bilinear(
    sess: Session,
    op: ring.BilinearOp,
    x: SharedTensor | torch.Tensor,
    y: SharedTensor | torch.Tensor,
) -> SharedTensor:
    """``op(x, y)`` truncated, for checked operands (at least one shared; public ones encoded).

    Shared with shared: a Beaver triple with the truncation mask folded in (2
    rounds), or a Beaver triple then a truncation. One public operand: the
    local ring op then a truncation (1 round).
    """
    if isinstance(x, SharedTensor) and isinstance(y, SharedTensor) and _fused(sess):
        f = sess.encoding.frac_bits
        return _wrap(sess, beaver.bilinear_trunc(sess.comm, sess.dealer, op, x.share, y.share, f))
    if isinstance(x, SharedTensor) and isinstance(y, SharedTensor):
        z = beaver.bilinear(sess.comm, sess.dealer, op, x.share, y.share)
    elif isinstance(x, SharedTensor):
        assert isinstance(y, torch.Tensor)
        z = beaver._apply(sess.comm, op, x.share, y, share_left=True)
    else:
        assert isinstance(y, SharedTensor)
        z = beaver._apply(sess.comm, op, x, y.share, share_left=False)
    return _wrap(sess, rescale(sess, z))


def conv_transpose2d(
    input: SharedTensor | torch.Tensor,
    weight: SharedTensor | torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> SharedTensor:
    """Transposed 2-D convolution, argument names as ``torch.nn.functional.conv_transpose2d``.

    A convolution's input gradient: the same work as the forward convolution,
    where a stride-1 convolution of the padded gradient would also multiply
    the padding's zeros. Shared input and weight: Beaver triple for the
    transposed convolution (1 round) then truncation; one public operand:
    local ring op then truncation.
    """
    sess = _session(input, weight)
    st, pd = pair_arg(stride, "stride", 1), pair_arg(padding, "padding")
    op_, dl = pair_arg(output_padding, "output_padding"), pair_arg(dilation, "dilation", 1)
    groups = check_groups(groups)
    op = ring.ConvTranspose2dOp(
        stride=st, padding=pd, output_padding=op_, dilation=dl, groups=groups
    )
    xin = input if isinstance(input, SharedTensor) else _encode_public(sess, input, "input")
    w = weight if isinstance(weight, SharedTensor) else _encode_public(sess, weight, "weight")
    if xin.dim() != 4 or w.dim() != 4 or xin.shape[1] != w.shape[0]:
        raise ShapeError(
            f"conv_transpose2d: expected input (N,C,H,W) and weight (C,O/groups,kh,kw); "
            f"got {tuple(xin.shape)} and {tuple(w.shape)}"
        )
    try:
        op.out_shape(torch.Size(xin.shape), torch.Size(w.shape))
    except RuntimeError as err:
        raise ShapeError(f"conv_transpose2d: {err}") from err
    return _bilinear(sess, op, xin, w)


def _conv_finish(
    sess: Session,
    out: SharedTensor,
    bias: SharedTensor | torch.Tensor | None,
    squeeze: bool,
) -> SharedTensor:
    if bias is not None:
        out = add(out, bias.reshape(-1, 1, 1))
    if squeeze:
        out = out.squeeze(0)
    return out


def reduce_dims(x: SharedTensor, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    """The data dims a reduction over ``dim`` removes, normalised, as torch reads ``dim``.

    ``None`` or an empty sequence: every dim. A 0-d tensor accepts ``0`` and ``-1``
    and has nothing to reduce (``()``).

    Raises:
        TypeError: ``dim`` is not an int, a sequence of ints or ``None``.
        IndexError: a dim is out of range (the message names ``dim`` and the range).
        ValueError: a dim appears twice.
    """
    nd = x.dim()
    if dim is None:
        return tuple(range(nd))
    if isinstance(dim, bool) or not isinstance(dim, (int, Sequence)) or isinstance(dim, str):
        raise TypeError(f"`dim` must be an int, a sequence of ints or None; got {dim!r}")
    ds = (dim,) if isinstance(dim, int) else tuple(dim)
    if not ds:
        return tuple(range(nd))
    span = max(nd, 1)  # torch lets a 0-d tensor take dim 0 or -1
    out = []
    for d in ds:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"`dim` must be an int, a sequence of ints or None; got {dim!r}")
        if not -span <= d < span:
            raise IndexError(f"`dim` must be in [{-span}, {span - 1}] for a {nd}-d tensor; got {d}")
        out.append(d % span)
    if len(set(out)) != len(out):
        raise ValueError(f"`dim` must not repeat a dimension; got {dim!r}")
    return tuple(out) if nd else ()


def sum(
    x: SharedTensor, dim: int | Sequence[int] | None = None, keepdim: bool = False
) -> SharedTensor:
    """Sum over ``dim`` (all elements when ``None``), as ``torch.sum``. Cost: local.

    Raises:
        TypeError, IndexError, ValueError: a bad ``dim`` (see :func:`reduce_dims`).
    """
    sess = _session(x)
    ld = lead(sess.comm)
    dims = reduce_dims(x, dim)
    if dim is None or (len(dims) == x.dim() and not keepdim and x.dim()):
        s = x.share.reshape(*x.share.shape[:ld], -1).sum(-1)
        if keepdim:
            s = s.reshape(*s.shape, *([1] * x.dim()))
        return _wrap(sess, s)
    if not dims:  # a 0-d tensor summed over dim 0: itself
        return _wrap(sess, x.share)
    return _wrap(sess, x.share.sum(dim=tuple(d + ld for d in dims), keepdim=keepdim))


def mean(
    x: SharedTensor, dim: int | Sequence[int] | None = None, keepdim: bool = False
) -> SharedTensor:
    """Mean over ``dim``: a local sum then one public-float product (1 truncation round).

    Raises:
        ShapeError: the mean of an empty set of elements (torch gives NaN, which
            fixed point cannot represent); an empty result is returned as torch does.
        TypeError, IndexError, ValueError: a bad ``dim`` (see :func:`reduce_dims`).
    """
    dims = reduce_dims(x, dim)
    count = 1
    for d in dims:
        count *= x.shape[d]
    s = sum(x, dim, keepdim)
    if count == 0 and s.numel():
        raise ShapeError(
            f"mean over an empty dimension (shape {tuple(x.shape)}, dim={dim!r}) is undefined: "
            "torch gives NaN, which fixed point cannot represent"
        )
    if count <= 1:
        return s
    return mul(s, 1.0 / count)


def public_shared(sess: Session, value: torch.Tensor, name: str = "value") -> SharedTensor:
    """A public tensor as a (trivially) shared one: encoded, party 0 holds it. Cost: local."""
    enc = sess.encoding.encode(value.detach().to(torch.float64).contiguous(), name=name)
    return SharedTensor(public_share(sess.comm, enc), sess)


def mul_shares(sess: Session, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Shares of ``a * b`` for ring shares, not rescaled (scales add). Cost: 1 round."""
    return beaver.mul(sess.comm, sess.dealer, a, b)


def square_shares(sess: Session, a: torch.Tensor) -> torch.Tensor:
    """Shares of ``a * a`` for ring shares (a square pair), not rescaled. Cost: 1 round."""
    return beaver.square(sess.comm, sess.dealer, a)


# ----------------------------------------------------------------- chunked execution
# In simulation, an elementwise op on more than ``sess.chunk_size`` elements runs
# chunk by chunk: each chunk gets its own dealer material and openings and is
# written into the preallocated output, so the extra memory is the output plus one
# chunk's working set. The chunks' openings of a given step are independent (what
# a streamed wire would send as one round), so the stats count them as the one op
# they are: bytes add up, rounds and calls are those of one chunk. The distributed
# runtime runs the op whole (each process holds only its own share and material):
# same rounds and bytes, as the runtime-equivalence tests check.


def _chunk_plan(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Session, int] | None:
    """``(session, numel)`` if this call should run in chunks, else ``None``."""
    shared = [a for a in args if isinstance(a, SharedTensor)]
    if not shared or any(isinstance(v, (SharedTensor, torch.Tensor)) for v in kwargs.values()):
        return None
    sess = shared[0].session
    shape = shared[0].shape
    n = shared[0].numel()
    if not sess.simulated or n <= sess.chunk_size:
        return None
    for a in args:
        if isinstance(a, SharedTensor) and (a.shape != shape or a.session is not sess):
            return None
        if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape != shape:
            return None
        if isinstance(a, (list, tuple, dict)):
            return None
    return sess, n


def _flat(a: Any, sess: Session, n: int) -> Any:
    """``a`` flattened once (a copy only if it is not contiguous), to be sliced per chunk."""
    if isinstance(a, SharedTensor):
        return SharedTensor(a.share.reshape(sess.world_size, n), sess, dtype=a._dtype)
    if isinstance(a, torch.Tensor) and a.dim() > 0:
        return a.reshape(n)
    return a


def _slice(a: Any, sess: Session, lo: int, hi: int) -> Any:
    if isinstance(a, SharedTensor):
        return SharedTensor(a.share[:, lo:hi], sess, dtype=a._dtype)
    if isinstance(a, torch.Tensor) and a.dim() > 0:
        return a[lo:hi]
    return a


def _run_chunks(
    fn: Callable[..., Any], sess: Session, n: int, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    stats = sess.stats
    start = stats.snapshot()
    most_rounds = 0
    per_op: dict[str, tuple[int, int]] = {}  # label -> (max rounds, max calls) of a chunk
    shape = next(a for a in args if isinstance(a, SharedTensor)).shape
    w = sess.world_size
    flat = [_flat(a, sess, n) for a in args]
    bufs: list[torch.Tensor] = []
    kinds: list[SharedTensor] = []
    single = True
    for lo in range(0, n, sess.chunk_size):
        hi = min(lo + sess.chunk_size, n)
        before = stats.snapshot()
        res = fn(*(_slice(a, sess, lo, hi) for a in flat), **kwargs)
        delta = stats - before
        most_rounds = max(most_rounds, delta.rounds)
        for label, op in delta.by_op.items():
            r, c = per_op.get(label, (0, 0))
            per_op[label] = (max(r, op.rounds), max(c, op.calls))
        single = not isinstance(res, tuple)
        outs = (res,) if single else tuple(res)
        if not bufs:
            kinds = list(outs)
            bufs = [torch.empty((w, n), dtype=torch.int64) for _ in outs]
        for buf, o in zip(bufs, outs, strict=True):
            buf[:, lo:hi] = o.share.reshape(w, hi - lo)
        del res, outs
    # Count the op once: rounds and calls of one chunk, bytes of all.
    total = stats - start
    stats.rounds -= total.rounds - most_rounds
    for label, (r, c) in per_op.items():
        op = stats.by_op[label]
        op.rounds -= total.by_op[label].rounds - r
        op.calls -= total.by_op[label].calls - c
    results = [
        SharedTensor(buf.view(w, *shape), sess, dtype=k._dtype)
        for buf, k in zip(bufs, kinds, strict=True)
    ]
    return results[0] if single else tuple(results)


def chunked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an elementwise op in chunks of ``sess.chunk_size`` elements (simulation only).

    Applies when every tensor operand has the op's shape (public scalars and 0-d
    tensors pass through); otherwise (broadcasting, distributed runtime, small
    inputs) the op runs whole. Same results, rounds and bytes as one call.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        plan = _chunk_plan(args, kwargs)
        if plan is None:
            return fn(*args, **kwargs)
        return _run_chunks(fn, plan[0], plan[1], args, kwargs)

    return wrapper


for _name in ("mul", "square"):
    globals()[_name] = chunked(globals()[_name])
del _name

# Every public op tags its result with the plaintext dtype reveal() returns.
tag_results(globals(), [n for n in __all__ if n != "chunked"])

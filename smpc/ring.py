"""The ring Z_2^64 on ``torch.int64`` tensors (bottom layer: pure, local, no parties).

Addition, subtraction and elementwise multiplication wrap around natively in
two's complement. Bilinear maps (matmul, conv2d) are computed *exactly* modulo
2^64 through float64 BLAS: each operand is split into balanced limbs small
enough that every partial product sum is an integer below 2^53, so the float
result is exact; the partial products are recombined with wrap-around. This is
6 float64 GEMMs per ring GEMM (22/22/20-bit limbs, reductions cut into chunks
of at most 1024 terms) and is 5-12x faster on CPU than torch's own int64
kernels, which have no BLAS path (and none at all for conv). The limb split
and recombination are single fused passes in the optional C module
``smpc._ringkernels`` (built by setup.py; torch ops are the fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "RING_BITS",
    "broadcast_shapes",
    "wrap",
    "matmul",
    "conv2d",
    "conv_transpose2d",
    "bilinear",
    "MatmulOp",
    "Conv2dOp",
    "BilinearOp",
]

RING_BITS = 64
_MOD = 1 << 64
_HALF = 1 << 63

# Below this many multiply-adds, torch's native int64 kernel beats the limb split.
_NATIVE_MATMUL_WORK = 1 << 15
# Products with at most this many (folded) rows and multiply-adds use broadcasting.
_BROADCAST_ROWS = 16
_BROADCAST_WORK = 1 << 21


def broadcast_shapes(*shapes: torch.Size | tuple[int, ...]) -> torch.Size:
    """``torch.broadcast_shapes`` (typed, and fast for the common small cases).

    Raises:
        RuntimeError: if the shapes do not broadcast (like torch).
    """
    nd = max((len(s) for s in shapes), default=0)
    out = [1] * nd
    for shp in shapes:
        off = nd - len(shp)
        for i, v in enumerate(shp):
            cur = out[off + i]
            if v != cur:
                if cur == 1:
                    out[off + i] = v
                elif v != 1:
                    raise RuntimeError(f"shapes {[tuple(x) for x in shapes]} are not broadcastable")
    return torch.Size(out)


def wrap(value: int) -> int:
    """Map a Python int to its signed representative in [-2^63, 2^63)."""
    value %= _MOD
    return value - _MOD if value >= _HALF else value


try:  # optional fused kernels (setup.py); torch ops are the fallback
    from . import _ringkernels as _kernels  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _kernels = None

# Elementwise kernels use a second thread above this many elements.
_KERNEL_THREADS_MIN = 1 << 16

# Balanced 22/22/20-bit limbs: x = l0 + l1 2^22 + l2 2^44 (mod 2^64) with
# |l0|, |l1| <= 2^21 and |l2| <= 2^19 + 1. The six products l_i l_j with
# i + j <= 2 cover every bit below 2^64. Each partial-sum group stays an
# integer below 2^53 (hence exact in float64) while the reduction length is
# at most _LIMB_MAX_K: group 1 is bounded by 2 * 2^42 * k.
_LIMB_BITS = 22
_LIMB_MAX_K = 1024
_LIMB_PAIRS = ((0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (0, 2))


def kernels_available() -> bool:
    """Whether the optional C kernels (``smpc._ringkernels``) were built."""
    return _kernels is not None


def split_limbs(x: torch.Tensor) -> torch.Tensor:
    """Balanced float64 limbs of int64 ``x``: shape ``(3, *x.shape)``, least significant first.

    ``x = l0 + l1 2^22 + l2 2^44 (mod 2^64)``, ``|l0|, |l1| <= 2^21``, ``|l2| <= 2^19 + 1``.
    """
    out = torch.empty((3, *x.shape), dtype=torch.float64, device=x.device)
    if _kernels is not None and x.device.type == "cpu":
        src = x.contiguous()
        n = src.numel()
        _kernels.split3(src.data_ptr(), out.data_ptr(), n, 2 if n >= _KERNEL_THREADS_MIN else 1)
        return out
    half, mask = 1 << (_LIMB_BITS - 1), (1 << _LIMB_BITS) - 1
    low = ((x + half) & mask) - half
    out[0].copy_(low)
    rest = (x - low) >> _LIMB_BITS
    mid = ((rest + half) & mask) - half
    out[1].copy_(mid)
    out[2].copy_((rest - mid) >> _LIMB_BITS)
    return out


def _combine_limbs(
    g0: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    """``g0 + g1 2^22 + g2 2^44`` modulo 2^64 from exact float64 group sums (added to ``out``)."""
    if _kernels is not None and g0.device.type == "cpu":
        g0, g1, g2 = g0.contiguous(), g1.contiguous(), g2.contiguous()
        acc = out is not None
        if out is None:
            out = torch.empty(g0.shape, dtype=torch.int64)
        n = g0.numel()
        _kernels.combine3(
            g0.data_ptr(),
            g1.data_ptr(),
            g2.data_ptr(),
            out.data_ptr(),
            n,
            int(acc),
            2 if n >= _KERNEL_THREADS_MIN else 1,
        )
        return out
    res = g2.to(torch.int64) << _LIMB_BITS
    res += g1.to(torch.int64)
    res <<= _LIMB_BITS
    res += g0.to(torch.int64)
    return res if out is None else out.add_(res)


def _limb_product(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xs: torch.Tensor,
    ys: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ring ``op`` from limb stacks ``xs = split_limbs(x)``, ``ys = split_limbs(y)``.

    ``op`` must map a leading limb axis of its left operand through (three
    calls compute the six products: ``[l0, l1, l2] x m0``, ``[l0, l1] x m1``,
    ``l0 x m2``).
    """
    p0 = op(xs, ys[0])
    p1 = op(xs[:2], ys[1])
    p2 = op(xs[0], ys[2])
    g1 = p0[1].add_(p1[0])
    g2 = p0[2].add_(p1[1]).add_(p2)
    return _combine_limbs(p0[0], g1, g2, out)


def _matmul_limbs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact ring matmul of int64 ``x`` (..., m, k) and ``y`` (..., k, n) through float64 GEMMs."""
    k = x.shape[-1]
    nb = max(x.dim(), y.dim()) - 2
    lead = (1,) * (nb - (x.dim() - 2))

    def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # a: (L, *lead, *x.shape) limb stack, or one limb (*x.shape).
        if a.dim() == x.dim() + 1:
            a = a.view(a.shape[0], *lead, *a.shape[1:])
        return torch.matmul(a, b)

    out: torch.Tensor | None = None
    for start in range(0, k, _LIMB_MAX_K):
        stop = min(k, start + _LIMB_MAX_K)
        xc = x if stop - start == k else x[..., start:stop]
        yc = y if stop - start == k else y[..., start:stop, :]
        out = _limb_product(op, split_limbs(xc), split_limbs(yc), out)
    assert out is not None
    return out


def matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact ``x @ y`` modulo 2^64 for int64 tensors (any batch shapes torch allows).

    Args:
        x: int64 tensor.
        y: int64 tensor.

    Returns:
        int64 tensor equal to the integer matrix product reduced modulo 2^64.
    """
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError("matmul: both operands must have at least one dimension")
    k = x.shape[-1]
    ky = y.shape[-2] if y.dim() > 1 else y.shape[-1]
    if k != ky:
        raise ValueError(f"matmul: inner dimensions differ: {tuple(x.shape)} @ {tuple(y.shape)}")
    rows = x.shape[-2] if x.dim() > 1 else 1
    cols = y.shape[-1] if y.dim() > 1 else 1
    batch = max(x.numel() // max(rows * k, 1), y.numel() // max(k * cols, 1), 1)
    work = rows * cols * k * batch
    if x.is_cuda:
        return torch.matmul(x, y)
    if x.dim() >= 2 and y.dim() >= 2:
        # Few rows (matrix-vector products, batch 1 inference): one broadcast
        # multiply and a sum, exact modulo 2^64 and 10-20x faster than torch's
        # int64 matmul kernel or the limb split at these shapes.
        folded_rows = x.numel() // max(k, 1) if y.dim() == 2 else rows
        if work <= _NATIVE_MATMUL_WORK or (
            folded_rows <= _BROADCAST_ROWS and work <= _BROADCAST_WORK
        ):
            return (x.unsqueeze(-1) * y.unsqueeze(-3)).sum(-2)
    elif work <= _NATIVE_MATMUL_WORK:
        return torch.matmul(x, y)
    if x.dim() == 1:
        return matmul(x.unsqueeze(0), y).squeeze(-2)
    if y.dim() == 1:
        return matmul(x, y.unsqueeze(-1)).squeeze(-1)
    if x.dim() == 2 and y.dim() >= 3:
        # Fold y's batch dims into columns: x @ [y_0 | y_1 | ...], one GEMM per limb pair.
        yb = y.reshape(-1, k, cols)
        y2 = yb.permute(1, 0, 2).reshape(k, -1)
        res = _matmul_limbs(x, y2).reshape(rows, yb.shape[0], cols).permute(1, 0, 2)
        return res.reshape(*y.shape[:-2], rows, cols)
    return _matmul_limbs(x, y)


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Exact ``conv2d(x, weight)`` modulo 2^64 for int64 tensors (N,C,H,W) and (O,C/g,kh,kw)."""

    def op(a: torch.Tensor, b: torch.Tensor, g: int) -> torch.Tensor:
        return F.conv2d(a, b, stride=stride, padding=padding, dilation=dilation, groups=g)

    return _conv_limbs(op, x, weight, in_axis=1, groups=groups)


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Exact ``conv_transpose2d(x, weight)`` modulo 2^64 (used by conv2d's input gradient)."""

    def op(a: torch.Tensor, b: torch.Tensor, g: int) -> torch.Tensor:
        return F.conv_transpose2d(
            a,
            b,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=g,
        )

    return _conv_limbs(op, x, weight, in_axis=0, groups=groups)


def _conv_limbs(
    op: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    in_axis: int,
    groups: int,
) -> torch.Tensor:
    """Exact ring convolution through float64 limb convolutions.

    ``op(x, w, groups)`` is the float convolution; ``in_axis`` is the weight's
    input-channel axis (1 for conv2d, 0 for the transposed convolution). The
    reduction (input channels per group times the kernel area) is cut into
    chunks of at most ``_LIMB_MAX_K`` terms, over whole input channels, so that
    every float64 partial sum stays exact.
    """
    area = weight.shape[2] * weight.shape[3]
    cin = x.shape[1]
    per_group = cin // groups
    step = max(1, _LIMB_MAX_K // area)
    if area > _LIMB_MAX_K:
        raise ValueError(
            f"conv2d: kernel area must be <= {_LIMB_MAX_K} for exact ring convolution; got {area}"
        )

    def stacked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dim() == 4:
            return op(a, b, groups)
        out = op(a.reshape(-1, *a.shape[2:]), b, groups)
        return out.view(a.shape[0], -1, *out.shape[1:])

    if per_group <= step:
        return _limb_product(stacked, split_limbs(x), split_limbs(weight))
    if groups != 1:
        # One exact convolution per group (rare: > _LIMB_MAX_K terms per group).
        parts = [
            _conv_limbs(op, xg, wg, in_axis=in_axis, groups=1)
            for xg, wg in zip(
                x.chunk(groups, dim=1), weight.chunk(groups, dim=in_axis), strict=True
            )
        ]
        return torch.cat(parts, dim=1)
    out: torch.Tensor | None = None
    for start in range(0, cin, step):
        xc = x[:, start : start + step]
        wc = weight.narrow(in_axis, start, min(step, cin - start))
        out = _limb_product(stacked, split_limbs(xc), split_limbs(wc), out)
    assert out is not None
    return out


@dataclass(frozen=True, slots=True)
class MatmulOp:
    """The bilinear map ``(x, y) -> x @ y``."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return matmul(x, y)

    def out_shape(self, x_shape: torch.Size, y_shape: torch.Size) -> torch.Size:
        return torch.matmul(
            torch.empty(x_shape, dtype=torch.float32, device="meta"),
            torch.empty(y_shape, dtype=torch.float32, device="meta"),
        ).shape


@dataclass(frozen=True, slots=True)
class Conv2dOp:
    """The bilinear map ``(x, w) -> conv2d(x, w, stride, padding, dilation, groups)``."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv2d(
            x,
            w,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )

    def out_shape(self, x_shape: torch.Size, w_shape: torch.Size) -> torch.Size:
        return F.conv2d(
            torch.empty(x_shape, dtype=torch.float32, device="meta"),
            torch.empty(w_shape, dtype=torch.float32, device="meta"),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        ).shape


BilinearOp = MatmulOp | Conv2dOp


def bilinear(op: BilinearOp, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Apply a bilinear op exactly modulo 2^64."""
    return op(x, y)


def _fusable(*tensors: torch.Tensor) -> bool:
    """Whether the C kernels can take these tensors (built, CPU, int64, contiguous)."""
    return _kernels is not None and all(
        t.device.type == "cpu" and t.dtype == torch.int64 and t.is_contiguous() for t in tensors
    )


def _threads(n: int) -> int:
    return 2 if n >= _KERNEL_THREADS_MIN else 1


def fused_beaver(
    c: torch.Tensor,
    e: torch.Tensor,
    b: torch.Tensor,
    f: torch.Tensor,
    a: torch.Tensor,
    *,
    first: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """One pass of ``c + e*b + f*a`` (plus ``e*f`` on row 0 when ``first``), or None.

    ``c``, ``b``, ``a`` hold ``R >= 1`` rows of ``e``'s shape (stacked shares,
    or one share); ``e`` and ``f`` are public and of one shape. Returns None
    when the kernels are not built or the shapes or layouts do not fit (the
    caller then uses torch ops). ``out`` may be ``c``.
    """
    n = e.numel()
    if (
        n == 0
        or f.shape != e.shape
        or c.shape != b.shape
        or a.shape != c.shape
        or c.numel() % n
        or not _fusable(c, e, b, f, a)
    ):
        return None
    res = torch.empty_like(c) if out is None else out
    assert _kernels is not None
    _kernels.beaver_mul(
        c.data_ptr(), e.data_ptr(), b.data_ptr(), f.data_ptr(), a.data_ptr(), res.data_ptr(),
        c.numel() // n, n, int(first), _threads(n),
    )  # fmt: skip
    return res


def fused_trunc_finish(
    w: torch.Tensor, neg_r_hi: torch.Tensor, s: torch.Tensor, frac_bits: int, *, first: bool
) -> torch.Tensor | None:
    """One pass of ``neg_r_hi + s * sign(w)`` (plus ``(w >>> f) - 2^(62-f)`` on row 0), or None.

    The local end of the [EGKRS20] truncation (see
    :func:`smpc.protocols.truncation.finish`); ``neg_r_hi`` and ``s`` hold
    ``R >= 1`` rows of ``w``'s shape. None when the kernels cannot take the inputs.
    """
    n = w.numel()
    if (
        n == 0
        or neg_r_hi.shape != s.shape
        or neg_r_hi.numel() % n
        or not 1 <= frac_bits <= 61
        or not _fusable(w, neg_r_hi, s)
    ):
        return None
    out = torch.empty_like(neg_r_hi)
    assert _kernels is not None
    _kernels.trunc_finish(
        w.data_ptr(), neg_r_hi.data_ptr(), s.data_ptr(), out.data_ptr(),
        neg_r_hi.numel() // n, n, frac_bits, int(first), _threads(n),
    )  # fmt: skip
    return out


def fused_trunc_correct(
    r: torch.Tensor,
    partial: tuple[torch.Tensor, torch.Tensor],
    out: tuple[torch.Tensor, torch.Tensor],
    frac_bits: int,
    product: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> bool:
    """Correction shares of truncation material, in one pass; False if not possible.

    With ``R = r``: ``out = (NRH - sum(partial[0]), S - sum(partial[1]))`` where
    ``NRH = -((R mod 2^63) >> f)`` and ``S = msb(R) 2^(63-f)``, sums over the
    rows of the partial tensors (other parties' shares). With ``product =
    (a_rows, b_rows, c_partial_rows, c_out)`` also ``c_out = A*B + R + 2^62 -
    sum(c_partial_rows)`` for ``A``, ``B`` the row sums of ``a_rows``, ``b_rows``.
    """
    n = r.numel()
    tensors = [r, *partial, *out] + (list(product) if product is not None else [])
    if n == 0 or not 1 <= frac_bits <= 61 or not _fusable(*tensors):
        return False
    if any(t.numel() % n for t in tensors) or any(t.numel() != n for t in out):
        return False
    rp = partial[0].numel() // n
    if partial[1].numel() != rp * n:
        return False
    if product is not None:
        a, b, pc, oc = product
        rab = a.numel() // n
        if b.numel() != rab * n or pc.numel() != rp * n or oc.numel() != n:
            return False
        ptrs = (a.data_ptr(), b.data_ptr(), pc.data_ptr(), oc.data_ptr())
    else:
        rab = 0
        ptrs = (0, 0, 0, 0)
    assert _kernels is not None
    _kernels.trunc_correct(
        ptrs[0], ptrs[1], r.data_ptr(), ptrs[2], partial[0].data_ptr(), partial[1].data_ptr(),
        ptrs[3], out[0].data_ptr(), out[1].data_ptr(), rab, rp, n, frac_bits, _threads(n),
    )  # fmt: skip
    return True

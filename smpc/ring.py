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

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "RING_BITS",
    "broadcast_shapes",
    "wrap",
    "matmul",
    "conv2d",
    "ConvTranspose2dOp",
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
    _kernels: Any = importlib.import_module("smpc._ringkernels")
except ImportError:  # pragma: no cover - depends on the build
    _kernels = None

# Kernels use a second thread above this many elements. Below it the thread
# costs more than it saves: torch's OpenMP workers keep spinning on the other
# core for a while after each parallel op, and would compete with it.
_KERNEL_THREADS_MIN = 1 << 19

# Balanced 22/22/20-bit limbs: x = l0 + l1 2^22 + l2 2^44 (mod 2^64) with
# |l0|, |l1| <= 2^21 and |l2| <= 2^19 + 1. The six products l_i l_j with
# i + j <= 2 cover every bit below 2^64. Each partial-sum group stays an
# integer below 2^53 (hence exact in float64) while the reduction length is
# at most _LIMB_MAX_K: group 1 is bounded by 2 * 2^42 * k.
_LIMB_BITS = 22
_LIMB_MAX_K = 1024


# int8 limbs, for VNNI integer GEMMs (``torch._int_mm``): x = sum_i l_i 2^(8 i) (mod
# 2^64), -128 <= l_i <= 127, eight planes. A limb product is at most 2^14 in size,
# so a reduction of k <= _LIMB_MAX_K terms stays far below 2^31: the int32
# accumulation is exact. The 36 products l_i m_j with i + j <= 7 cover every bit
# below 2^64, in 8 GEMM calls (call j: the stacked planes 0 .. 7-j of the left
# operand times plane j of the right one). Measured here, from a few hundred
# terms on this route beats the float64 one (25 % on [64x784] @ [784x128],
# splits 3x cheaper: 8 bytes per element instead of 24); below, it loses.
_INT8_MIN_K = 256


def _int8_ok(k: int) -> bool:
    return _kernels is not None and k >= _INT8_MIN_K and _int8_gemms_fast()


@functools.cache
def _int8_gemms_fast() -> bool:
    """Whether this CPU has VNNI int8 dot products (else int8 GEMMs lose to float64).

    Read once, at the first long product, from ``/proc/cpuinfo`` (Linux, x86);
    ``False`` where it cannot be told.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def _split8(
    src: torch.Tensor,
    rows: int,
    k: int,
    n: int,
    *,
    add: torch.Tensor | None = None,
    sum_rows: bool = False,
) -> torch.Tensor:
    """int8 limb planes of ``rows`` stacked ``k x n`` int64 matrices (contiguous, CPU).

    Layout as :func:`_split_rows` (``(8, k, rows * n)``, ``add`` on row 0) or,
    with ``sum_rows``, of the rows' sum (``(8, k, n)``). One pass (C kernel).
    """
    assert _kernels is not None and src.is_contiguous() and src.dtype == torch.int64
    out = torch.empty((8, k, n if sum_rows else rows * n), dtype=torch.int8)
    aptr = 0
    if add is not None:
        assert add.is_contiguous() and add.dtype == torch.int64
        aptr = add.data_ptr()
    _kernels.split8(
        src.data_ptr(), aptr, out.data_ptr(), rows, k, n, int(sum_rows), _threads(src.numel())
    )
    return out


def _gemm8(xs: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
    """The 36 limb products of int8 planes ``xs (8, M, K)``, ``ys (8, K, N)``: 8 int32 GEMMs.

    Product ``j`` is ``[x_0; ...; x_{7-j}] @ y_j``, ``(8 - j) M x N``.
    """
    m, k = xs.shape[1], xs.shape[2]
    stacked = xs.view(8 * m, k)
    return [torch._int_mm(stacked[: (8 - j) * m], ys[j]) for j in range(8)]


def _combine8(
    products: list[torch.Tensor],
    shape: tuple[int, int, int],
    base: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ring result ``base + sum_{i+j<=7} x_i y_j 2^(8 (i+j))`` from :func:`_gemm8`'s products.

    ``products`` are laid out ``M x R x N`` for ``shape = (R, M, N)``; the result
    (and ``base``, and ``out``, which may be ``base``) is ``R x M x N``.
    """
    assert _kernels is not None
    r, m, n = shape
    if out is None:
        out = torch.empty(shape, dtype=torch.int64)
    if base is not None and not _fusable(base):
        base = base.contiguous()
    _kernels.combine8(
        *[p.data_ptr() for p in products],
        0 if base is None else base.data_ptr(),
        out.data_ptr(), r, m, n, _threads(r * m * n),
    )  # fmt: skip
    return out


def kernels_available() -> bool:
    """Whether the optional C kernels (``smpc._ringkernels``) were built."""
    return _kernels is not None


def native() -> Any:
    """The optional C kernel module, or None (for protocol-specific fused steps)."""
    return _kernels


def _threads(n: int) -> int:
    return 2 if n >= _KERNEL_THREADS_MIN else 1


def _split_torch(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    half, mask = 1 << (_LIMB_BITS - 1), (1 << _LIMB_BITS) - 1
    low = ((x + half) & mask) - half
    out[0].copy_(low)
    rest = (x - low) >> _LIMB_BITS
    mid = ((rest + half) & mask) - half
    out[1].copy_(mid)
    out[2].copy_((rest - mid) >> _LIMB_BITS)
    return out


def split_limbs(x: torch.Tensor) -> torch.Tensor:
    """Balanced float64 limbs of int64 ``x``: shape ``(3, *x.shape)``, least significant first.

    ``x = l0 + l1 2^22 + l2 2^44 (mod 2^64)``, ``|l0|, |l1| <= 2^21``, ``|l2| <= 2^19 + 1``.
    """
    out = torch.empty((3, *x.shape), dtype=torch.float64, device=x.device)
    if _kernels is not None and x.device.type == "cpu":
        src = x.contiguous()
        n = src.numel()
        if n:
            last = src.shape[-1] if src.dim() else 1
            _kernels.split3(src.data_ptr(), 0, out.data_ptr(), 1, n // last, last, 0, _threads(n))
        return out
    return _split_torch(x, out)


def _split_rows(rows: torch.Tensor, add_first: torch.Tensor | None = None) -> torch.Tensor:
    """Limbs of ``R`` stacked ``K x N`` matrices laid side by side: shape ``(3, K, R * N)``.

    ``add_first`` (``K x N``) is added to row 0 first. One pass with the kernels.
    """
    r, k, n = rows.shape
    out = torch.empty((3, k, r * n), dtype=torch.float64)
    if _fusable(rows) and (add_first is None or _fusable(add_first)):
        add = 0 if add_first is None else add_first.data_ptr()
        _kernels.split3(rows.data_ptr(), add, out.data_ptr(), r, k, n, 0, _threads(rows.numel()))
        return out
    src = rows if add_first is None else rows.clone()
    if add_first is not None:
        src[0] += add_first
    return _split_torch(src.permute(1, 0, 2).reshape(k, r * n), out)


def _split_row_sum(rows: torch.Tensor) -> torch.Tensor:
    """Limbs of the sum of ``R`` stacked matrices (``R x K x N``): shape ``(3, K, N)``."""
    r, k, n = rows.shape
    out = torch.empty((3, k, n), dtype=torch.float64)
    if _fusable(rows):
        _kernels.split3(rows.data_ptr(), 0, out.data_ptr(), r, k, n, 1, _threads(rows.numel()))
        return out
    return _split_torch(rows.sum(0), out)


def _combine(
    groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    shape: tuple[int, int, int],
    base: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ring result ``base + g0 + g1 2^22 + g2 2^44`` from the float64 limb-product groups.

    ``groups`` are ``g0 = l0 m0``, ``g1 = l1 m0 + l0 m1``, ``g2 = l2 m0 + l1 m1 +
    l0 m2``, each laid out ``M x R x N`` for ``shape = (R, M, N)``; the result
    (and ``base``, and ``out``, which may be ``base``) is ``R x M x N``.
    """
    r, m, n = shape
    if out is None:
        out = torch.empty(shape, dtype=torch.int64)
    if _kernels is not None and out.is_contiguous() and all(g.is_contiguous() for g in groups):
        if base is not None and not _fusable(base):
            base = base.contiguous()  # (never ``out`` itself: that one is contiguous)
        ptrs = [g.data_ptr() for g in groups]
        bptr = 0 if base is None else base.data_ptr()
        _kernels.combine3(*ptrs, bptr, out.data_ptr(), r, m, n, _threads(r * m * n))
        return out
    g0, g1, g2 = (g.to(torch.int64) for g in groups)
    res = ((g2 << _LIMB_BITS) + g1 << _LIMB_BITS) + g0
    res = res.reshape(m, r, n).permute(1, 0, 2)
    if base is not None:
        res = res + base.reshape(shape)
    out.view(shape).copy_(res)
    return out


def _gemm_groups(
    xs: torch.Tensor, ys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Limb groups of 2-D limb stacks ``xs (3, M, K)``, ``ys (3, K, N)``: 3 GEMM calls.

    ``[l0; l1; l2] @ m0`` gives the three groups' first terms; ``[l0; l1] @ m1``
    and ``l0 @ m2`` are accumulated into groups 1-2 and 2 by the GEMM itself.
    """
    _, m, k = xs.shape
    g = torch.mm(xs.view(3 * m, k), ys[0])
    g[m:].addmm_(xs[:2].reshape(2 * m, k), ys[1])
    g[2 * m :].addmm_(xs[0], ys[2])
    return g[:m], g[m : 2 * m], g[2 * m :]


def _limb_product(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xs: torch.Tensor,
    ys: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ring ``op`` from limb stacks ``xs = split_limbs(x)``, ``ys = split_limbs(y)``.

    ``op`` must map a leading limb axis of its left operand through (three
    calls compute the six products: ``[l0, l1, l2] x m0``, ``[l0, l1] x m1``,
    ``l0 x m2``). With ``out``, the product is added to it.
    """
    p0 = op(xs, ys[0])
    p1 = op(xs[:2], ys[1])
    p2 = op(xs[0], ys[2])
    groups = (p0[0], p0[1].add_(p1[0]), p0[2].add_(p1[1]).add_(p2))
    last = p2.shape[-1] if p2.dim() else 1
    res = _combine(groups, (1, p2.numel() // last, last), out, out)
    return res.view(p2.shape)


def _matmul_limbs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact ring matmul of int64 ``x`` (..., m, k) and ``y`` (..., k, n) through float64 GEMMs."""
    k = x.shape[-1]
    if x.dim() == 2 and y.dim() == 2 and k <= _LIMB_MAX_K:
        m, n = x.shape[0], y.shape[1]
        if _int8_ok(k) and x.device.type == "cpu":
            xs, ys = _split8(x.contiguous(), 1, m, k), _split8(y.contiguous(), 1, k, n)
            return _combine8(_gemm8(xs, ys), (1, m, n)).view(m, n)
        return _combine(_gemm_groups(split_limbs(x), split_limbs(y)), (1, m, n)).view(m, n)
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


def beaver_matmul_local(
    c: torch.Tensor | Callable[[], torch.Tensor],
    e: torch.Tensor,
    b: torch.Tensor,
    f: torch.Tensor,
    a: torch.Tensor,
    *,
    first: bool,
) -> torch.Tensor | None:
    """The local step of a Beaver matmul, ``c + e @ (b + f·[first]) + a @ f``, or None.

    ``e (m, k)`` and ``f (k, n)`` are public; ``c (R, m, n)``, ``b (R, k, n)``,
    ``a (R, m, k)`` hold ``R`` stacked shares (or one share without the
    leading axis); ``first`` adds ``e @ f`` to row 0 (party 0). ``c`` may be a
    function that returns it: it is called only after the products, so that a
    share still in transit (the provider's correction) arrives meanwhile. Exact
    modulo 2^64: 2 ring GEMMs (12 float64 GEMMs on ``R``-wide operands) and
    fused limb passes. None for shapes this path does not take (batched
    operands, reductions longer than 1024): the caller then uses :func:`matmul`.

    Raises:
        ValueError: ``c`` (when given as a function) has the wrong shape.
    """
    if e.dim() != 2 or f.dim() != 2 or b.dim() not in (2, 3) or a.dim() != b.dim():
        return None
    m, k = e.shape
    n = f.shape[1]
    r = b.shape[0] if b.dim() == 3 else 1
    c_shape = (r, m, n) if b.dim() == 3 else (m, n)
    if (
        k > _LIMB_MAX_K
        or m <= _BROADCAST_ROWS  # few rows: matmul's broadcast path avoids splitting b
        or f.shape[0] != k
        or tuple(b.shape[-2:]) != (k, n)
        or tuple(a.shape[-2:]) != (m, k)
        or (isinstance(c, torch.Tensor) and tuple(c.shape) != c_shape)
        or (b.dim() == 3 and a.shape[0] != r)
        or e.device.type != "cpu"
    ):
        return None
    b_rows = b.reshape(r, k, n).contiguous()
    fc = f.contiguous()
    if _int8_ok(k):
        bs8 = _split8(b_rows, r, k, n, add=fc if first else None)
        left8 = _gemm8(_split8(e.contiguous(), 1, m, k), bs8)
        a_rows = a.reshape(r * m, k).contiguous()
        right8 = _gemm8(_split8(a_rows, 1, r * m, k), _split8(fc, 1, k, n))
        z = _combine8(left8, (r, m, n), base=_lazy_base(c, c_shape))
        _combine8(right8, (1, r * m, n), base=z, out=z)
        return z.view(c_shape)
    bs = _split_rows(b_rows, fc if first else None)
    left = _gemm_groups(split_limbs(e), bs)
    right = _gemm_groups(split_limbs(a.reshape(r * m, k)), split_limbs(fc))
    z = _combine(left, (r, m, n), base=_lazy_base(c, c_shape))
    _combine(right, (1, r * m, n), base=z, out=z)
    return z.view(c_shape)


def _lazy_base(
    c: torch.Tensor | Callable[[], torch.Tensor], shape: tuple[int, ...]
) -> torch.Tensor:
    """``c``, or what the function ``c`` returns, checked to have ``shape``."""
    base = c if isinstance(c, torch.Tensor) else c()
    if tuple(base.shape) != shape:
        raise ValueError(
            f"beaver_matmul_local: `c` must have shape {shape}; got {tuple(base.shape)}"
        )
    return base


def matmul_of_row_sums(a_rows: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
    """``(sum_r a_rows[r]) @ (sum_r b_rows[r])`` exactly, for ``R x M x K`` and ``R x K x N``.

    The provider's product of two shared masks; the row sums are folded into
    the limb split (one pass each with the kernels).
    """
    if (
        a_rows.dim() != 3
        or b_rows.dim() != 3
        or a_rows.shape[-1] > _LIMB_MAX_K
        or a_rows.shape[1] <= _BROADCAST_ROWS
    ):
        return matmul(a_rows.sum(0), b_rows.sum(0))
    m, n = a_rows.shape[1], b_rows.shape[2]
    k = a_rows.shape[2]
    if _int8_ok(k):
        r = a_rows.shape[0]
        xs = _split8(a_rows.contiguous(), r, m, k, sum_rows=True)
        ys = _split8(b_rows.contiguous(), b_rows.shape[0], k, n, sum_rows=True)
        return _combine8(_gemm8(xs, ys), (1, m, n)).view(m, n)
    groups = _gemm_groups(_split_row_sum(a_rows.contiguous()), _split_row_sum(b_rows.contiguous()))
    return _combine(groups, (1, m, n)).view(m, n)


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
        return _out_shape(self, tuple(x_shape), tuple(y_shape))

    def meta_shape(self, x_shape: torch.Size, y_shape: torch.Size) -> torch.Size:
        """:meth:`out_shape`, computed on meta tensors (uncached; raises for bad shapes)."""
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
        return _out_shape(self, tuple(x_shape), tuple(w_shape))

    def meta_shape(self, x_shape: torch.Size, w_shape: torch.Size) -> torch.Size:
        """:meth:`out_shape`, computed on meta tensors (uncached; raises for bad shapes)."""
        return F.conv2d(
            torch.empty(x_shape, dtype=torch.float32, device="meta"),
            torch.empty(w_shape, dtype=torch.float32, device="meta"),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        ).shape


@dataclass(frozen=True, slots=True)
class ConvTranspose2dOp:
    """The bilinear map ``(x, w) -> conv_transpose2d(x, w, ...)`` (a convolution's input gradient).

    ``w`` is ``(C_in, C_out / groups, kh, kw)`` as in torch.
    """

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d(
            x,
            w,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
        )

    def out_shape(self, x_shape: torch.Size, w_shape: torch.Size) -> torch.Size:
        return _out_shape(self, tuple(x_shape), tuple(w_shape))

    def meta_shape(self, x_shape: torch.Size, w_shape: torch.Size) -> torch.Size:
        """:meth:`out_shape`, computed on meta tensors (uncached; raises for bad shapes)."""
        return F.conv_transpose2d(
            torch.empty(x_shape, dtype=torch.float32, device="meta"),
            torch.empty(w_shape, dtype=torch.float32, device="meta"),
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
        ).shape


BilinearOp = MatmulOp | Conv2dOp | ConvTranspose2dOp


@functools.lru_cache(maxsize=1024)  # shape inference on meta tensors costs ~50 µs a call
def _out_shape(op: BilinearOp, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> torch.Size:
    """The output shape of ``op`` on operands of these shapes (memoised; raises for bad ones)."""
    return op.meta_shape(torch.Size(x_shape), torch.Size(y_shape))


def bilinear(op: BilinearOp, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Apply a bilinear op exactly modulo 2^64."""
    return op(x, y)


def _fusable(*tensors: torch.Tensor) -> bool:
    """Whether the C kernels can take these tensors (built, CPU, int64, contiguous)."""
    return _kernels is not None and all(
        t.device.type == "cpu" and t.dtype == torch.int64 and t.is_contiguous() for t in tensors
    )


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


def open_diff(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor | None:
    """``sum_k (x[k] - m[k])`` over the leading (party) axis in one pass, or None.

    The simulation's opening of masked shares. None when the kernels cannot
    take the inputs (then the caller subtracts and sums with torch).
    """
    if x.shape != m.shape or x.dim() < 1 or x.numel() == 0 or not _fusable(x, m):
        return None
    rows = x.shape[0]
    out = torch.empty(x.shape[1:], dtype=torch.int64)
    assert _kernels is not None
    n = out.numel()
    _kernels.open_diff(x.data_ptr(), m.data_ptr(), out.data_ptr(), rows, n, _threads(n))
    return out


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
    product: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor] | None = None,
) -> bool:
    """Correction shares of truncation material, in one pass; False if not possible.

    With ``R = r``: ``out = (NRH - sum(partial[0]), S - sum(partial[1]))`` where
    ``NRH = -((R mod 2^63) >> f)`` and ``S = msb(R) 2^(63-f)``, sums over the
    rows of the partial tensors (other parties' shares). With ``product =
    (a_rows, b_rows, c_partial_rows, c_out)`` also ``c_out = A*B + R + 2^62 -
    sum(c_partial_rows)`` for ``A``, ``B`` the row sums of ``a_rows``, ``b_rows``;
    with ``b_rows = None``, ``A`` is the product itself (e.g. a matmul of masks).
    """
    n = r.numel()
    tensors = [r, *partial, *out] + [t for t in product or () if t is not None]
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
        if (b is not None and b.numel() != rab * n) or pc.numel() != rp * n or oc.numel() != n:
            return False
        ptrs = (a.data_ptr(), 0 if b is None else b.data_ptr(), pc.data_ptr(), oc.data_ptr())
    else:
        rab = 0
        ptrs = (0, 0, 0, 0)
    assert _kernels is not None
    _kernels.trunc_correct(
        ptrs[0], ptrs[1], r.data_ptr(), ptrs[2], partial[0].data_ptr(), partial[1].data_ptr(),
        ptrs[3], out[0].data_ptr(), out[1].data_ptr(), rab, rp, n, frac_bits, _threads(n),
    )  # fmt: skip
    return True

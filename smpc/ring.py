"""The ring Z_2^64 on ``torch.int64`` tensors (bottom layer: pure, local, no parties).

Addition, subtraction and elementwise multiplication wrap around natively in
two's complement. Bilinear maps (matmul, conv2d) are computed *exactly* modulo
2^64 through float64 BLAS: each operand is split into balanced limbs small
enough that every partial product sum is an integer below 2^53, so the float
result is exact; the partial products are recombined with wrap-around. This is
6 float64 GEMMs per ring GEMM (22-bit limbs) and is 5-12x faster on CPU than
torch's own int64 kernels, which have no BLAS path (and none at all for conv).
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


@dataclass(frozen=True, slots=True)
class _LimbPlan:
    bits: int
    count: int
    max_k: int  # largest reduction length whose partial sums stay below 2^53

    def pairs(self) -> list[tuple[int, int]]:
        return [
            (i, j)
            for i in range(self.count)
            for j in range(self.count)
            if (i + j) * self.bits < RING_BITS
        ]


# 3 balanced 22-bit limbs: |limb| <= 2^21, |product| <= 2^42, 6 products; sums exact for
# up to 2^53 / (3 * 2^42) = 682 terms per group of equal offset.
_PLAN22 = _LimbPlan(bits=22, count=3, max_k=682)
# 4 balanced 16-bit limbs: |product| <= 2^30, 10 products; exact for k up to 2^21.
_PLAN16 = _LimbPlan(bits=16, count=4, max_k=1 << 21)


def _split(x: torch.Tensor, plan: _LimbPlan) -> list[torch.Tensor]:
    """Balanced limbs of ``x`` as float64: x = sum_i limb_i * 2^(bits*i) mod 2^64."""
    half = 1 << (plan.bits - 1)
    mask = (1 << plan.bits) - 1
    limbs = []
    rest = x
    for _ in range(plan.count - 1):
        low = ((rest + half) & mask) - half
        limbs.append(low.to(torch.float64))
        rest = (rest - low) >> plan.bits
    limbs.append(rest.to(torch.float64))
    return limbs


def _combine(partials: dict[int, torch.Tensor], plan: _LimbPlan) -> torch.Tensor:
    out: torch.Tensor | None = None
    for offset_index in sorted(partials):
        term = partials[offset_index].to(torch.int64)
        if offset_index:
            term = term * (1 << (plan.bits * offset_index))
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


def _limb_bilinear(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
) -> torch.Tensor:
    plan = _PLAN22 if k <= _PLAN22.max_k else _PLAN16
    if k > plan.max_k:
        raise ValueError(f"reduction length must be <= {plan.max_k} for exact ring ops; got {k}")
    xs = _split(x, plan)
    ys = _split(y, plan)
    partials: dict[int, torch.Tensor] = {}
    for i, j in plan.pairs():
        term = op(xs[i], ys[j])
        key = i + j
        partials[key] = term if key not in partials else partials[key].add_(term)
    return _combine(partials, plan)


# Signed-byte limbs: x + C has bytes b_i with x = sum_i (b_i - 128) 2^(8i) mod 2^64.
_BYTE_BIAS = -0x7F7F7F7F7F7F7F80  # 0x8080808080808080 as a signed int64


def _byte_limbs(x: torch.Tensor) -> torch.Tensor:
    """Signed 8-bit limbs of int64 ``x``, shape ``(*x.shape, 8)``, least significant first."""
    biased = (x + _BYTE_BIAS).contiguous().view(torch.uint8) ^ 0x80
    return biased.view(torch.int8).reshape(*x.shape, 8)


def _matmul_int8(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """2-D ring matmul through int8 GEMMs (oneDNN/AMX): 36 limb products grouped in 8 calls.

    Q_s = sum_{i+j=s} X_i @ Y_j is one GEMM over the concatenated reduction axis
    [X_0 | ... | X_s] @ [Y_s; ...; Y_0]; |Q_s| < 8 * K * 2^14 fits int32 for K < 2^14.
    The result is sum_s Q_s 2^(8s), evaluated by Horner's rule in int64.
    """
    m, k = x.shape
    n = y.shape[1]
    xx = _byte_limbs(x).permute(0, 2, 1).reshape(m, 8 * k)
    ylimbs = _byte_limbs(y)
    z = torch.empty(8, k, n, dtype=torch.int8)
    for i in range(8):
        z[7 - i].copy_(ylimbs[..., i])
    zz = z.view(8 * k, n)
    out: torch.Tensor | None = None
    for s in range(7, -1, -1):
        q = torch._int_mm(xx[:, : (s + 1) * k], zz[(7 - s) * k :]).to(torch.int64)
        out = q if out is None else (out << 8).add_(q)
    assert out is not None
    return out


def _int8_ok(m: int, k: int, n: int) -> bool:
    return m > 16 and k % 8 == 0 and n % 8 == 0 and k < (1 << 14)


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
    if y.dim() == 2 and x.dim() >= 2 and not x.is_cuda:
        # Fold x's batch dims into rows: one 2-D product.
        x2 = x.reshape(-1, k)
        if _int8_ok(x2.shape[0], k, cols):
            return _matmul_int8(x2, y).reshape(*x.shape[:-1], cols)
    if x.dim() == 2 and y.dim() >= 3 and not x.is_cuda:
        # Fold y's batch dims into columns: x @ [y_0 | y_1 | ...].
        yb = y.reshape(-1, k, cols)
        y2 = yb.permute(1, 0, 2).reshape(k, -1)
        if _int8_ok(rows, k, y2.shape[1]):
            res = _matmul_int8(x, y2).reshape(rows, yb.shape[0], cols).permute(1, 0, 2)
            return res.reshape(*y.shape[:-2], rows, cols)
    if k > _PLAN22.max_k:
        # Chunk the reduction so that the fast 22-bit plan stays exact.
        step = 512
        out: torch.Tensor | None = None
        for start in range(0, k, step):
            xs = x[..., start : start + step]
            ys = y[..., start : start + step, :] if y.dim() > 1 else y[start : start + step]
            part = _limb_bilinear(torch.matmul, xs, ys, xs.shape[-1])
            out = part if out is None else out.add_(part)
        assert out is not None
        return out
    return _limb_bilinear(torch.matmul, x, y, k)


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
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]

    def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    return _limb_bilinear(op, x, weight, k)


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
    k = weight.shape[0] // groups * weight.shape[2] * weight.shape[3]

    def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            a,
            b,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
        )

    return _limb_bilinear(op, x, weight, k)


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

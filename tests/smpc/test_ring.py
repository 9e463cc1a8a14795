"""Ring Z_2^64: exact bilinear ops against native int64 (which wraps) and Python ints."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from smpc import ring
from tests.strategies import matmul_shapes, seeds


def _rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=g, dtype=torch.int64)


@given(matmul_shapes(), seeds)
def test_matmul_exact_small(shapes: tuple[tuple[int, ...], tuple[int, ...]], seed: int) -> None:
    x, y = _rand(shapes[0], seed), _rand(shapes[1], seed + 1)
    assert torch.equal(ring.matmul(x, y), torch.matmul(x, y))


@given(
    st.sampled_from(
        [(17, 64, 16), (64, 784, 128), (40, 3000, 8), (33, 100, 7), (3, 700, 24), (1, 784, 128)]
        + [(8, 784, 64), (16, 300, 100)]  # the broadcast path for few rows
    ),
    st.sampled_from(["2d", "left_batch", "right_batch", "both_batch"]),
    seeds,
)
def test_matmul_exact_large(mkn: tuple[int, int, int], layout: str, seed: int) -> None:
    m, k, n = mkn
    xs = (2, m, k) if layout in ("left_batch", "both_batch") else (m, k)
    ys = (2, k, n) if layout in ("right_batch", "both_batch") else (k, n)
    x, y = _rand(xs, seed), _rand(ys, seed + 1)
    assert torch.equal(ring.matmul(x, y), torch.matmul(x, y))


def _conv_reference(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """int64 convolution by explicit patches (native int64 ops wrap mod 2^64)."""
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    n, c, h, wd = xp.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = torch.zeros(n, o, oh, ow, dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += torch.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 2), st.integers(0, 1), seeds)
def test_conv2d_exact(c: int, o: int, stride: int, padding: int, seed: int) -> None:
    x, w = _rand((2, c, 7, 6), seed), _rand((o, c, 3, 3), seed + 1)
    got = ring.conv2d(x, w, stride=stride, padding=padding)
    assert torch.equal(got, _conv_reference(x, w, stride, padding))


def test_wrap() -> None:
    assert ring.wrap(2**63) == -(2**63)
    assert ring.wrap(-1) == -1
    assert ring.wrap(2**64 + 5) == 5


_EXTREMES = torch.tensor([-(2**63), 2**63 - 1, -1, 0, 1, 2**21, -(2**21), 2**43 - 1, 2**62])


@given(st.integers(1, 200_000), seeds)
def test_split_limbs_reconstructs_and_is_balanced(n: int, seed: int) -> None:
    x = torch.cat([_EXTREMES, _rand((n,), seed)])
    limbs = ring.split_limbs(x)
    assert limbs.dtype == torch.float64
    assert limbs[:2].abs().max() <= 2**21 and limbs[2].abs().max() <= 2**19 + 1
    back = limbs.to(torch.int64)
    assert torch.equal(back[0] + (back[1] << 22) + (back[2] << 44), x)


def test_kernels_match_the_torch_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional C kernels and the pure-torch path give identical ring results."""
    x, y = _rand((70, 1500), 1), _rand((1500, 33), 2)
    fast = ring.matmul(x, y)
    limbs = ring.split_limbs(x)
    assert torch.equal(fast, torch.matmul(x, y))
    monkeypatch.setattr(ring, "_kernels", None)
    assert torch.equal(ring.split_limbs(x), limbs)
    assert torch.equal(ring.matmul(x, y), fast)


@given(st.sampled_from([(3, 1025, 5), (2, 2048, 3), (4, 3333, 2)]), seeds)
def test_matmul_chunks_long_reductions(mkn: tuple[int, int, int], seed: int) -> None:
    m, k, n = mkn
    x = torch.cat([_EXTREMES.repeat(m, k // len(_EXTREMES) + 1)[:, :k], _rand((m, k), seed)])
    y = _rand((k, n), seed + 1)
    assert torch.equal(ring.matmul(x, y), torch.matmul(x, y))


@given(st.sampled_from([(130, 1), (300, 1), (8, 4)]), seeds)
def test_conv2d_exact_many_channels_and_groups(cg: tuple[int, int], seed: int) -> None:
    """Reductions above the exact float64 bound are chunked over channels (and groups)."""
    c, groups = cg
    x, w = _rand((1, c, 5, 5), seed), _rand((groups * 2, c // groups, 3, 3), seed + 1)
    got = ring.conv2d(x, w, padding=1, groups=groups)
    ref = torch.cat(
        [
            _conv_reference(xg, wg, 1, 1)
            for xg, wg in zip(x.chunk(groups, 1), w.chunk(groups, 0), strict=True)
        ],
        dim=1,
    )
    assert torch.equal(got, ref)


def _ref_mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.unsqueeze(-1) * y.unsqueeze(-3)).sum(-2)


@pytest.mark.parametrize("kernels", [True, False])
@given(
    st.integers(17, 40),  # fewer rows go through matmul's broadcast path (None here)
    st.integers(1, 300),
    st.integers(1, 40),
    st.sampled_from([None, 1, 2, 3]),
    st.booleans(),
    seeds,
)
def test_beaver_matmul_local_and_row_sums(
    kernels: bool, m: int, k: int, n: int, rows: int | None, first: bool, seed: int
) -> None:
    """The fused local Beaver matmul step equals its definition, with or without the kernels."""
    lead = () if rows is None else (rows,)
    c, b, a = _rand((*lead, m, n), seed), _rand((*lead, k, n), seed + 1), _rand((*lead, m, k), 2)
    e, f = _rand((m, k), seed + 3), _rand((k, n), seed + 4)
    mp = pytest.MonkeyPatch()
    if not kernels:
        mp.setattr(ring, "_kernels", None)
    try:
        got = ring.beaver_matmul_local(c, e, b, f, a, first=first)
        sums = ring.matmul_of_row_sums(a.reshape(-1, m, k), b.reshape(-1, k, n))
    finally:
        mp.undo()
    b_plus = b.clone()
    if first:
        b_plus.view(-1, k, n)[0] += f
    assert got is not None
    assert torch.equal(got, c + _ref_mm(e, b_plus) + _ref_mm(a, f))
    assert torch.equal(sums, _ref_mm(a.reshape(-1, m, k).sum(0), b.reshape(-1, k, n).sum(0)))


def test_beaver_matmul_local_reads_c_after_the_products() -> None:
    """``c`` given as a function is read once, after the products; a wrong shape raises."""
    m, k, n = 20, 30, 5
    c, b, a = _rand((m, n), 1), _rand((k, n), 2), _rand((m, k), 3)
    e, f = _rand((m, k), 4), _rand((k, n), 5)
    calls = []

    def late_c() -> torch.Tensor:
        calls.append(1)
        return c

    got = ring.beaver_matmul_local(late_c, e, b, f, a, first=False)
    assert calls == [1]
    assert got is not None and torch.equal(got, c + _ref_mm(e, b) + _ref_mm(a, f))
    with pytest.raises(ValueError, match="`c` must have shape"):
        ring.beaver_matmul_local(lambda: c[:-1], e, b, f, a, first=False)


@pytest.mark.skipif(not ring.kernels_available(), reason="the int8 route needs the C kernels")
@given(st.integers(1, 5000), seeds)
def test_split8_reconstructs_and_is_balanced(n: int, seed: int) -> None:
    """int8 limb planes: ``x = sum l_i 2^(8 i)`` (mod 2^64), every limb in [-128, 127]."""
    x = torch.cat([_EXTREMES, _rand((n,), seed)])
    planes = ring._split8(x.contiguous(), 1, 1, x.numel())
    assert planes.dtype == torch.int8 and planes.shape == (8, 1, x.numel())
    back = planes.reshape(8, -1).to(torch.int64)
    total = torch.zeros_like(x)
    for i in range(8):
        total += back[i] << (8 * i)
    assert torch.equal(total, x)


def _planes_ref(x: torch.Tensor) -> torch.Tensor:
    """Balanced int8 limbs of int64 ``x``, plane axis first (torch reference)."""
    y = (x + _C8) ^ _C8
    return torch.stack([((y >> (8 * i)) & 0xFF).to(torch.uint8).view(torch.int8) for i in range(8)])


_C8 = torch.tensor(0x8080808080808080 - 2**64)


@pytest.mark.skipif(not ring.kernels_available(), reason="the int8 route needs the C kernels")
@given(
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 300),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["split8", "split8_portable"]),
    seeds,
)
def test_split8_layouts_match_torch(
    rows: int, k: int, n: int, add: bool, sum_rows: bool, kernel: str, seed: int
) -> None:
    """Both limb writers (AVX-512 VBMI where the CPU has it, portable) give torch's limbs
    in every layout: rows side by side with ``add`` on row 0, or summed; any width,
    so whole 64-value blocks, masked last blocks and single values all occur."""
    src = torch.cat([_EXTREMES, _rand((rows * k * n,), seed)])[: rows * k * n].view(rows, k, n)
    extra = _rand((k, n), seed + 1) if add and not sum_rows else None
    out = torch.empty((8, k, n if sum_rows else rows * n), dtype=torch.int8)
    fn = getattr(ring.native(), kernel)
    aptr = 0 if extra is None else extra.data_ptr()
    fn(src.data_ptr(), aptr, out.data_ptr(), rows, k, n, int(sum_rows), 1)
    if sum_rows:
        want = _planes_ref(src.sum(0))
    else:
        full = src.clone()
        if extra is not None:
            full[0] += extra
        want = _planes_ref(full.permute(1, 0, 2).reshape(k, rows * n))
    assert torch.equal(out, want)


@pytest.mark.skipif(not ring.kernels_available(), reason="the int8 route needs the C kernels")
@given(
    st.integers(17, 70),
    st.integers(ring._INT8_MIN_K, ring._LIMB_MAX_K),
    st.integers(1, 40),
    st.sampled_from([None, 1, 2, 3]),
    st.booleans(),
    seeds,
)
def test_int8_route_is_exact(
    m: int, k: int, n: int, rows: int | None, first: bool, seed: int
) -> None:
    """Reductions of at least _INT8_MIN_K terms take the int8 GEMMs: matmul, the local
    Beaver step and the provider's product of row sums equal the float64 route."""
    x, y = _rand((m, k), seed), _rand((k, n), seed + 1)
    lead = () if rows is None else (rows,)
    c, b, a = (
        _rand((*lead, m, n), seed + 2),
        _rand((*lead, k, n), seed + 3),
        _rand((*lead, m, k), seed + 4),
    )
    mp = pytest.MonkeyPatch()
    mp.setattr(ring, "_int8_gemms_fast", lambda: True)  # exact on any CPU, fast with VNNI
    try:
        got = (
            ring.matmul(x, y),
            ring.beaver_matmul_local(c, x, b, y, a, first=first),
            ring.matmul_of_row_sums(a.reshape(-1, m, k), b.reshape(-1, k, n)),
        )
        extremes = torch.full((m, k), -(2**63)), torch.full((k, n), 2**63 - 1)
        assert torch.equal(ring.matmul(*extremes), torch.matmul(*extremes))
        # Every limb -128: the largest sums of one shift's limb products (combine8 adds
        # them in 32 bits).
        low = sum(-128 << (8 * i) for i in range(8)) % 2**64  # 0x7F7F...7F80
        worst = torch.full((m, k), low), torch.full((k, n), low)
        assert torch.equal(ring.matmul(*worst), torch.matmul(*worst))
    finally:
        mp.undo()
    mp.setattr(ring, "_INT8_MIN_K", 1 << 30)  # the float64 route
    try:
        want = (
            ring.matmul(x, y),
            ring.beaver_matmul_local(c, x, b, y, a, first=first),
            ring.matmul_of_row_sums(a.reshape(-1, m, k), b.reshape(-1, k, n)),
        )
    finally:
        mp.undo()
    assert torch.equal(got[0], torch.matmul(x, y))
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None and torch.equal(g, w)


@given(st.integers(1, 5), st.integers(1, 3000), seeds)
def test_open_diff_matches_torch(rows: int, n: int, seed: int) -> None:
    """The simulation's fused opening ``sum_k (x[k] - m[k])`` equals torch's, or is None
    where the kernels cannot take the inputs."""
    x, m = _rand((rows, n), seed), _rand((rows, n), seed + 1)
    got = ring.open_diff(x, m)
    if not ring.kernels_available():
        assert got is None
        return
    assert got is not None and torch.equal(got, (x - m).sum(0))
    assert ring.open_diff(x, m[:, :-1] if n > 1 else m[:0]) is None  # shapes differ
    if rows > 1 and n > 1:
        assert ring.open_diff(x.t(), m.t()) is None  # not contiguous


@pytest.mark.skipif(not ring.kernels_available(), reason="needs the C kernels")
def test_open_diff_two_threads() -> None:
    """Above the kernels' threading size both halves are summed."""
    x, m = _rand((2, 1 << 20), 7), _rand((2, 1 << 20), 8)
    got = ring.open_diff(x, m)
    assert got is not None and torch.equal(got, x[0] - m[0] + x[1] - m[1])

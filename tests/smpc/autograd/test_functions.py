"""Gradients of every differentiable op against torch.autograd (hypothesis inputs)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import functional as F
from tests.strategies import broadcastable_pair, matmul_shapes

TOL = 2e-3  # a few ulps of 2^-16 times the operand magnitudes used here


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1) * scale


def check_grads(
    fn_smpc: Callable[..., Any],
    fn_torch: Callable[..., Any],
    inputs: list[torch.Tensor],
    *,
    world_size: int = 2,
    tol: float = TOL,
    seed: int = 0,
) -> None:
    """Compare the forward value and every input gradient with torch.autograd."""
    with smpc.Session(world_size) as sess:
        xs = [sess.share(x, requires_grad=True) for x in inputs]
        out = fn_smpc(*xs)
        g = _rand(tuple(out.shape), seed + 99)
        out.backward(sess.share(g))
        ts = [x.clone().requires_grad_() for x in inputs]
        ref = fn_torch(*ts)
        ref.backward(g)
        torch.testing.assert_close(out.reveal(), ref.detach().float(), atol=tol, rtol=tol)
        for i, (a, b) in enumerate(zip(xs, ts, strict=True)):
            assert a.grad is not None, f"input {i} got no gradient"
            torch.testing.assert_close(
                a.grad.reveal(),
                b.grad.float(),
                atol=tol,
                rtol=tol,
                msg=lambda m, i=i: f"input {i}: {m}",
            )


@given(shapes=broadcastable_pair(), seed=st.integers(0, 2**16), n=st.sampled_from([2, 3]))
def test_add_sub_mul_broadcast(shapes: Any, seed: int, n: int) -> None:
    a, b = _rand(shapes[0], seed), _rand(shapes[1], seed + 1)
    check_grads(lambda x, y: (x + y) * x - y, lambda x, y: (x + y) * x - y, [a, b], world_size=n)


@given(shapes=matmul_shapes(), seed=st.integers(0, 2**16))
def test_matmul(shapes: Any, seed: int) -> None:
    a, b = _rand(shapes[0], seed), _rand(shapes[1], seed + 1)
    check_grads(lambda x, y: x @ y, torch.matmul, [a, b], tol=5e-3)


@given(m=st.integers(1, 5), k=st.integers(1, 6), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_linear(m: int, k: int, n: int, seed: int) -> None:
    x, w, b = _rand((m, k), seed), _rand((n, k), seed + 1), _rand((n,), seed + 2)
    check_grads(F.linear, torch.nn.functional.linear, [x, w, b])


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_backward_products_share_their_rounds(stride: int) -> None:
    """A shared convolution's input and weight gradients cost two rounds in all."""
    x, w = _rand((2, 3, 7, 6), 1), _rand((4, 3, 3, 2), 2)
    with smpc.Session(2) as sess:
        xs, ws = sess.share(x, requires_grad=True), sess.share(w, requires_grad=True)
        out = F.conv2d(xs, ws, stride=stride, padding=1)
        g = _rand(tuple(out.shape), 3)
        gs = sess.share(g)
        before = sess.stats.snapshot()
        out.backward(gs)
        assert (sess.stats - before).rounds == 2
        xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
        torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1).backward(g)
        assert xs.grad is not None and ws.grad is not None
        torch.testing.assert_close(xs.grad.reveal(), xt.grad, atol=TOL, rtol=TOL)
        torch.testing.assert_close(ws.grad.reveal(), wt.grad, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("op", ["linear", "matmul"])
def test_backward_products_share_their_rounds(op: str) -> None:
    """Both gradient products of a layer (``g @ W``, ``g^T @ x``) cost two rounds in all."""
    x, w = _rand((6, 5), 1), _rand((4, 5), 2)
    with smpc.Session(2) as sess:
        xs, ws = sess.share(x, requires_grad=True), sess.share(w, requires_grad=True)
        out = F.linear(xs, ws) if op == "linear" else xs @ ws.t()
        g = _rand(tuple(out.shape), 3)
        gs = sess.share(g)
        before = sess.stats.snapshot()
        out.backward(gs)
        assert (sess.stats - before).rounds == 2
        assert xs.grad is not None and ws.grad is not None
        torch.testing.assert_close(xs.grad.reveal(), g @ w, atol=TOL, rtol=TOL)
        torch.testing.assert_close(ws.grad.reveal(), g.t() @ x, atol=TOL, rtol=TOL)


@given(
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_conv2d(stride: int, padding: int, dilation: int, k: int, seed: int) -> None:
    x, w, b = _rand((2, 2, 7, 6), seed), _rand((3, 2, k, k), seed + 1), _rand((3,), seed + 2)
    check_grads(
        lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation),
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride, padding, dilation),
        [x, w, b],
        tol=5e-3,
    )


@given(
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_avg_pool2d(k: int, stride: int, padding: int, seed: int) -> None:
    if padding * 2 > k:
        padding = 0
    x = _rand((2, 3, 6, 7), seed)
    check_grads(
        lambda x: F.avg_pool2d(x, k, stride, padding),
        lambda x: torch.nn.functional.avg_pool2d(x, k, stride, padding),
        [x],
    )


@given(
    seed=st.integers(0, 2**16), keep=st.booleans(), dim=st.sampled_from([None, 0, 1, -1, (0, 2)])
)
def test_sum_mean(seed: int, keep: bool, dim: Any) -> None:
    x = _rand((3, 4, 2), seed)
    kw = {} if dim is None else {"dim": dim, "keepdim": keep}
    check_grads(lambda x: x.sum(**kw) * 2.0, lambda x: x.sum(**kw) * 2.0, [x])
    check_grads(lambda x: x.mean(**kw) * 2.0, lambda x: x.mean(**kw) * 2.0, [x])


@given(seed=st.integers(0, 2**16))
def test_shape_ops(seed: int) -> None:
    x = _rand((2, 3, 4), seed)

    def f(x: Any) -> Any:
        y = x.reshape(6, 4).t().permute(1, 0).transpose(0, 1)  # (4, 6)
        z = y[1:3, ::2].unsqueeze(0).expand(2, 2, 3)
        return (z * 1.5).flatten() + x.flatten()[:12]

    check_grads(f, f, [x])


@given(seed=st.integers(0, 2**16))
def test_cat_stack(seed: int) -> None:
    a, b = _rand((2, 3), seed), _rand((1, 3), seed + 1)
    check_grads(
        lambda a, b: smpc.cat([a, b], 0) * 1.5,
        lambda a, b: torch.cat([a, b], 0) * 1.5,
        [a, b],
    )
    check_grads(
        lambda a, b: smpc.stack([a, a * b], 1),
        lambda a, b: torch.stack([a, a * b], 1),
        [a, b[0].expand(2, 3).contiguous()],
    )


@given(seed=st.integers(0, 2**16), e=st.integers(1, 4))
def test_square_pow(seed: int, e: int) -> None:
    x = _rand((5,), seed)
    check_grads(lambda x: x.square() + x**e, lambda x: x.square() + x**e, [x])


def test_mse_loss() -> None:
    x, t = _rand((4, 3), 1), _rand((4, 3), 2)
    for red in ("mean", "sum", "none"):
        check_grads(
            lambda x, t, red=red: F.mse_loss(x, t, reduction=red),
            lambda x, t, red=red: torch.nn.functional.mse_loss(x, t, reduction=red),
            [x, t],
        )


# ---------------------------------------------------------------- non-linear (real or fake kernels)
@pytest.mark.usefixtures("nonlinear")
@given(seed=st.integers(0, 2**16))
def test_relu(seed: int) -> None:
    x = _rand((4, 5), seed) * 3
    x[x.abs() < 1e-2] = 0.5  # away from the kink
    check_grads(lambda x: F.relu(x) * x, lambda x: torch.relu(x) * x, [x])


@pytest.mark.usefixtures("nonlinear")
def test_relu_backward_uses_saved_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    from smpc.protocols import compare

    calls = []
    real = compare.relu
    monkeypatch.setattr(compare, "relu", lambda *a: calls.append(1) or real(*a))
    with smpc.Session(2) as sess:
        x = sess.share(torch.tensor([-1.0, 2.0]), requires_grad=True)
        F.relu(x).sum().backward()
        assert calls == [1]  # no second comparison in backward
        torch.testing.assert_close(x.grad.reveal(), torch.tensor([0.0, 1.0]))


@pytest.mark.usefixtures("nonlinear")
@given(seed=st.integers(0, 2**16))
def test_softmax_log_softmax(seed: int) -> None:
    x = _rand((3, 4), seed) * 2
    check_grads(lambda x: F.softmax(x, 1), lambda x: torch.softmax(x, 1), [x], tol=1e-2)
    check_grads(lambda x: F.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1), [x], tol=2e-2)


@pytest.mark.usefixtures("nonlinear")
@given(seed=st.integers(0, 2**16), red=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy(seed: int, red: str) -> None:
    x = _rand((5, 4), seed) * 2
    y = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(seed))
    check_grads(
        lambda x: F.cross_entropy(x, y, reduction=red),
        lambda x: torch.nn.functional.cross_entropy(x, y, reduction=red),
        [x],
        tol=2e-2,
    )


@pytest.mark.usefixtures("nonlinear")
def test_cross_entropy_shared_onehot_target_and_lazy_value() -> None:
    x = _rand((6, 3), 5) * 2
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    with smpc.Session(2) as sess:
        xs = sess.share(x, requires_grad=True)
        onehot = sess.share(torch.nn.functional.one_hot(y, 3).float())
        before = sess.stats.rounds if hasattr(sess.stats, "rounds") else None
        loss = F.cross_entropy(xs, onehot)
        loss.backward()
        assert not loss.computed  # the log was never paid for
        xt = x.clone().requires_grad_()
        ref = torch.nn.functional.cross_entropy(xt, y)
        ref.backward()
        torch.testing.assert_close(xs.grad.reveal(), xt.grad, atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(loss.reveal(), ref.detach(), atol=2e-2, rtol=2e-2)
        del before


@pytest.mark.usefixtures("nonlinear")
def test_max_pool2d() -> None:
    x = torch.randperm(2 * 2 * 6 * 6).float().reshape(2, 2, 6, 6) / 20  # distinct values
    for k, s in ((2, 2), (3, 3), (3, 2)):
        check_grads(
            lambda x, k=k, s=s: F.max_pool2d(x, k, s),
            lambda x, k=k, s=s: torch.nn.functional.max_pool2d(x, k, s),
            [x],
        )


@pytest.mark.usefixtures("nonlinear")
def test_unary_approximations() -> None:
    x = torch.rand(6) + 0.5
    for f, g in (
        (F.exp, torch.exp),
        (F.log, torch.log),
        (F.reciprocal, torch.reciprocal),
        (F.sqrt, torch.sqrt),
        (F.sigmoid, torch.sigmoid),
        (F.tanh, torch.tanh),
    ):
        check_grads(f, g, [x], tol=3e-2)


ULP = 2.0**-16


def _conv_tol(n: int, c_per_group: int, k: int, out_hw: int) -> float:
    """Fixed-point error bound for values in [-1, 1]: every product of two encoded
    operands errs by at most ``2 * 2^-17`` (half an ulp each), summed over the
    longest reduction (``C/groups * k * k`` for the output and the input gradient,
    ``N * Ho * Wo`` for the weight gradient), plus two truncations."""
    return (max(c_per_group * k * k, n * out_hw) + 2) * ULP


@settings(max_examples=6)
@given(
    groups=st.sampled_from([1, 2, 4]),
    depthwise=st.booleans(),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    n=st.sampled_from([2, 3]),
)
def test_grouped_conv2d(
    groups: int,
    depthwise: bool,
    stride: int,
    padding: int,
    dilation: int,
    k: int,
    seed: int,
    n: int,
) -> None:
    """Grouped (and depthwise: groups = channels) convolutions: value and every gradient."""
    c = 4
    g = c if depthwise else groups
    o = 2 * g if depthwise else 4
    x, w, b = _rand((2, c, 6, 5), seed), _rand((o, c // g, k, k), seed + 1), _rand((o,), seed + 2)
    out_hw = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, g).shape[-2:].numel()
    check_grads(
        lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, g),
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, g),
        [x, w, b],
        world_size=n,
        tol=_conv_tol(2, c // g, k, out_hw),
        seed=seed,
    )


@settings(max_examples=6)
@given(
    groups=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    k=st.integers(1, 3),
    length=st.integers(5, 9),
    seed=st.integers(0, 2**16),
)
def test_conv1d(
    groups: int, stride: int, padding: int, dilation: int, k: int, length: int, seed: int
) -> None:
    """conv1d as a height-1 conv2d: value and every gradient against torch."""
    x, w, b = (
        _rand((2, 3, length), seed),
        _rand((6, 3 // groups, k), seed + 1),
        _rand((6,), seed + 2),
    )
    out_len = torch.nn.functional.conv1d(x, w, None, stride, padding, dilation, groups).shape[-1]
    check_grads(
        lambda x, w, b: F.conv1d(x, w, b, stride, padding, dilation, groups),
        lambda x, w, b: torch.nn.functional.conv1d(x, w, b, stride, padding, dilation, groups),
        [x, w, b],
        tol=_conv_tol(2, 3 // groups, k, out_len),
        seed=seed,
    )


def test_conv1d_unbatched_and_bad_arguments() -> None:
    x, w = _rand((3, 8), 1), _rand((2, 3, 3), 2)
    with smpc.Session(2) as sess:
        got = F.conv1d(sess.share(x), sess.share(w), padding=(1,)).reveal()
        torch.testing.assert_close(
            got, torch.nn.functional.conv1d(x, w, padding=1), atol=TOL, rtol=0
        )
        with pytest.raises(smpc.ShapeError, match="conv1d"):
            F.conv1d(sess.share(x), sess.share(w.unsqueeze(-1)))
        with pytest.raises(ValueError, match="`stride`"):
            F.conv1d(sess.share(x), sess.share(w), stride=(1, 2))
        with pytest.raises(smpc.ShapeError, match="divisible by groups=2"):
            F.conv2d(
                sess.share(_rand((1, 4, 5, 5), 3)), sess.share(_rand((3, 2, 3, 3), 4)), groups=2
            )
        with pytest.raises(ValueError, match="`groups` must be an int >= 1"):
            F.conv2d(
                sess.share(_rand((1, 4, 5, 5), 3)), sess.share(_rand((4, 4, 3, 3), 4)), groups=0
            )


@given(
    slope=st.sampled_from([0.01, 0.2, -0.5, 1.5]),
    seed=st.integers(0, 2**16),
    n=st.sampled_from([2, 3]),
)
def test_leaky_relu(slope: float, seed: int, n: int) -> None:
    """Values and input gradients; the tolerance is a few ulps (two truncations each)."""
    x = _rand((3, 5), seed, scale=4.0)
    x[x.abs() < 1e-3] = 0.5  # away from the kink, where the gradient jumps
    check_grads(
        lambda x: F.leaky_relu(x, slope),
        lambda x: torch.nn.functional.leaky_relu(x, slope),
        [x],
        world_size=n,
        tol=8 * ULP * 4,
        seed=seed,
    )


@given(
    size=st.sampled_from([1, 2, (2, 3), (None, 1), (3, None), (6, 6)]),
    seed=st.integers(0, 2**16),
    batched=st.booleans(),
)
def test_adaptive_avg_pool2d(size: Any, seed: int, batched: bool) -> None:
    """Output sizes that divide the input: an average pooling, against torch."""
    x = _rand((2, 3, 6, 6) if batched else (3, 6, 6), seed)
    check_grads(
        lambda x: F.adaptive_avg_pool2d(x, size),
        lambda x: torch.nn.functional.adaptive_avg_pool2d(x, size),
        [x],
        tol=4 * ULP,
        seed=seed,
    )


def test_adaptive_avg_pool2d_sizes_that_do_not_divide_are_refused() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(_rand((1, 2, 6, 5), 1))
        with pytest.raises(smpc.ShapeError, match=r"output size \(4, 5\) must divide .* \(6, 5\)"):
            F.adaptive_avg_pool2d(x, (4, None))
        with pytest.raises(ValueError, match="positive ints or None"):
            F.adaptive_avg_pool2d(x, 0)
        with pytest.raises(smpc.ShapeError, match="expected"):
            F.adaptive_avg_pool2d(sess.share(torch.ones(6, 5)), 1)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), lo=st.sampled_from([-4, 0, 4]))
def test_rsqrt_wide(seed: int, lo: int) -> None:
    """Value and gradient ``-g / (2 x^1.5)``: errors of 5e-4 relative (r, and r^3 in
    backward three times that) plus a few ulps, relative to the largest value."""
    g = torch.Generator().manual_seed(seed)
    x = 2.0 ** (lo + 2 * torch.rand(3, 4, generator=g))
    scale = float(x.min()) ** -1.5
    check_grads(
        F.rsqrt_wide,
        torch.rsqrt,
        [x],
        tol=2e-3 * scale + 8 * ULP,
        seed=seed,
    )


@given(seed=st.integers(0, 2**16), n=st.sampled_from([2, 3]))
def test_getitem_with_repeated_indices_accumulates_like_torch(seed: int, n: int) -> None:
    """``x[idx]`` with a repeated index: each read adds its gradient (shared and public ``g``)."""
    idx = (torch.tensor([0, 2, 0, 0]), slice(1, None))
    x = _rand((3, 4), seed)
    check_grads(lambda x: x[idx], lambda x: x[idx], [x], world_size=n, seed=seed)
    with smpc.Session(n) as sess:
        sx = sess.share(x, requires_grad=True)
        sx[idx].sum().backward()  # the implicit public 1 reaches the indexing
        t = x.clone().requires_grad_()
        t[idx].sum().backward()
        assert sx.grad is not None and t.grad is not None
        torch.testing.assert_close(sx.grad.reveal(), t.grad)


@pytest.mark.usefixtures("nonlinear")
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.sampled_from([2, 3]),
    cfg=st.sampled_from([(2, 2, 1), (3, 2, 1), (3, 1, 1), ((2, 3), (2, 1), (1, 1)), (3, 3, 0)]),
    batch=st.booleans(),
)
def test_max_pool2d_with_padding(seed: int, n: int, cfg: tuple, batch: bool) -> None:
    """Training through padded (and unbatched) max pooling matches torch.autograd."""
    k, s, p = cfg
    shape = (2, 2, 5, 6) if batch else (2, 5, 6)
    g = torch.Generator().manual_seed(seed)
    x = torch.randperm(math.prod(shape), generator=g).float().reshape(shape) / 20  # no ties
    check_grads(
        lambda x: F.max_pool2d(x, k, s, p),
        lambda x: torch.nn.functional.max_pool2d(x, k, s, p),
        [x],
        world_size=n,
        seed=seed,
    )


def test_max_pool2d_training_costs_the_one_hot_kernel() -> None:
    """Forward with grad costs what ``ops.max_pool2d_with_onehot`` costs (one comparison + 1)."""
    x = torch.randperm(2 * 8 * 8).float().reshape(1, 2, 8, 8) / 10
    with smpc.Session(2, seed=0) as sess:
        plain = sess.share(x)
        before = sess.stats.snapshot()
        out, _ = smpc.ops.max_pool2d_with_onehot(plain, 2)
        kernel = sess.stats - before
        sx = sess.share(x, requires_grad=True)
        before = sess.stats.snapshot()
        out_grad = F.max_pool2d(sx, 2)
        train = sess.stats - before
        assert (train.rounds, train.bytes) == (kernel.rounds, kernel.bytes)
        # 2x2 windows: all-pairs comparison, then one table lookup with the values
        from smpc.protocols import compare

        assert train.rounds == compare.cost(2)[0] + 1
        assert torch.equal(out_grad.reveal(), out.reveal())


def pool_relu_index_program(sess: smpc.Session, x: torch.Tensor) -> dict[str, Any]:
    """Gradients through padded max pooling, ReLU and a repeated index (runtime-agnostic)."""
    sx = sess.share(x if sess.rank in (None, 0) else None, src=0, requires_grad=True)
    before = sess.stats.snapshot()
    out = F.relu(F.max_pool2d(sx, 2, 2, 1) - 0.51)[:, :, torch.tensor([0, 0, 1])]
    out.sum().backward()
    cost = sess.stats - before
    assert sx.grad is not None
    return {"out": out.reveal(), "grad": sx.grad.reveal(), "rounds": cost.rounds}


@pytest.mark.timeout(90)
def test_pool_relu_index_gradients_in_both_runtimes() -> None:
    """The ops kernels behind these backward passes run unchanged on one share per process."""
    from smpc.launch import run

    x = torch.randperm(2 * 5 * 6, generator=torch.Generator().manual_seed(3)).float()
    x = x.reshape(1, 2, 5, 6) / 30
    results = run(functools.partial(pool_relu_index_program, x=x), parties=2, timeout=60)
    with smpc.Session(2) as sess:
        sim = pool_relu_index_program(sess, x)
    t = x.clone().requires_grad_()
    pooled = torch.nn.functional.max_pool2d(t, 2, 2, 1)
    ref = torch.relu(pooled - 0.51)[:, :, torch.tensor([0, 0, 1])]  # no value at the kink
    ref.sum().backward()
    for res in [*results, sim]:
        torch.testing.assert_close(res["out"], ref.detach(), atol=1e-4, rtol=0)
        torch.testing.assert_close(res["grad"], t.grad, atol=1e-4, rtol=0)
        assert res["rounds"] == sim["rounds"]

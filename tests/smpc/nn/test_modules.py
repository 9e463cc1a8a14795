"""smpc.nn layers: inference with kept weight masks."""

from __future__ import annotations

import torch

import smpc
import smpc.nn as snn
import smpc.optim


def test_linear_inference_keeps_the_weight_mask_until_the_weights_change() -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(torch.nn.Sequential(plain), sess)
        xs = sess.share(x)
        enc.eval()
        costs = []
        with smpc.no_grad():
            for _ in range(2):
                before = sess.stats.snapshot()
                out = enc(xs).reveal()
                costs.append((sess.stats - before).bytes_per_party[0])
                torch.testing.assert_close(out, plain(x).detach(), atol=1e-3, rtol=0)
        assert costs[0] - costs[1] == 8 * 3 * 8  # the weight is opened once
        # A training step changes the weights' shares: the next inference masks them afresh.
        enc.train()
        opt = smpc.optim.SGD(enc.parameters(), lr=0.5)
        loss = smpc.functional.mse_loss(enc(xs), sess.share(torch.zeros(5, 3)))
        loss.backward()
        opt.step()
        new = enc.decrypt()
        enc.eval()
        with smpc.no_grad():
            before = sess.stats.snapshot()
            out = enc(xs).reveal()
            assert (sess.stats - before).bytes_per_party[0] == costs[0]
        torch.testing.assert_close(out, new(x).detach(), atol=1e-3, rtol=0)


def test_kept_operand_bad_input_is_a_clear_error() -> None:
    import pytest

    from smpc import ops
    from smpc.errors import SessionMismatchError, ShapeError

    with smpc.Session(2) as a, smpc.Session(2) as b:
        w = a.share(torch.randn(4, 3))
        with pytest.raises(ShapeError, match="must be 2-D"):
            ops.keep_operand(a.share(torch.randn(2, 4, 3)))
        kept = ops.keep_operand(w)
        with pytest.raises(ShapeError, match=r"expected `x` of shape \(m, 4\)"):
            ops.matmul_kept(a.share(torch.randn(2, 5)), kept)
        with pytest.raises(SessionMismatchError, match="different sessions"):
            ops.matmul_kept(b.share(torch.randn(2, 4)), kept)
        with pytest.raises(TypeError, match="keep_operand"):
            ops.matmul_kept(a.share(torch.randn(2, 4)), w)  # type: ignore[arg-type]
    with smpc.Session(2, truncation="local") as c:
        kept_c = ops.keep_operand(c.share(torch.randn(4, 3)))
        with pytest.raises(ValueError, match="probabilistic truncation"):
            ops.matmul_kept(c.share(torch.randn(2, 4)), kept_c)


# ----------------------------------------------------------------- layers from torch
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ULP = 2.0**-16


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1) * scale


def _check_layer(
    layer: torch.nn.Module, x: torch.Tensor, kind: type, tol: float, world_size: int = 2
) -> None:
    """``smpc.nn.encrypt(layer)``: its type, its output, the input's and every parameter's
    gradient against torch.autograd, and the decrypted layer."""
    with smpc.Session(world_size) as sess:
        enc = snn.encrypt(layer, sess)
        assert type(enc) is kind
        xs = sess.share(x, requires_grad=True)
        out = enc(xs)
        g = _rand(tuple(out.shape), 7)
        out.backward(sess.share(g))
        xt = x.clone().requires_grad_()
        ref = layer(xt)
        ref.backward(g)
        torch.testing.assert_close(out.reveal(), ref.detach(), atol=tol, rtol=0)
        assert xs.grad is not None and xt.grad is not None
        torch.testing.assert_close(xs.grad.reveal(), xt.grad, atol=tol, rtol=0)
        want = dict(layer.named_parameters())
        got = dict(enc.named_parameters())
        assert got.keys() == want.keys()
        for name, p in got.items():
            assert p.grad is not None, name
            wg = want[name].grad
            assert wg is not None
            torch.testing.assert_close(p.grad.reveal(), wg, atol=tol, rtol=0, msg=name)
        back = enc.decrypt()
        assert type(back) is type(layer)
        torch.testing.assert_close(back(x), layer(x), atol=ULP * 64, rtol=0)


@settings(max_examples=6)
@given(
    groups=st.sampled_from([1, 2, 6]),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    seed=st.integers(0, 2**16),
    n=st.sampled_from([2, 3]),
)
def test_grouped_conv2d_layer(
    groups: int, k: int, stride: int, padding: int, seed: int, n: int
) -> None:
    torch.manual_seed(seed)
    layer = torch.nn.Conv2d(6, 6, k, stride=stride, padding=padding, groups=groups)
    x = _rand((2, 6, 5, 5), seed)
    # longest reduction: the weight gradient's N * Ho * Wo terms of two encoded operands
    _check_layer(layer, x, snn.Conv2d, tol=(2 * 25 + 2) * ULP, world_size=n)


@settings(max_examples=4)
@given(
    groups=st.sampled_from([1, 2]),
    k=st.integers(1, 3),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_conv1d_layer(groups: int, k: int, dilation: int, seed: int) -> None:
    torch.manual_seed(seed)
    layer = torch.nn.Conv1d(4, 6, k, padding=1, dilation=dilation, groups=groups)
    _check_layer(layer, _rand((3, 4, 8), seed), snn.Conv1d, tol=(3 * 8 + 2) * ULP)


@settings(max_examples=6)
@given(slope=st.sampled_from([0.01, 0.1, 0.3]), seed=st.integers(0, 2**16))
def test_leaky_relu_layer(slope: float, seed: int) -> None:
    layer = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LeakyReLU(slope))
    torch.manual_seed(seed)
    layer[0].reset_parameters()
    x = _rand((3, 4), seed, 2.0)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(layer, sess)
        assert isinstance(enc[1], snn.LeakyReLU) and enc[1].negative_slope == slope
    _check_layer(layer, x, snn.Sequential, tol=64 * ULP)


@settings(max_examples=6)
@given(
    kind=st.sampled_from(["sigmoid", "tanh", "softmax", "log_softmax"]),
    dim=st.sampled_from([0, 1, -1]),
    seed=st.integers(0, 2**16),
)
def test_activation_layers(kind: str, dim: int, seed: int) -> None:
    """Module forms of the approximations: values and input gradients within their
    documented accuracy (docs/approximations.md) on inputs in [-4, 4]."""
    layer = {
        "sigmoid": torch.nn.Sigmoid(),
        "tanh": torch.nn.Tanh(),
        "softmax": torch.nn.Softmax(dim=dim),
        "log_softmax": torch.nn.LogSoftmax(dim=dim),
    }[kind]
    kinds = {
        "sigmoid": snn.Sigmoid,
        "tanh": snn.Tanh,
        "softmax": snn.Softmax,
        "log_softmax": snn.LogSoftmax,
    }
    _check_layer(layer, _rand((3, 4), seed, 4.0), kinds[kind], tol=1e-2)


def test_softmax_layer_default_dim_follows_torch() -> None:
    x = _rand((3, 4), 1)
    with smpc.Session(2) as sess:
        for layer in (torch.nn.Softmax(), torch.nn.LogSoftmax()):
            with pytest.warns(UserWarning, match="dim"):
                want = layer(x)
            got = snn.encrypt(layer, sess)(sess.share(x)).reveal()
            torch.testing.assert_close(got, want, atol=1e-2, rtol=0)


@settings(max_examples=6)
@given(size=st.sampled_from([1, 2, 4, (2, 1), (None, 2)]), seed=st.integers(0, 2**16))
def test_adaptive_avg_pool2d_layer(size: object, seed: int) -> None:
    layer = torch.nn.AdaptiveAvgPool2d(size)  # type: ignore[arg-type]
    _check_layer(layer, _rand((2, 3, 4, 8), seed), snn.AdaptiveAvgPool2d, tol=4 * ULP)


def test_adaptive_avg_pool2d_layer_refuses_sizes_that_do_not_divide() -> None:
    with smpc.Session(2) as sess:
        enc = snn.encrypt(torch.nn.AdaptiveAvgPool2d(3), sess)
        with pytest.raises(smpc.ShapeError, match=r"must divide the input size \(4, 8\)"):
            enc(sess.share(torch.ones(1, 2, 4, 8)))


def test_new_layers_in_a_traced_model_and_an_unsupported_padding() -> None:
    """The functional forms in a custom forward (torch.fx), and a clear refusal."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 4, 3, groups=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.nn.functional.leaky_relu(self.conv(x), 0.2)
            return torch.nn.functional.adaptive_avg_pool2d(h, 2)

    torch.manual_seed(0)
    net, x = Net(), _rand((2, 2, 4, 4), 3)
    with smpc.Session(2) as sess:
        got = snn.encrypt(net, sess)(sess.share(x)).reveal()
        torch.testing.assert_close(got, net(x).detach(), atol=32 * ULP, rtol=0)
        with pytest.raises(smpc.UnsupportedModuleError, match="padding"):
            snn.encrypt(torch.nn.Sequential(torch.nn.Conv1d(2, 2, 3, padding="same")), sess)
        with pytest.raises(smpc.UnsupportedModuleError, match="padding"):
            snn.encrypt(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding_mode="reflect")), sess)


# ----------------------------------------------------------------- batch norm
def _bn_tol(x: torch.Tensor, dims: list[int], ref: torch.Tensor) -> float:
    """Derived bound: 1/sqrt(var + eps) errs by rsqrt's 2.5e-4 plus the variance's
    own two truncations (2 ulp / var, for the smallest channel variance); each
    output or gradient is a sum of up to three terms carrying that relative error
    (times 4 for margin). Plus the truncations: a few ulps times the largest
    ``inv = 1/std``, and in backward the variance path, where the sum of ``g xc``
    (one ulp per element) meets ``d inv / d var = -inv^3 / 2`` and ``d var / d x =
    2 xc / n``: about ``inv^2 max|xhat|`` ulps (times 4)."""
    var = x.var(dim=dims, unbiased=False)
    rel = 2.5e-4 + 2 * ULP / float(var.min())
    inv = float((var + 1e-5).rsqrt().max())
    xhat = float(((x - x.mean(dim=dims, keepdim=True)) * inv).abs().max())
    return 4 * rel * float(ref.detach().abs().max()) + 8 * ULP * inv + 4 * ULP * inv**2 * xhat


@settings(max_examples=6)
@given(
    kind=st.sampled_from(["1d", "1d-seq", "2d"]),
    affine=st.booleans(),
    momentum=st.sampled_from([0.1, None]),
    seed=st.integers(0, 2**16),
    n=st.sampled_from([2, 3]),
)
def test_batchnorm_trains_like_torch(
    kind: str, affine: bool, momentum: float | None, seed: int, n: int
) -> None:
    """Train mode: batch statistics on shares, against torch: the output, the input's
    and gamma/beta's gradients, the running statistics after two batches, and eval
    mode afterwards (with and without autograd)."""
    torch.manual_seed(seed)
    shape = {"1d": (6, 3), "1d-seq": (4, 3, 5), "2d": (3, 3, 4, 4)}[kind]
    bn = (torch.nn.BatchNorm2d if kind == "2d" else torch.nn.BatchNorm1d)(
        3, affine=affine, momentum=momentum
    )
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    dims = [0, *range(2, len(shape))]
    spread = torch.tensor([0.2, 1.0, 4.0]).reshape(1, 3, *([1] * (len(shape) - 2)))
    xs = [_rand(shape, seed + i) * spread + 0.5 for i in range(2)]
    with smpc.Session(n) as sess:
        enc = snn.encrypt(bn, sess)
        assert type(enc) is snn.BatchNorm and enc.training
        assert [k for k, _ in enc.named_parameters()] == (["weight", "bias"] if affine else [])
        for step, x in enumerate(xs):
            xsh = sess.share(x, requires_grad=True)
            out = enc(xsh)
            g = _rand(tuple(out.shape), seed + 10 + step)
            out.backward(sess.share(g))
            xt = x.clone().requires_grad_()
            for p in bn.parameters():
                p.grad = None
            ref = bn(xt)
            ref.backward(g)
            tol = _bn_tol(x, dims, ref)
            torch.testing.assert_close(out.reveal(), ref.detach(), atol=tol, rtol=0)
            assert xsh.grad is not None and xt.grad is not None
            torch.testing.assert_close(
                xsh.grad.reveal(), xt.grad, atol=_bn_tol(x, dims, xt.grad), rtol=0
            )
            for name, p in enc.named_parameters():
                want = dict(bn.named_parameters())[name].grad
                assert p.grad is not None and want is not None
                torch.testing.assert_close(
                    p.grad.reveal(), want, atol=_bn_tol(x, dims, want), rtol=0, msg=name
                )
                p.grad = None
        back = enc.decrypt()
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(
                getattr(back, name), getattr(bn, name), atol=1e-3, rtol=1e-3, msg=name
            )
        assert int(back.num_batches_tracked) == 2
        enc.eval()
        bn.eval()
        x = xs[0]
        want = bn(x).detach()
        # y = x scale + shift, scale = gamma / sqrt(rv + eps), shift = beta - rm scale:
        # scale's relative error (as in training, for the running variance) acts on
        # both terms, which may nearly cancel.
        view = (1, 3, *([1] * (len(shape) - 2)))
        scale = (bn.running_var + bn.eps).rsqrt() * (bn.weight.detach() if affine else 1.0)
        terms = (x.abs() + bn.running_mean.abs().reshape(view)) * scale.abs().reshape(view)
        rel = 2.5e-4 + 2 * ULP / float(bn.running_var.min())
        tol = 4 * rel * float(terms.max()) + 8 * ULP * float(scale.abs().max())
        with smpc.no_grad():
            torch.testing.assert_close(enc(sess.share(x)).reveal(), want, atol=tol, rtol=0)
        torch.testing.assert_close(enc(sess.share(x)).reveal(), want, atol=tol, rtol=0)


def test_batchnorm_bad_input() -> None:
    with smpc.Session(2) as sess:
        enc = snn.encrypt(torch.nn.BatchNorm1d(3), sess)
        with pytest.raises(smpc.ShapeError, match="more than 1 value per channel"):
            enc(sess.share(torch.ones(1, 3)))
        with pytest.raises(smpc.ShapeError, match=r"expected input \(N, 3"):
            enc(sess.share(torch.ones(2, 4)))

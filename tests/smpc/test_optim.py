"""smpc.optim.SGD against torch.optim.SGD."""

from __future__ import annotations

import pytest
import torch

import smpc
import smpc.optim
from smpc.autograd.tape import WideGrad


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
@pytest.mark.parametrize("world_size", [2, 3])
def test_sgd_matches_torch(momentum: float, weight_decay: float, world_size: int) -> None:
    torch.manual_seed(0)
    w0, b0 = torch.randn(3, 4), torch.randn(3)
    grads = [(torch.randn(3, 4), torch.randn(3)) for _ in range(5)]
    tw, tb = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    topt = torch.optim.SGD([tw, tb], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    with smpc.Session(world_size) as sess:
        w = sess.share(w0, requires_grad=True)
        b = sess.share(b0, requires_grad=True)
        opt = smpc.optim.SGD([w, b], lr=0.1, momentum=momentum, weight_decay=weight_decay)
        for gw, gb in grads:
            tw.grad, tb.grad = gw.clone(), gb.clone()
            topt.step()
            w.grad, b.grad = sess.share(gw), sess.share(gb)
            opt.step()
        torch.testing.assert_close(w.reveal(), tw.detach(), atol=5e-4, rtol=0)
        torch.testing.assert_close(b.reveal(), tb.detach(), atol=5e-4, rtol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_with_a_learning_rate_schedule_matches_torch(weight_decay: float) -> None:
    """Changing ``lr`` between steps follows torch (momentum buffer without the lr)."""
    torch.manual_seed(1)
    w0 = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(8)]
    lrs = [0.2 * (1 - t / 8) for t in range(8)]
    lrs[3] = lrs[5] = lrs[6] = 0.0  # lr 0: no step, the momentum buffer still moves
    tw = w0.clone().requires_grad_()
    topt = torch.optim.SGD([tw], lr=lrs[0], momentum=0.9, weight_decay=weight_decay)
    with smpc.Session(2) as sess:
        w = sess.share(w0, requires_grad=True)
        opt = smpc.optim.SGD([w], lr=lrs[0], momentum=0.9, weight_decay=weight_decay)
        for g, lr in zip(grads, lrs, strict=True):
            topt.param_groups[0]["lr"] = lr
            opt.lr = lr
            tw.grad = g.clone()
            topt.step()
            w.grad = sess.share(g)
            opt.step()
        torch.testing.assert_close(w.reveal(), tw.detach(), atol=5e-4, rtol=0)


def test_step_is_one_round_and_zero_grad() -> None:
    with smpc.Session(2) as sess:
        ps = [sess.share(torch.ones(4), requires_grad=True) for _ in range(3)]
        opt = smpc.optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=0.1)
        for p in ps:
            p.grad = sess.share(torch.ones(4))
        before = sess.stats.rounds
        opt.step()
        assert sess.stats.rounds - before == 1  # every parameter in one truncation
        opt.zero_grad()
        assert all(p.grad is None for p in ps)
        opt.step()  # no gradients: nothing happens


def test_bad_arguments() -> None:
    with smpc.Session(2) as sess:
        p = sess.share(torch.ones(2), requires_grad=True)
        with pytest.raises(ValueError, match="lr"):
            smpc.optim.SGD([p], lr=0)
        with pytest.raises(ValueError, match="momentum"):
            smpc.optim.SGD([p], lr=0.1, momentum=1.5)
        with pytest.raises(ValueError, match="empty"):
            smpc.optim.SGD([], lr=0.1)
        with pytest.raises(ValueError, match="require grad"):
            smpc.optim.SGD([sess.share(torch.ones(2))], lr=0.1)
        with pytest.raises(TypeError, match="SharedTensor"):
            smpc.optim.SGD([torch.ones(2)], lr=0.1)  # type: ignore[list-item]


@pytest.mark.parametrize("frac_bits", [16, 20])
@pytest.mark.parametrize("world_size", [2, 3])
def test_sgd_on_linear_layers_matches_torch_with_gradients_kept_wide(
    frac_bits: int, world_size: int
) -> None:
    """Training two linear layers: the weights' gradients reach the optimizer before
    truncation (f = 16: truncated with the update; f = 20: too little range left at
    scale 2^3f, so autograd truncates them) and the weights follow torch's SGD."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    data = [(torch.randn(8, 5), torch.randn(8, 3)) for _ in range(4)]
    ref = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    ref.load_state_dict(model.state_dict())
    topt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    with smpc.Session(world_size, frac_bits=frac_bits) as sess:
        enc = smpc.nn.encrypt(model, sess)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        for x, y in data:
            topt.zero_grad()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            topt.step()
            opt.zero_grad()
            smpc.nn.MSELoss()(enc(sess.share(x)), sess.share(y)).backward()
            weights = [p for p in enc.parameters() if p.dim() == 2]
            assert all((p.wide_grad is not None) == (frac_bits == 16) for p in weights)
            before = sess.stats.snapshot()
            opt.step()
            used = sess.stats - before
            assert (used.rounds, used.dealer_requests) == (1, 1)  # weights and biases together
        got = enc.decrypt().state_dict()
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=2e-3, rtol=0)


def test_sgd_truncates_wide_gradients_first_when_the_range_is_short() -> None:
    """A wide gradient under f = 20 (only set by hand: autograd does not make them
    there) is truncated before the update: one extra round for all of them."""
    with smpc.Session(2, frac_bits=20) as sess:
        ps = [sess.share(torch.zeros(3), requires_grad=True) for _ in range(2)]
        g = torch.tensor([0.5, -1.0, 2.0])
        for p in ps:
            p.add_wide_grad(WideGrad(sess.share(g).share * (1 << 20)))
        opt = smpc.optim.SGD(ps, lr=0.5)
        before = sess.stats.rounds
        opt.step()
        assert sess.stats.rounds - before == 2
        for p in ps:
            torch.testing.assert_close(p.reveal(), -0.5 * g, atol=1e-4, rtol=0)


# ----------------------------------------------------------------- Adam
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ULP = 2.0**-16


def _adam_tol(lr: float, steps: int) -> float:
    """Per step: 1/sqrt(v_hat) within 5e-4 and the moments' 12-bit coefficients
    (2^-12), so about 1e-3 of the step (|m_hat / sqrt(v_hat)| <= ~3), plus a few
    truncations of 2^-16 (the update's own and the lr product's); summed over steps."""
    return steps * (3e-3 * lr + 4 * ULP)


def _signed_magnitudes(shape: tuple[int, ...], lo: float, hi: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = 10 ** (torch.rand(shape, generator=g) * (hi - lo) + lo)
    return torch.where(torch.rand(shape, generator=g) < 0.5, -mag, mag)


@settings(max_examples=8)
@given(
    lr=st.sampled_from([1e-3, 1e-2, 0.1]),
    betas=st.sampled_from([(0.9, 0.999), (0.8, 0.99), (0.0, 0.9), (0.5, 0.0)]),
    weight_decay=st.sampled_from([0.0, 0.01]),
    eps=st.sampled_from([1e-8, 1e-3]),
    world_size=st.sampled_from([2, 3]),
    seed=st.integers(0, 2**16),
)
def test_adam_matches_torch(
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    eps: float,
    world_size: int,
    seed: int,
) -> None:
    """Four steps on two parameters, the second without a gradient at step 2 (its own
    step count, as torch); gradients of sizes 0.05 to 10 (with weight decay, never
    near zero), values within the derived tolerance of torch.optim.Adam."""
    torch.manual_seed(seed)
    w0, b0 = torch.rand(3, 4) * 2 - 1, torch.rand(3) * 2 - 1
    grads = [
        (_signed_magnitudes((3, 4), -1.3, 1, seed + t), _signed_magnitudes((3,), -1.3, 1, ~t))
        for t in range(4)
    ]
    tw, tb = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    kw = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    topt = torch.optim.Adam([tw, tb], **kw)  # type: ignore[arg-type]
    with smpc.Session(world_size) as sess:
        w = sess.share(w0, requires_grad=True)
        b = sess.share(b0, requires_grad=True)
        opt = smpc.optim.Adam([w, b], **kw)  # type: ignore[arg-type]
        for t, (gw, gb) in enumerate(grads):
            topt.zero_grad()
            opt.zero_grad()
            tw.grad, w.grad = gw.clone(), sess.share(gw)
            if t != 2:
                tb.grad, b.grad = gb.clone(), sess.share(gb)
            topt.step()
            opt.step()
        torch.testing.assert_close(w.reveal(), tw.detach(), atol=_adam_tol(lr, 4), rtol=0)
        torch.testing.assert_close(b.reveal(), tb.detach(), atol=_adam_tol(lr, 3), rtol=0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_adam_first_step_over_the_documented_gradient_range(world_size: int) -> None:
    """At t = 1 torch steps by lr * g / (|g| + eps): every scaled copy of v_hat is
    exercised by gradients from 1e-5 to 30; below one unit (2^-16) a gradient is
    zero here, and no step is taken (torch would step by up to lr)."""
    mags = torch.tensor([1e-5, 3e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0])
    g = torch.cat([mags, -mags])
    lr = 0.01
    tp = torch.zeros_like(g, requires_grad=True)
    topt = torch.optim.Adam([tp], lr=lr)
    tp.grad = g.clone()
    topt.step()
    with smpc.Session(world_size) as sess:
        p = sess.share(torch.zeros_like(g), requires_grad=True)
        opt = smpc.optim.Adam([p], lr=lr)
        p.grad = sess.share(g)
        opt.step()
        torch.testing.assert_close(p.reveal(), tp.detach(), atol=_adam_tol(lr, 1), rtol=0)
        # below half a unit the shared gradient is 0: no step at all
        q = sess.share(torch.ones(4), requires_grad=True)
        opt = smpc.optim.Adam([q], lr=lr)
        q.grad = sess.share(torch.full((4,), 2.0**-18))
        opt.step()
        assert bool(((q.reveal() - 1).abs() <= 4 * ULP).all())


@pytest.mark.parametrize("world_size", [2, 3])
def test_adam_trains_linear_layers_like_torch(world_size: int) -> None:
    """Linear weights' gradients reach Adam before their truncation (WideGrad) and
    the model follows torch's Adam over four steps."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    ref.load_state_dict(model.state_dict())
    data = [(torch.randn(8, 5), torch.randn(8, 3)) for _ in range(4)]
    topt = torch.optim.Adam(ref.parameters(), lr=0.01)
    with smpc.Session(world_size) as sess:
        enc = smpc.nn.encrypt(model, sess)
        opt = smpc.optim.Adam(enc.parameters(), lr=0.01)
        for x, y in data:
            topt.zero_grad()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            topt.step()
            opt.zero_grad()
            smpc.nn.MSELoss()(enc(sess.share(x)), sess.share(y)).backward()
            assert any(p.wide_grad is not None for p in enc.parameters())
            opt.step()
        got = enc.decrypt().state_dict()
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=_adam_tol(0.01, 4), rtol=0, msg=k)


def test_adam_step_batches_every_parameter() -> None:
    """The rounds of a step do not depend on the number of parameters."""
    rounds = []
    for count in (1, 3):
        with smpc.Session(2) as sess:
            ps = [sess.share(torch.ones(4), requires_grad=True) for _ in range(count)]
            opt = smpc.optim.Adam(ps, lr=0.01, weight_decay=0.1)
            for p in ps:
                p.grad = sess.share(torch.full((4,), 0.5))
            before = sess.stats.rounds
            opt.step()
            rounds.append(sess.stats.rounds - before)
            opt.zero_grad()
            assert all(p.grad is None for p in ps)
            opt.step()  # no gradients: nothing happens
    assert rounds[0] == rounds[1]


def test_adam_bad_arguments() -> None:
    with smpc.Session(2) as sess:
        p = sess.share(torch.ones(2), requires_grad=True)
        with pytest.raises(ValueError, match="`lr`"):
            smpc.optim.Adam([p], lr=0)
        with pytest.raises(ValueError, match="`lr`"):
            smpc.optim.Adam([p], lr=float("nan"))
        with pytest.raises(ValueError, match="`betas`"):
            smpc.optim.Adam([p], betas=(0.9, 1.0))
        with pytest.raises(ValueError, match="`betas`"):
            smpc.optim.Adam([p], betas=(0.9,))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"`eps` must be in \[0, 0.0078\]"):
            smpc.optim.Adam([p], eps=0.1)
        with pytest.raises(ValueError, match="`weight_decay`"):
            smpc.optim.Adam([p], weight_decay=-1.0)
        opt = smpc.optim.Adam([p])
        opt.lr = -1.0
        p.grad = sess.share(torch.ones(2))
        with pytest.raises(ValueError, match="`lr`"):
            opt.step()
    with (
        smpc.Session(2, frac_bits=20) as sess,
        pytest.raises(ValueError, match="frac_bits <= 16"),
    ):
        smpc.optim.Adam([sess.share(torch.ones(2), requires_grad=True)])


def test_only_optimizers_that_fold_wide_gradients_ask_for_them() -> None:
    """SGD and Adam mark their parameters ``keep_wide_grad``; a subclass of
    Optimizer that does not declare ``folds_wide_grads`` gets ready ``.grad``s."""

    class PlainSGD(smpc.optim.Optimizer):
        def step(self) -> None:
            self.stepped = []
            for p in self.params:
                assert p.grad is not None
                self.stepped.append(p - p.grad * 0.5)

    torch.manual_seed(6)
    w0, x, y = torch.randn(2, 3), torch.randn(4, 3), torch.randn(4, 2)
    tw = w0.clone().requires_grad_()
    torch.nn.functional.mse_loss(torch.nn.functional.linear(x, tw), y).backward()
    assert tw.grad is not None
    with smpc.Session(2) as sess:
        ps = [sess.share(w0, requires_grad=True) for _ in range(3)]
        smpc.optim.SGD([ps[0]], lr=0.5)
        smpc.optim.Adam([ps[1]])
        opt = PlainSGD([ps[2]])
        assert [p.keep_wide_grad for p in ps] == [True, True, False]
        assert not PlainSGD.folds_wide_grads and smpc.optim.SGD.folds_wide_grads
        xs, ys = sess.share(x), sess.share(y)
        smpc.functional.mse_loss(smpc.functional.linear(xs, ps[2]), ys).backward()
        assert ps[2].wide_grad is None
        opt.step()
        got = opt.stepped[0].reveal()
    torch.testing.assert_close(got, (w0 - 0.5 * tw.grad).detach(), atol=2e-3, rtol=0)

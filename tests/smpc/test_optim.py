"""smpc.optim.SGD against torch.optim.SGD."""

from __future__ import annotations

import pytest
import torch

import smpc
import smpc.optim


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
            assert all((p._wide_grad is not None) == (frac_bits == 16) for p in weights)
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
            p._add_wide_grad(sess.share(g).share * (1 << 20))
        opt = smpc.optim.SGD(ps, lr=0.5)
        before = sess.stats.rounds
        opt.step()
        assert sess.stats.rounds - before == 2
        for p in ps:
            torch.testing.assert_close(p.reveal(), -0.5 * g, atol=1e-4, rtol=0)

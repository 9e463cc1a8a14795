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

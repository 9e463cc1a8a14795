"""The tape: recording rules, grad mode, accumulation, freeing, errors."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
from smpc import functional as F
from smpc.autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from smpc.autograd.tape import WideGrad, materialize_grads


def test_no_tape_without_requires_grad() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.ones(3))
        y = (x * x + 1).sum()
        assert y.grad_fn is None and not y.requires_grad


def test_records_and_names_nodes() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.ones(3), requires_grad=True)
        y = x * 2.0
        assert y.requires_grad and y.grad_fn is not None
        assert y.grad_fn.name == "MulBackward"
        assert not y.is_leaf and x.is_leaf


def test_no_grad_and_enable_grad_nest() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.ones(3), requires_grad=True)
        with no_grad():
            assert not is_grad_enabled()
            assert (x * x).grad_fn is None
            with enable_grad():
                assert (x * x).grad_fn is not None
            assert not is_grad_enabled()
        assert is_grad_enabled()

        @no_grad()
        def f() -> smpc.SharedTensor:
            return x + 1

        assert f().grad_fn is None
        with set_grad_enabled(False):
            assert (x + 1).grad_fn is None


def test_grad_mode_is_per_thread() -> None:
    seen = []
    with no_grad():
        t = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_accumulates_and_zero_grad() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.tensor([1.0, 2.0]), requires_grad=True)
        (x * 3.0).sum().backward()
        (x * x).sum().backward()
        torch.testing.assert_close(x.grad.reveal(), torch.tensor([5.0, 7.0]))
        x.grad = None
        x.sum().backward()
        torch.testing.assert_close(x.grad.reveal(), torch.tensor([1.0, 1.0]))


def test_diamond_graph_sums_paths() -> None:
    with smpc.Session(3) as sess:
        x = sess.share(torch.tensor([1.5, -2.0]), requires_grad=True)
        a = x * 2.0
        b = a * a
        c = (a + b + x).sum()
        c.backward()
        # c = 2x + 4x^2 + x -> dc/dx = 3 + 8x
        torch.testing.assert_close(
            x.grad.reveal(), 3 + 8 * torch.tensor([1.5, -2.0]), atol=1e-3, rtol=0
        )


def test_graph_freed_after_backward() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.ones(4), requires_grad=True)
        h = x * x
        ref = weakref.ref(h)
        y = (h * 2.0).sum()
        del h
        y.backward()
        gc.collect()
        assert ref() is None  # the intermediate is no longer held by the graph
        with pytest.raises(RuntimeError, match="freed"):
            y.backward()


def test_backward_errors() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.ones(3))
        with pytest.raises(RuntimeError, match="does not require grad"):
            x.sum().backward()
        w = sess.share(torch.ones(3), requires_grad=True)
        with pytest.raises(RuntimeError, match="one-element"):
            (w * 2.0).backward()
        with pytest.raises(ValueError, match="shape"):
            (w * 2.0).backward(torch.ones(2))


def test_leaf_backward_and_public_grad() -> None:
    with smpc.Session(2) as sess:
        x = sess.share(torch.ones(2), requires_grad=True)
        (x * 2.0).backward(torch.tensor([1.0, -1.0]))
        torch.testing.assert_close(x.grad.reveal(), torch.tensor([2.0, -2.0]))
        assert isinstance(x.grad, smpc.SharedTensor)


def test_memory_flat_over_200_steps() -> None:
    """Tape and saved tensors are released: live SharedTensors do not grow with steps."""
    import smpc.nn as snn
    import smpc.optim

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 2))
    x = torch.randn(16, 8)
    y = torch.randn(16, 2)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(model, sess)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.01, momentum=0.9)
        xs, ys = sess.share(x), sess.share(y)

        def live() -> int:
            gc.collect()
            return sum(1 for o in gc.get_objects() if issubclass(type(o), smpc.SharedTensor))

        counts = []
        for step in range(200):
            opt.zero_grad()
            loss = F.mse_loss(enc(xs), ys)
            loss.backward()
            opt.step()
            del loss
            if step in (10, 199):
                counts.append(live())
        assert counts[1] <= counts[0]
        assert sess.dealer.kept_masks == 0  # every forward's masks released by its backward


def _linear_case(
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g)
    w = torch.randn(4, 5, generator=g)
    b = torch.randn(4, generator=g)
    t = torch.randn(6, 4, generator=g)
    return x, w, b, t, torch.randn(4, 5, generator=g)


@pytest.mark.parametrize("parties", [2, 3])
def test_linear_weight_grad_is_kept_wide_only_for_its_optimizer(parties: int) -> None:
    """A leaf weight with ``keep_wide_grad`` (what the optimizers set) keeps its
    gradient from ``linear`` at scale 2^2f (no truncation round); ``.grad`` then
    raises instead of communicating, and ``materialize_grad()`` truncates it once;
    the value is torch's."""
    x, w0, b0, t, _ = _linear_case(0)
    tw, tb = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    torch.nn.functional.mse_loss(torch.nn.functional.linear(x, tw, tb), t).backward()
    with smpc.Session(parties) as sess:
        w = sess.share(w0, requires_grad=True)
        b = sess.share(b0, requires_grad=True)
        w.keep_wide_grad = True
        F.mse_loss(F.linear(sess.share(x), w, b), sess.share(t)).backward()
        assert w.has_grad and w.wide_grad is not None
        assert b.wide_grad is None and b.has_grad
        before = sess.stats.rounds
        with pytest.raises(smpc.GradientPendingError, match="materialize_grad"):
            _ = w.grad
        assert sess.stats.rounds == before  # reading never communicates
        gw = w.materialize_grad()
        assert sess.stats.rounds - before == 1  # the truncation, once
        assert gw is not None and w.grad is gw and w.wide_grad is None
        assert w.materialize_grad() is gw and sess.stats.rounds - before == 1
        torch.testing.assert_close(gw.reveal(), tw.grad, atol=1e-3, rtol=0)
        torch.testing.assert_close(b.grad.reveal(), tb.grad, atol=1e-3, rtol=0)


@pytest.mark.parametrize("parties", [2, 3])
def test_linear_weight_grad_is_truncated_in_backward_by_default(parties: int) -> None:
    """Without ``keep_wide_grad`` backward truncates the weight's gradient in the
    layer's own rounds (2, as with a wide one when the input needs a gradient too):
    ``.grad`` is ready and reading it costs nothing."""
    x, w0, _, t, _ = _linear_case(2)
    tx, tw = x.clone().requires_grad_(), w0.clone().requires_grad_()
    torch.nn.functional.linear(tx, tw).backward(t)
    with smpc.Session(parties) as sess:
        xs, w = sess.share(x, requires_grad=True), sess.share(w0, requires_grad=True)
        out, gs = F.linear(xs, w), sess.share(t)
        before = sess.stats.rounds
        out.backward(gs)
        assert sess.stats.rounds - before == 2
        assert not w.keep_wide_grad and w.wide_grad is None
        before = sess.stats.rounds
        gw, gx = w.grad, xs.grad
        assert sess.stats.rounds == before
        assert gw is not None and gx is not None
        torch.testing.assert_close(gw.reveal(), tw.grad, atol=1e-3, rtol=0)
        torch.testing.assert_close(gx.reveal(), tx.grad, atol=1e-3, rtol=0)


@pytest.mark.parametrize("wide_first", [True, False])
def test_wide_gradients_accumulate_with_each_other_and_with_truncated_ones(
    wide_first: bool,
) -> None:
    """Two backward passes add (wide + wide); a weight also used outside ``linear``
    gets a truncated part too (widened exactly, whichever comes first);
    ``.grad = None`` clears both."""
    x, w0, b0, t, v = _linear_case(1)
    tw = w0.clone().requires_grad_()

    def loss(lin: torch.Tensor | smpc.SharedTensor, other: torch.Tensor | smpc.SharedTensor):
        return lin + other if wide_first else other + lin

    for _ in range(2):
        out = torch.nn.functional.linear(x, tw, b0)
        loss(torch.nn.functional.mse_loss(out, t), (tw * v).sum()).backward()
    with smpc.Session(2) as sess:
        w = sess.share(w0, requires_grad=True)
        w.keep_wide_grad = True
        xs, ts, vs = sess.share(x), sess.share(t), sess.share(v)
        for _ in range(2):
            out = F.linear(xs, w, b0)
            loss(F.mse_loss(out, ts), (w * vs).sum()).backward()
            assert w.wide_grad is not None  # the whole sum is wide
        got = w.materialize_grad()
        assert got is not None
        torch.testing.assert_close(got.reveal(), tw.grad, atol=2e-3, rtol=0)
        w.grad = None
        assert not w.has_grad and w.grad is None and w.wide_grad is None


@settings(max_examples=8, deadline=None)
@given(
    parties=st.integers(2, 4),
    batch=st.integers(1, 5),
    sizes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_materialize_grads_truncates_every_pending_gradient_in_one_round(
    parties: int, batch: int, sizes: list[tuple[int, int]], seed: int
) -> None:
    """Wide gradients of several weights (random shapes, 2-4 parties) truncated
    together: one round for all, each equal to torch's gradient; a second call
    and tensors without a pending gradient cost nothing."""
    g = torch.Generator().manual_seed(seed)
    xs_ = [torch.rand(batch, i, generator=g) * 4 - 2 for i, _ in sizes]
    ws_ = [torch.rand(o, i, generator=g) * 4 - 2 for i, o in sizes]
    gs_ = [torch.rand(batch, o, generator=g) * 4 - 2 for _, o in sizes]
    ref = [w.clone().requires_grad_() for w in ws_]
    for x, w, gr in zip(xs_, ref, gs_, strict=True):
        torch.nn.functional.linear(x, w).backward(gr)
    with smpc.Session(parties) as sess:
        ws = [sess.share(w, requires_grad=True) for w in ws_]
        plain = sess.share(torch.zeros(2), requires_grad=True)
        for w in ws:
            w.keep_wide_grad = True
        for x, w, gr in zip(xs_, ws, gs_, strict=True):
            F.linear(sess.share(x), w).backward(sess.share(gr))
        assert all(w.wide_grad is not None for w in ws)
        before = sess.stats.rounds
        materialize_grads([*ws, plain])
        assert sess.stats.rounds - before == 1
        materialize_grads(ws)
        assert sess.stats.rounds - before == 1
        for w, want in zip(ws, ref, strict=True):
            assert w.wide_grad is None and w.grad is not None
            torch.testing.assert_close(w.grad.reveal(), want.grad, atol=2e-3, rtol=0)


def test_wide_grad_contract_checks_its_input_and_hides_values() -> None:
    with smpc.Session(2) as sess:
        w = sess.share(torch.ones(2, 3), requires_grad=True)
        with pytest.raises(TypeError, match="keep_wide_grad"):
            w.keep_wide_grad = 1  # type: ignore[assignment]
        with pytest.raises(TypeError, match="WideGrad"):
            w.add_wide_grad(w.share)  # type: ignore[arg-type]
        with pytest.raises(smpc.ShapeError, match="shape"):
            w.add_wide_grad(WideGrad(sess.share(torch.ones(3)).share))
        with pytest.raises(TypeError, match="int64"):
            WideGrad(torch.ones(2))
        with pytest.raises(TypeError, match="grad"):
            w.grad = torch.ones(2, 3)  # type: ignore[assignment]
        wg = WideGrad(sess.share(torch.full((2, 3), 123.0)).share)
        assert repr(wg) == f"WideGrad(shape={tuple(wg.share.shape)})" and "123" not in repr(wg)
        assert w.take_wide_grad() is None and w.materialize_grad() is None
        w.add_wide_grad(wg)
        assert w.take_wide_grad() is wg and not w.has_grad
        with pytest.raises(TypeError, match=r"tensors\[1\]"):
            materialize_grads([w, w.share])  # type: ignore[list-item]
        with smpc.Session(2) as other, pytest.raises(smpc.SessionMismatchError):
            materialize_grads([w, other.share(torch.ones(1))])

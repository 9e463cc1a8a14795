"""The fused linear -> ReLU op under autograd (smpc.nn.Sequential): gradients and rounds."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smpc
import smpc.launch
import smpc.nn as snn
import smpc.optim
from smpc.autograd import linear_relu
from smpc.protocols import compare


def _mlp(dims: list[int], seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).double()


def _grads_close(enc: snn.Module, plain: torch.nn.Module, atol: float) -> None:
    for (name, p), q in zip(enc.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None, name
        assert q.grad is not None
        torch.testing.assert_close(p.grad.reveal().double(), q.grad, atol=atol, rtol=0, msg=name)


@settings(max_examples=8)
@given(
    n=st.integers(2, 4),
    seed=st.integers(0, 2**31),
    dims=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    batch=st.integers(1, 6),
    loss=st.sampled_from(["mse_mean", "mse_sum", "ce"]),
    shared_target=st.booleans(),
)
def test_sequential_gradients_match_torch(
    n: int, seed: int, dims: list[int], batch: int, loss: str, shared_target: bool
) -> None:
    # Arrange
    plain = _mlp(dims, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dims[0], generator=g, dtype=torch.float64)
    if loss == "ce":
        y = torch.nn.functional.one_hot(
            torch.randint(0, dims[-1], (batch,), generator=g), dims[-1]
        ).double()
        ref = torch.nn.functional.cross_entropy(plain(x), y)
    else:
        y = torch.randn(batch, dims[-1], generator=g, dtype=torch.float64)
        ref = torch.nn.functional.mse_loss(plain(x), y, reduction=loss[4:])
    ref.backward()
    with smpc.Session(n) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs = sess.share(x.float(), src=n - 1)
        ys = sess.share(y.float(), src=n - 1) if shared_target else y.float()
        # Act
        out = enc(xs)
        if loss == "ce":
            value = snn.CrossEntropyLoss()(out, ys)
        else:
            value = snn.MSELoss(reduction=loss[4:])(out, ys)
        value.backward()
        # Assert: the forward output, the loss value (after the gradient) and every gradient
        torch.testing.assert_close(out.reveal().double(), plain(x), atol=2e-3, rtol=0)
        torch.testing.assert_close(value.reveal().double(), ref.detach(), atol=5e-3, rtol=1e-2)
        _grads_close(enc, plain, atol=3e-3)


def _step_rounds(dims: list[int], batch: int, loss: str, fuse: bool) -> tuple[int, int]:
    """Rounds and bytes per party of the second SGD step of an MLP (model and data shared)."""
    plain = _mlp(dims, 0).float()
    x = torch.rand(batch, dims[0])
    onehot = torch.nn.functional.one_hot(torch.arange(batch) % dims[-1], dims[-1]).float()
    with smpc.Session(("alice", "bob")) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs, ys = sess.share(x, src=1), sess.share(onehot, src=1)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.05, momentum=0.9)
        loss_fn: snn.Module = snn.CrossEntropyLoss() if loss == "ce" else snn.MSELoss()
        for _ in range(2):
            before = sess.stats.snapshot()
            opt.zero_grad()
            if fuse:
                out = enc(xs)
            else:  # the layers one by one: no fusion
                out = xs
                for m in enc:
                    out = m(out)
            loss_fn(out, ys).backward()
            opt.step()
            used = sess.stats - before
    return used.rounds, used.bytes_per_party[0]


def test_w4_shaped_mse_step_rounds() -> None:
    # Arrange: W4's shape (two hidden layers with ReLU, MSE) at a small size
    r = compare.cost(2)[0]
    # Act
    fused_rounds, fused_bytes = _step_rounds([20, 16, 12, 10], 8, "mse", fuse=True)
    plain_rounds, plain_bytes = _step_rounds([20, 16, 12, 10], 8, "mse", fuse=False)
    # Assert: forward 2 (1 + r) + 2 (logits and the MSE gradient share a truncation);
    # backward 2 + 2 (ReLU derivatives inside the truncations) + 1; the optimizer 1
    assert fused_rounds == 2 * r + 10
    assert plain_rounds == 2 * r + 15  # matmul + trunc + relu, twice; + 2 + 1 + (2 + 1) * 2 + 1 + 1
    assert fused_bytes < plain_bytes
    # The target, once the comparison takes 4 rounds (smpc.protocols.compare)
    assert fused_rounds <= 20 or r > 4, f"{fused_rounds} rounds with a {r}-round comparison"


def test_cross_entropy_step_gains_the_relu_rounds() -> None:
    fused_rounds, _ = _step_rounds([20, 16, 12, 10], 8, "ce", fuse=True)
    plain_rounds, _ = _step_rounds([20, 16, 12, 10], 8, "ce", fuse=False)
    assert fused_rounds == plain_rounds - 4  # two truncations, two ReLU products


def test_relu_output_used_twice_is_still_right() -> None:
    # Arrange: a fused ReLU whose output feeds two fused linear layers (the gradient
    # reaching the ReLU is then a sum, which it multiplies by its bit again)
    plain = _mlp([5, 4, 3], 1)
    extra = torch.nn.Linear(4, 3).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    h = torch.relu(plain[0](x))
    (plain[2](h).sum() + 2 * extra(h).sum()).backward()
    with smpc.Session(2) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        enc2 = snn.encrypt(torch.nn.Sequential(extra), sess, src=0)
        xs = sess.share(x.float(), src=1)
        link = linear_relu.ReluLink()
        # Act
        hs = linear_relu.LinearReLU.apply(xs, enc[0].weight, enc[0].bias, None, link)
        o1 = linear_relu.LinearReLU.apply(hs, enc[2].weight, enc[2].bias, link, None)
        o2 = linear_relu.LinearReLU.apply(hs, enc2[0].weight, enc2[0].bias, link, None)
        (o1.sum() + o2.sum() * 2).backward()
        # Assert
        _grads_close(enc, plain, atol=2e-3)
        _grads_close(enc2, torch.nn.Sequential(extra), atol=2e-3)


def test_no_fusion_without_autograd_or_for_other_layers() -> None:
    plain = _mlp([4, 3, 2], 2).float()
    x = torch.randn(5, 4)
    with smpc.Session(2) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs = sess.share(x, src=1)
        with smpc.autograd.no_grad():
            out = enc(xs)
        assert type(out) is smpc.SharedTensor  # no PendingTrunc: the layers one by one
        torch.testing.assert_close(out.reveal(), plain(x).detach(), atol=1e-3, rtol=0)
        assert not linear_relu.fusable(xs.reshape(5, 2, 2), enc[0].weight, enc[0].bias)
        assert not linear_relu.fusable(x, enc[0].weight, enc[0].bias)
        assert linear_relu.fusable(xs, enc[0].weight, enc[0].bias)
        assert not linear_relu.fusable(xs[:, :3], enc[0].weight, enc[0].bias)
        bad = sess.share(torch.randn(5, 3), src=1, requires_grad=True)
        with pytest.raises(smpc.errors.ShapeError, match="Linear: expected input"):
            enc(bad)


def test_pending_trunc_refuses_late_riders() -> None:
    plain = _mlp([4, 3], 3).float()
    with smpc.Session(2) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs = sess.share(torch.randn(2, 4), src=1)
        link = linear_relu.ReluLink()
        h = linear_relu.LinearReLU.apply(xs, enc[0].weight, enc[0].bias, None, link)
        out = linear_relu.LinearReLU.apply(h, enc[0].weight[:, :3], None, link, None)
        assert isinstance(out, linear_relu.PendingTrunc)
        _ = out.reveal()
        with pytest.raises(RuntimeError, match="already ran"):
            out.ride(out.share, 16)
        with pytest.raises(RuntimeError, match="already ran"):
            _ = out.raw
        assert "ReluLink" in repr(link)


def test_mse_gradient_scaled_upstream_falls_back() -> None:
    # (2 * loss).backward(): the precomputed gradient is not used, the result still right
    plain = _mlp([3, 4, 2], 4)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    (2 * torch.nn.functional.mse_loss(plain(x), y)).backward()
    with smpc.Session(2) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs, ys = sess.share(x.float(), src=1), sess.share(y.float(), src=1)
        snn.MSELoss()(enc(xs), ys).backward(torch.tensor(2.0))
        _grads_close(enc, plain, atol=2e-3)


def mlp_step_program(
    sess: smpc.Session, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, object]:
    """One MSE step's gradients and costs, runtime-agnostic (a distributed party program)."""
    last = sess.world_size - 1
    enc = snn.encrypt(model, sess, src=0)
    xs = sess.share(x if sess.rank in (None, last) else None, src=last)
    ys = sess.share(y if sess.rank in (None, last) else None, src=last)
    before = sess.stats.snapshot()
    snn.MSELoss()(enc(xs), ys).backward()
    used = sess.stats - before
    grads = {}
    for name, p in enc.named_parameters():
        assert p.grad is not None
        grads[name] = p.grad.reveal(to=last)
    return {"grads": grads, "rounds": used.rounds, "bytes": used.bytes_per_party[sess.rank or 0]}


@pytest.mark.distributed
@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 3])
def test_distributed_step_matches_simulation_and_torch(n: int) -> None:
    # Arrange: the provider in its own process must serve the fused requests
    plain = _mlp([6, 5, 4, 3], 5).float()
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    torch.nn.functional.mse_loss(plain(x), y).backward()
    program = functools.partial(mlp_step_program, model=plain, x=x, y=y)
    # Act
    results = smpc.launch.run(program, parties=n, timeout=60)
    with smpc.Session(n) as sess:
        sim = program(sess)
    # Assert: torch's gradients on the last party; rounds and bytes as in simulation
    for name, p in plain.named_parameters():
        assert p.grad is not None
        got = results[-1]["grads"][name]
        torch.testing.assert_close(got, p.grad, atol=2e-3, rtol=0, msg=name)
    assert all(res["rounds"] == sim["rounds"] for res in results)
    assert results[0]["bytes"] == sim["bytes"]


def test_mse_gradient_with_many_fractional_bits_falls_back() -> None:
    # frac_bits 20: the gradient is scaled in the backward (one more round), still right
    plain = _mlp([3, 4, 2], 6)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.nn.functional.mse_loss(plain(x), y, reduction="sum").backward()
    with smpc.Session(2, 20) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs, ys = sess.share(x.float(), src=1), sess.share(y.float(), src=1)
        out = enc(xs)
        assert linear_relu.mse_grad_in_forward(out, ys, "sum") is None
        snn.MSELoss(reduction="sum")(out, ys).backward()
        _grads_close(enc, plain, atol=2e-3)


def test_training_steps_keep_no_masks_and_repeat_their_requests() -> None:
    # Every kept mask (the layers' and the ReLUs' backward masks) is released by its
    # backward, and the mask names are reused: each step asks the same of the provider
    plain = _mlp([6, 5, 4, 3], 7).float()
    with smpc.Session(2) as sess:
        enc = snn.encrypt(plain, sess, src=0)
        xs, ys = sess.share(torch.randn(4, 6), src=1), sess.share(torch.randn(4, 3), src=1)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.01)
        kept, dealer_bytes = [], []
        for _ in range(3):
            before = sess.stats.snapshot()
            opt.zero_grad()
            snn.MSELoss()(enc(xs), ys).backward()
            opt.step()
            kept.append(sess.dealer.kept_masks)
            dealer_bytes.append((sess.stats - before).dealer_bytes)
    assert kept == [0, 0, 0]
    assert dealer_bytes[1] == dealer_bytes[2]

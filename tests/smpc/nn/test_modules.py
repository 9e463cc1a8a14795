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

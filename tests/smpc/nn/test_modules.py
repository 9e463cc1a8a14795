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

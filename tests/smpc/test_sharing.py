"""Security properties of sharing: shares look uniform; one party's view is independent
of the secret."""

from __future__ import annotations

import torch

import smpc
from smpc.prg import AesPrg
from smpc.protocols.beaver import MulTriple
from smpc.sharing import additive_shares, reconstruct


def _chi2_bytes(values: torch.Tensor) -> float:
    """Chi-square statistic of the byte histogram of int64 values (255 dof)."""
    b = values.contiguous().view(torch.uint8).long()
    counts = torch.bincount(b, minlength=256).double()
    expected = b.numel() / 256
    return float(((counts - expected) ** 2 / expected).sum())


# Chi-square with 255 degrees of freedom: the 0.9999 quantile is about 347.
CHI2_LIMIT = 350.0


def test_reconstruct_exact() -> None:
    x = torch.randint(-(2**63), 2**63 - 1, (1000,))
    for n in (2, 3, 5):
        assert torch.equal(reconstruct(additive_shares(x, n, AesPrg())), x)


def test_shares_of_fixed_secret_are_uniform() -> None:
    secret = torch.full((50_000,), 12345, dtype=torch.int64)
    for n in (2, 3):
        shares = additive_shares(secret, n, AesPrg())
        for i in range(n):
            assert _chi2_bytes(shares[i]) < CHI2_LIMIT


def test_one_party_view_independent_of_secret() -> None:
    """Party 0's shares of 0 and of a large secret have indistinguishable byte histograms."""
    with smpc.Session(parties=3) as sess:
        a = sess.share(torch.zeros(40_000)).shares[1]
        b = sess.share(torch.full((40_000,), 30000.0)).shares[1]
    ca = torch.bincount(a.contiguous().view(torch.uint8).long(), minlength=256).double()
    cb = torch.bincount(b.contiguous().view(torch.uint8).long(), minlength=256).double()
    # Two-sample chi-square homogeneity test, 255 dof.
    tot = ca + cb
    ea, eb = tot * ca.sum() / tot.sum(), tot * cb.sum() / tot.sum()
    chi2 = float(((ca - ea) ** 2 / ea + (cb - eb) ** 2 / eb).sum())
    assert chi2 < CHI2_LIMIT


def test_beaver_openings_differ_across_runs() -> None:
    """The opened masked values of a product change from run to run (fresh triples)."""
    x = torch.tensor([3.0, 4.0])
    seen = []
    for _ in range(2):
        with smpc.Session(parties=2) as sess:
            xs = sess.share(x)
            t = sess.dealer.request(MulTriple((2,), (2,)))
            seen.append((xs.share - t["a"]).sum(0))
    assert not torch.equal(seen[0], seen[1])


def test_seed_switch_makes_runs_reproducible() -> None:
    outs = []
    for _ in range(2):
        with smpc.Session(parties=2, seed=42) as sess:
            outs.append(sess.share(torch.tensor([1.0, 2.0])).share.clone())
    assert torch.equal(outs[0], outs[1])

"""AES-CTR generator: determinism only with an explicit key, uniform output."""

from __future__ import annotations

import torch

from smpc.prg import AesPrg, key_from_seed


def test_seeded_is_reproducible_and_default_is_not() -> None:
    k = key_from_seed(7)
    assert torch.equal(AesPrg(k).random_int64(100), AesPrg(k).random_int64(100))
    assert not torch.equal(AesPrg().random_int64(100), AesPrg().random_int64(100))


def test_labels_separate_streams() -> None:
    assert key_from_seed(1, label="a") != key_from_seed(1, label="b")


def test_bits_are_balanced() -> None:
    x = AesPrg().random_int64(100_000)
    bits = torch.stack([(x >> i) & 1 for i in range(64)]).double().mean(1)
    # Each bit mean ~ 0.5 with std 1/(2*sqrt(1e5)) = 0.0016; 6 sigma.
    assert float((bits - 0.5).abs().max()) < 0.01


def test_stream_depends_only_on_position() -> None:
    """Draws split any way (including the two-thread path for large draws) give the same
    keystream as one draw."""
    k = key_from_seed(3)
    a = AesPrg(k)
    parts = [a.random_int64(n) for n in (5, 200_001, 3, 150_000)]
    b = AesPrg(k)
    assert torch.equal(torch.cat(parts), b.random_int64(350_009))
    a.close()
    b.close()


def test_fill_rejects_bad_buffers() -> None:
    import pytest

    with pytest.raises(ValueError, match="contiguous CPU int64"):
        AesPrg().fill_(torch.empty(4, dtype=torch.int32))

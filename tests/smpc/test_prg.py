"""AES-CTR generator: determinism only with an explicit key, uniform output."""

from __future__ import annotations

import pytest
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

    with pytest.raises(ValueError, match="contiguous CPU int64"):
        AesPrg().fill_(torch.empty(4, dtype=torch.int32))


def test_keystream_is_aes_ctr_across_segments() -> None:
    """The stream is AES-128-CTR with counter block ``segment || i+2`` (the GCM layout):
    checked against OpenSSL's plain CTR mode on both sides of a segment boundary,
    for one large (two-thread) draw and for many small draws."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from smpc.prg import SEGMENT_BYTES

    key = key_from_seed(11)

    def ctr(segment: int, nbytes: int) -> bytes:
        iv = segment.to_bytes(12, "big") + (2).to_bytes(4, "big")
        return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(bytes(nbytes))

    numel = (2 * SEGMENT_BYTES + 4096) // 8
    big = AesPrg(key)
    stream = big.random_int64(numel).numpy().tobytes()
    big.close()
    assert stream[:SEGMENT_BYTES] == ctr(0, SEGMENT_BYTES)
    assert stream[SEGMENT_BYTES : 2 * SEGMENT_BYTES] == ctr(1, SEGMENT_BYTES)
    assert stream[2 * SEGMENT_BYTES :] == ctr(2, 4096)
    small = AesPrg(key)
    step = SEGMENT_BYTES // 8 // 3 + 1  # draws that straddle each boundary
    parts = [small.random_int64(min(step, numel - i)) for i in range(0, numel, step)]
    assert torch.cat(parts).numpy().tobytes() == stream


def test_seek_replays_the_stream_from_any_position() -> None:
    """``seek`` back (mid-block, mid-segment, before a segment boundary) or forward
    gives the keystream at that position; ``tell`` reports it."""
    from smpc.prg import SEGMENT_BYTES

    k = key_from_seed(5)
    total = SEGMENT_BYTES + 5000
    stream = bytes(AesPrg(k).random_bytes(total))
    a = AesPrg(k)
    for pos, n in [(0, 7), (3, 100), (17, 64), (SEGMENT_BYTES - 21, 50), (SEGMENT_BYTES, 9),
                   (SEGMENT_BYTES + 1, 4000), (1000, 3), (SEGMENT_BYTES - 8, 8)]:  # fmt: skip
        a.seek(pos)
        assert a.tell() == pos
        assert bytes(a.random_bytes(n)) == stream[pos : pos + n], (pos, n)
        assert a.tell() == pos + n
    a.seek(40)
    assert torch.equal(
        a.random_int64(3), torch.frombuffer(bytearray(stream[40:64]), dtype=torch.int64)
    )
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`pos` must be an int >= 0"):
            a.seek(bad)  # type: ignore[arg-type]

"""Pseudorandom generators for shares and masks (bottom layer: pure, local).

``AesPrg`` is AES-128 in counter mode from ``cryptography`` (OpenSSL, AES-NI),
keyed from ``os.urandom`` unless a key is given. It writes keystream into a
reusable buffer with ``update_into`` and views it as int64 with
``torch.frombuffer``: a cryptographically secure generator that is faster
than torch's own Mersenne/Philox ``randint``. Deterministic runs (tests) pass a
key derived from a seed: see :func:`key_from_seed`. There is no insecure
generator in this package.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["Prg", "AesPrg", "key_from_seed"]

KEY_BYTES = 16


class Prg(Protocol):
    """A stream of uniformly random ring elements."""

    def random_int64(self, numel: int) -> torch.Tensor:
        """Return ``numel`` uniform int64 values (a fresh tensor)."""
        ...


def key_from_seed(seed: int | bytes | str, *, label: str = "") -> bytes:
    """Derive a 128-bit AES key from a seed (testing switch) and a domain label."""
    if isinstance(seed, int):
        seed = seed.to_bytes(32, "little", signed=True)
    elif isinstance(seed, str):
        seed = seed.encode()
    return hashlib.sha256(b"smpc-prg|" + label.encode() + b"|" + seed).digest()[:KEY_BYTES]


class AesPrg:
    """AES-128-CTR keystream as uniform int64 tensors.

    Args:
        key: 16-byte key; ``None`` draws one from ``os.urandom`` (the default, secure).
    """

    __slots__ = ("_enc", "_zeros")

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if len(key) != KEY_BYTES:
            raise ValueError(f"`key` must be {KEY_BYTES} bytes; got {len(key)}")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        self._zeros = bytes(0)

    def random_bytes(self, nbytes: int) -> bytearray:
        """Return ``nbytes`` of keystream."""
        if len(self._zeros) < nbytes:
            self._zeros = bytes(max(nbytes, 2 * len(self._zeros)))
        out = bytearray(nbytes)
        if nbytes:
            self._enc.update_into(memoryview(self._zeros)[:nbytes], out)
        return out

    def random_int64(self, numel: int) -> torch.Tensor:
        """Return ``numel`` uniform int64 values."""
        out = torch.empty(numel, dtype=torch.int64)
        return self.fill_(out)

    def fill_(self, out: torch.Tensor) -> torch.Tensor:
        """Overwrite a contiguous CPU int64 tensor with keystream, in place; return it."""
        nbytes = out.numel() * 8
        if nbytes:
            if len(self._zeros) < nbytes:
                self._zeros = bytes(max(nbytes, 2 * len(self._zeros)))
            assert out.is_contiguous() and out.dtype == torch.int64 and not out.is_cuda
            view = memoryview(out.numpy()).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
            self._enc.update_into(memoryview(self._zeros)[:nbytes], view)
        return out

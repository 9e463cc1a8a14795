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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["Prg", "AesPrg", "key_from_seed"]

KEY_BYTES = 16
# Draws of at least this many bytes are split over two threads.
_PARALLEL_BYTES = 1 << 20


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

    The keystream is a function of the byte position only, so a sequence of
    draws returns the same values however it is split. Large draws are computed
    by two threads on disjoint counter ranges (OpenSSL releases the GIL).

    Args:
        key: 16-byte key; ``None`` draws one from ``os.urandom`` (the default, secure).
    """

    __slots__ = ("_key", "_enc", "_pos", "_zeros", "_pool")

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if len(key) != KEY_BYTES:
            raise ValueError(f"`key` must be {KEY_BYTES} bytes; got {len(key)}")
        self._key = key
        self._pos = 0
        self._enc = self._encryptor_at(0)
        self._zeros = b""
        self._pool: ThreadPoolExecutor | None = None

    def _encryptor_at(self, pos: int) -> Any:
        counter = (pos // 16).to_bytes(16, "big")
        enc = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        if pos % 16:
            enc.update(bytes(pos % 16))
        return enc

    def _zeros_of(self, nbytes: int) -> memoryview:
        if len(self._zeros) < nbytes:
            self._zeros = bytes(max(nbytes, 2 * len(self._zeros)))
        return memoryview(self._zeros)[:nbytes]

    def random_bytes(self, nbytes: int) -> bytearray:
        """Return ``nbytes`` of keystream."""
        out = bytearray(nbytes)
        if nbytes:
            self._enc.update_into(self._zeros_of(nbytes), out)
            self._pos += nbytes
        return out

    def random_int64(self, numel: int) -> torch.Tensor:
        """Return ``numel`` uniform int64 values."""
        out = torch.empty(numel, dtype=torch.int64)
        return self.fill_(out)

    def fill_(self, out: torch.Tensor) -> torch.Tensor:
        """Overwrite a contiguous CPU int64 tensor with keystream, in place; return it."""
        nbytes = out.numel() * 8
        if not nbytes:
            return out
        if not (out.is_contiguous() and out.dtype == torch.int64 and out.device.type == "cpu"):
            raise ValueError("`out` must be a contiguous CPU int64 tensor")
        view = memoryview(out.numpy()).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
        if nbytes < _PARALLEL_BYTES:
            self._enc.update_into(self._zeros_of(nbytes), view)
            self._pos += nbytes
            return out
        half = (nbytes // 2) // 16 * 16
        start = self._pos
        zeros = self._zeros_of(nbytes - half)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smpc-aes")
        second = self._pool.submit(
            lambda: self._encryptor_at(start + half).update_into(zeros, view[half:])
        )
        self._encryptor_at(start).update_into(zeros[:half], view[:half])
        second.result()
        self._pos = start + nbytes
        self._enc = self._encryptor_at(self._pos)
        return out

    def close(self) -> None:
        """Stop the helper thread, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

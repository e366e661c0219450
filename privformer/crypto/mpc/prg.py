"""Pseudorandom ring elements from AES-128-CTR, keyed from ``secrets`` (a CSPRNG).

Two parties holding the same key and nonce draw the same stream, so a share that one party
would otherwise have to send can be drawn on both sides instead (PRG compression of shares).
"""

from __future__ import annotations

import hashlib
import math
import secrets

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privformer.errors import InputError

KEY_BYTES = 16


def new_key() -> bytes:
    """A fresh AES key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


class Stream:
    """One AES-CTR keystream, read as int64 ring elements, bits or permutations."""

    def __init__(self, key: bytes, nonce: bytes | str | int):
        if len(key) != KEY_BYTES:
            raise InputError(f"PRG key must be {KEY_BYTES} bytes, got {len(key)}")
        iv = hashlib.sha256(b"privformer.prg|" + str(nonce).encode()).digest()[:16]
        self._enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()

    def bytes(self, n: int) -> bytes:
        return self._enc.update(bytes(n))

    def ring(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_{2^64} as int64."""
        count = math.prod(shape)
        buf = bytearray(self.bytes(8 * count))
        return (
            torch.frombuffer(buf, dtype=torch.int64).reshape(tuple(shape))
            if count
            else (torch.zeros(tuple(shape), dtype=torch.int64))
        )

    def bits(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform 0/1 int64."""
        return self.ring(shape) & 1

    def permutation(self, n: int) -> torch.Tensor:
        """A uniform permutation of range(n): argsort of 64-bit keys (ties have probability
        below n^2 / 2^64, negligible)."""
        return torch.argsort(self.ring((n,)), stable=True)

"""Encrypted NEXUS building blocks on the ``CKKSBackend`` interface.

Each mirrors its float64 twin in ``approx``: the same polynomials, in the same order, so the
encrypted result differs from ``simulate`` only by CKKS noise.
"""

from __future__ import annotations

import numpy as np

from privformer.crypto.backend import Ciphertext, CKKSBackend
from privformer.protocols.nexus import approx


def odd_poly(backend: CKKSBackend, x: Ciphertext, coeffs: np.ndarray) -> Ciphertext:
    """sum_k c_k x^(2k+1) for up to five coefficients (degree 9) in depth 4.

    Powers x^2, x^4 (depth 1, 2), x^6, x^8 (depth 3); each coefficient is folded into x first
    (c_k x, depth 1) so c_k x * x^(2k) lands at depth <= 4 instead of 5.
    """
    if len(coeffs) > 5:
        raise ValueError("odd_poly evaluates degree <= 9 in depth 4")
    x2 = backend.multiply(x, x)
    x4 = backend.multiply(x2, x2)
    powers = [None, x2, x4, backend.multiply(x2, x4), backend.multiply(x4, x4)]
    total = backend.multiply_plain(x, float(coeffs[0]))
    for k in range(1, len(coeffs)):
        term = backend.multiply(backend.multiply_plain(x, float(coeffs[k])), powers[k])
        total = backend.add(total, term)
    return total


def sgn(backend: CKKSBackend, x: Ciphertext, g: int = 2, f: int = 2) -> Ciphertext:
    """Encrypted SGN for slots in [-1, 1]: g4 applied g times, then f4 f times (depth 4(g+f))."""
    for _ in range(g):
        x = odd_poly(backend, x, approx.G4)
    for _ in range(f):
        x = odd_poly(backend, x, approx.F4)
    return x


def quick_sum_steps(width: int) -> list[int]:
    """Rotation steps QuickSum needs for a power-of-two width: width/2, ..., 2, 1."""
    if width < 1 or width & (width - 1):
        raise ValueError(f"QuickSum width must be a power of two, got {width}")
    return [width >> k for k in range(1, width.bit_length())]


def quick_sum(backend: CKKSBackend, x: Ciphertext, width: int) -> Ciphertext:
    """Rotate-and-add: slot 0 (and every slot, cyclically within ``width``) gets the sum.

    The slots beyond ``width`` must be zero; slot i ends with the sum of slots i .. i+width-1.
    """
    for step in quick_sum_steps(width):
        x = backend.add(x, backend.rotate(x, step))
    return x

"""Chebyshev interpolants on [-1, 1] and the Paterson-Stockmeyer split an encrypted evaluator uses.

A function f on [low, high] is approximated by p(t) = sum_k c_k T_k(t), t = (2x - low - high) /
(high - low) in [-1, 1], interpolated at Chebyshev nodes (near-minimax, and the Chebyshev basis
keeps coefficients small where the power basis of a degree-127 polynomial would not).

The encrypted evaluator (``privformer.crypto.ckks.circuits.chebyshev_series``) computes the baby
steps T_1 .. T_{m-1} and the giant steps T_m, T_2m, T_4m, ..., and splits p recursively as
p = q T_n + r (``divide``); ``depth(degree, m)`` is the levels that costs. The float twin
``evaluate`` computes the same polynomial (numpy's Clenshaw sum: it differs from the split only
by float64 rounding, ~1e-15).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from privformer.errors import InputError


def interpolate(
    f: Callable[[np.ndarray], np.ndarray], low: float, high: float, degree: int
) -> np.ndarray:
    """Chebyshev coefficients c_0..c_degree of f on [low, high], in the variable t in [-1, 1]
    (those below 1e-13 of the largest set to exactly 0)."""

    def g(t: np.ndarray) -> np.ndarray:
        return f(0.5 * (high - low) * t + 0.5 * (high + low))

    coeffs = np.asarray(np.polynomial.chebyshev.chebinterpolate(g, degree), dtype=np.float64)  # type: ignore[type-var]
    # Coefficients at float64 rounding level (an even or odd part's "zeros") become exact zeros:
    # the encrypted evaluator skips them (a CKKS product by ~1e-17 encodes to nothing).
    coeffs[np.abs(coeffs) < 1e-13 * np.abs(coeffs).max()] = 0.0
    return coeffs


def evaluate(coeffs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_k coeffs[k] T_k(t) in float64."""
    return np.polynomial.chebyshev.chebval(np.asarray(t, dtype=np.float64), coeffs)


def divide(coeffs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, r) with p = q T_n + r and deg r < n, for p of degree < 2n.

    From T_n T_j = (T_{n+j} + T_{n-j}) / 2: q_0 = c_n, q_j = 2 c_{n+j}, r_{n-j} = c_{n-j} - c_{n+j}.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    if not n < len(c) <= 2 * n:
        raise InputError(f"divide needs n < {len(c)} coefficients <= 2n, got n = {n}")
    q = np.zeros(len(c) - n)
    q[0] = c[n]
    q[1:] = 2.0 * c[n + 1 :]
    r = c[:n].copy()
    for j in range(1, len(c) - n):
        r[n - j] -= c[n + j]
    return q, r


def split_point(length: int, m: int) -> int:
    """n: the giant step p = q T_n + r splits a series of ``length`` coefficients at."""
    n = m
    while 2 * n < length:
        n *= 2
    return n


def products(degree: int, m: int) -> int:
    """Ciphertext products ``chebyshev_series`` does for a dense degree-``degree`` series with
    m baby steps: T_2 .. T_{m-1}, the giant steps T_m .. T_n, one per split."""

    def splits(length: int) -> int:
        if length <= m:
            return 0
        n = split_point(length, m)
        return 1 + splits(length - n) + splits(n)

    top = split_point(degree + 1, m) if degree + 1 > m else m
    giants = (top // m).bit_length() if degree + 1 > m else 0
    return max(0, min(m, degree + 1) - 2) + giants + splits(degree + 1)


def baby_step_count(degree: int) -> int:
    """m (a power of two): the baby steps T_1 .. T_{m-1}. The fewest levels first, then the
    fewest products: near sqrt(degree + 1) unless a smaller m saves a level (degree 127 takes
    7 levels with m = 2, 8 with m = 16; a level can save a bootstrap, worth many products)."""
    candidates = [1 << k for k in range(1, max(2, (degree + 1).bit_length() + 1))]
    return min(candidates, key=lambda m: (depth(degree, m), products(degree, m)))


def depth(degree: int, m: int | None = None) -> int:
    """Levels ``chebyshev_series`` consumes for a degree-``degree`` series with m baby steps."""
    m = m or baby_step_count(degree)
    log_m = m.bit_length() - 1

    def d(length: int) -> int:
        if length <= m:  # leaf: the deepest baby step T_{length-1} (depth ceil(log2)), one scalar
            return (length - 2).bit_length() + 1 if length > 1 else 0
        n = split_point(length, m)
        giant = log_m + (n // m).bit_length() - 1  # depth of T_n
        return max(d(length - n), giant) + 1  # q T_n, alongside r

    return d(degree + 1)

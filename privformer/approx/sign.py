"""SGN(x) on [-1, 1] by Cheon, Kim, Kim, Lee, Lee's composite odd polynomials (Asiacrypt 2020),
and the smooth maximum built on it.

``sgn(x, g, f)`` applies g4 ``g`` times, then f4 ``f`` times; each is an odd degree-9 polynomial
evaluated in depth 4, so SGN costs 4 (g + f) levels (NEXUS's default g = f = 2: depth 16).
"""

from __future__ import annotations

import numpy as np

from privformer.approx.ranges import check_range

# Cheon et al.'s odd degree-9 polynomials, coefficients of x^1, x^3, x^5, x^7, x^9.
F4 = np.array([315.0, -420.0, 378.0, -180.0, 35.0]) / 2**7
G4 = np.array([5850.0, -34974.0, 97015.0, -113492.0, 46623.0]) / 2**10


def odd_poly(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_k coeffs[k] * x^(2k+1), the form the encrypted evaluator computes in depth 4."""
    x2 = x * x
    return x * np.polynomial.polynomial.polyval(x2, coeffs)


def sgn(x: np.ndarray, g: int = 2, f: int = 2) -> np.ndarray:
    """SGN(x) for x in [-1, 1]: f4^f(g4^g(x)); depth 4 (g + f)."""
    x = np.asarray(x, dtype=np.float64)
    check_range("sgn", x, -1.0, 1.0)
    for _ in range(g):
        x = odd_poly(G4, x)
    for _ in range(f):
        x = odd_poly(F4, x)
    return x


def sgn_error(g: int, f: int, min_abs: float) -> float:
    """Worst |SGN(x) - sign(x)| over min_abs <= |x| <= 1 (dense grid), to choose g and f."""
    x = np.concatenate([np.linspace(min_abs, 1.0, 20001), np.geomspace(min_abs, 1.0, 20001)])
    return float(np.max(np.abs(sgn(x, g, f) - 1.0)))


def smooth_max(a: np.ndarray, b: np.ndarray, bound: float, g: int, f: int) -> np.ndarray:
    """max(a, b) = (a + b)/2 + (a - b)/2 * SGN((a - b) / (2 bound)), for |a|, |b| <= bound."""
    return 0.5 * (a + b) + 0.5 * (a - b) * sgn((a - b) / (2.0 * bound), g, f)

"""GELU recipes and their float twins.

- ``nexus``: NEXUS's piecewise form 0 / cubic / middle polynomial / x with breakpoints -4, -1.95,
  3, the pieces selected by SGN indicators; valid on [-bound, bound] (numpy, float64).
- ``chebyshev``: one Chebyshev interpolant on [-bound, bound], no SGN (issue 9's depth-aware
  GELU): degree 127 on [-32, 32] costs 8 levels where ``nexus`` costs 27 (numpy, float64);
- ``cipherprune``: BOLT-style 0 below -bound, x above bound, 0.5 x + p(u) in between, with
  u = |x| (one more comparison) or u = x^2 (even polynomial, no sign needed); a high-accuracy and
  a reduced recipe, the latter for tokens of low importance (torch, differentiable almost
  everywhere so threshold learning trains through it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from privformer.approx import chebyshev as chebyshev_basis
from privformer.approx.ranges import check_range
from privformer.approx.sign import sgn


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU in float64."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return (0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))).numpy()


# --- NEXUS: piecewise with SGN selectors ------------------------------------------------------
GELU_BREAKS = (-4.0, -1.95, 3.0)


def _fit_gelu(low: float, high: float, degree: int, sigma: float | None = None) -> np.ndarray:
    """Least-squares fit of exact GELU on [low, high] (power-basis coefficients).

    ``sigma`` weights the fit by a Gaussian prior on the inputs (plus a floor), since GELU
    inputs of a layer-normalised network concentrate near zero; None fits uniformly.
    """
    x = np.linspace(low, high, 4001)
    w = None if sigma is None else np.sqrt(np.exp(-(x**2) / (2 * sigma**2)) + 0.05)
    return np.polynomial.polynomial.polyfit(x, gelu_exact(x), degree, w=w)


# The middle piece has degree 8 (NEXUS: 6) with a sigma = 1.5 prior: docs/nexus.md gives the
# errors of both on real MiniLM GELU inputs.
GELU_CUBIC = _fit_gelu(GELU_BREAKS[0], GELU_BREAKS[1], 3)
GELU_MID = _fit_gelu(GELU_BREAKS[1], GELU_BREAKS[2], 8, sigma=1.5)


@dataclass(frozen=True)
class GeluConfig:
    """Valid input bound and the SGN composition used for the piece indicators."""

    bound: float = 32.0  # real MiniLM GELU inputs reach beyond NEXUS's [-8, 8] (docs/nexus.md)
    g: int = 3
    f: int = 2


DEFAULT_GELU = GeluConfig()

# The middle piece is large far from its interval (1.7e7 at x = 24.6), so a tiny selector error
# there would be amplified. It is therefore evaluated at x_m = a + W (x - a), W ~ 1[-4 <= x < 5]
# (one more SGN, in parallel): x_m = x wherever the piece is selected, and stays in [a, 5] or
# [-4, a] elsewhere, where the piece is small.
GELU_MID_CENTRE = 0.5
GELU_CLAMP_HIGH = 5.0


def nexus(x: np.ndarray, config: GeluConfig = DEFAULT_GELU) -> np.ndarray:
    """NEXUS piecewise GELU: b1 * cubic + b2 * mid + b3 * x, indicators b from SGN."""
    x = np.asarray(x, dtype=np.float64)
    check_range("gelu", x, -config.bound, config.bound)
    scale = 2.0 * config.bound  # (x - c) / scale lies in [-1, 1] for every breakpoint c

    def step(c: float) -> np.ndarray:  # ~ 1[x >= c]
        return 0.5 * (1.0 + sgn((x - c) / scale, config.g, config.f))

    s0, s1, s2, s3 = (step(c) for c in (*GELU_BREAKS, GELU_CLAMP_HIGH))
    x_mid = GELU_MID_CENTRE + (s0 - s3) * (x - GELU_MID_CENTRE)
    cubic = np.polynomial.polynomial.polyval(x, GELU_CUBIC)
    mid = np.polynomial.polynomial.polyval(x_mid, GELU_MID)
    return (s0 - s1) * cubic + (s1 - s2) * mid + s2 * x


# --- one Chebyshev interpolant ---------------------------------------------------------------
@dataclass(frozen=True)
class ChebyshevGeluConfig:
    """GELU on [-bound, bound] as sum_k c_k T_k(x / bound); depth ``chebyshev.depth(degree)``
    (8 for 127), plus one for the 1 / bound scaling unless the caller folds it into a matmul."""

    bound: float = 32.0
    degree: int = 127

    @property
    def coeffs(self) -> np.ndarray:
        return _chebyshev_coeffs(self.bound, self.degree)


DEFAULT_CHEBYSHEV_GELU = ChebyshevGeluConfig()


@functools.cache
def _chebyshev_coeffs(bound: float, degree: int) -> np.ndarray:
    coeffs = chebyshev_basis.interpolate(gelu_exact, -bound, bound, degree)
    coeffs.setflags(write=False)
    return coeffs


def chebyshev(x: np.ndarray, config: ChebyshevGeluConfig = DEFAULT_CHEBYSHEV_GELU) -> np.ndarray:
    """GELU as one Chebyshev interpolant on [-bound, bound]."""
    x = np.asarray(x, dtype=np.float64)
    check_range("gelu", x, -config.bound, config.bound)
    return chebyshev_basis.evaluate(config.coeffs, x / config.bound)


# --- CipherPrune: 0 / 0.5 x + p(u) / x ---------------------------------------------------------
@dataclass(frozen=True)
class GeluApprox:
    """GELU(x) = 0 for x < -bound, x for x > bound, 0.5 x + p(u) in between, where u = |x|
    (``in_abs``) or u = x^2."""

    name: str
    bound: float
    degree: int
    in_abs: bool

    @property
    def coeffs(self) -> tuple[float, ...]:
        return _even_part_coeffs(self.bound, self.degree, self.in_abs)


_COEFF_CACHE: dict[tuple[float, int, bool], tuple[float, ...]] = {}


def _even_part_coeffs(bound: float, degree: int, in_abs: bool) -> tuple[float, ...]:
    """Least-squares coefficients (lowest degree first) of GELU(x) - x/2, which is even in x."""
    key = (bound, degree, in_abs)
    if key not in _COEFF_CACHE:
        x = np.linspace(0.0, bound, 20001)
        even_part = 0.5 * x * torch.erf(torch.from_numpy(x / math.sqrt(2.0))).numpy()
        coeffs = np.polynomial.polynomial.polyfit(x if in_abs else x * x, even_part, degree)
        _COEFF_CACHE[key] = tuple(float(c) for c in coeffs)
    return _COEFF_CACHE[key]


#: BOLT-style: degree 4 in |x| on [-3, 3].
GELU_HIGH = GeluApprox("gelu-high", 3.0, 4, in_abs=True)
#: Reduced: 0.5 x + c0 + c1 x^2 on [-1.5, 1.5], no sign comparison.
GELU_LOW = GeluApprox("gelu-low", 1.5, 1, in_abs=False)


def power_sum(u: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """sum_k c_k u^k (the 2PC side computes the same powers and one weighted sum)."""
    return sum((c * u**i for i, c in enumerate(coeffs)), torch.zeros_like(u))


def cipherprune(x: torch.Tensor, cfg: GeluApprox = GELU_HIGH) -> torch.Tensor:
    """CipherPrune's GELU: 0 / 0.5 x + p(u) / x, selected by comparisons with +-bound."""
    u = x.abs() if cfg.in_abs else x * x
    inner = 0.5 * x + power_sum(u, cfg.coeffs)
    return torch.where(x < -cfg.bound, torch.zeros_like(x), torch.where(x > cfg.bound, x, inner))

"""The nonlinear approximations the 2PC engine evaluates, as float torch functions.

These are the ``simulate`` twins: ``nonlinear`` evaluates exactly these polynomials, clamps and
iteration counts on secret shares, so running these in float64 shows the accuracy of the secure
run without its cost (the secure run adds only fixed-point rounding, about 2^-18 per step). They are
differentiable almost everywhere, so threshold learning trains through them.

Each function has a high-accuracy and a reduced (lower-degree) variant; CipherPrune gives the
reduced one to tokens of low importance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from privformer.errors import OutOfRangeError
from privformer.protocols.nexus.approx import LayerNormConfig, newton_iterations, newton_start


def _erf_np(x: np.ndarray) -> np.ndarray:
    return torch.erf(torch.from_numpy(x)).numpy()


def _fit(t: np.ndarray, y: np.ndarray, degree: int) -> tuple[float, ...]:
    """Least-squares polynomial coefficients, lowest degree first (deterministic)."""
    return tuple(float(c) for c in np.polynomial.polynomial.polyfit(t, y, degree))


@dataclass(frozen=True)
class GeluApprox:
    """GELU(x) = 0 for x < -bound, x for x > bound, 0.5 x + p(u) in between, where u = |x|
    (``in_abs``, one more comparison) or u = x^2 (even polynomial, no sign needed)."""

    name: str
    bound: float
    degree: int
    in_abs: bool

    @property
    def coeffs(self) -> tuple[float, ...]:
        return _gelu_coeffs(self.bound, self.degree, self.in_abs)


_COEFF_CACHE: dict[tuple, tuple[float, ...]] = {}


def _gelu_coeffs(bound: float, degree: int, in_abs: bool) -> tuple[float, ...]:
    key = (bound, degree, in_abs)
    if key not in _COEFF_CACHE:
        x = np.linspace(0.0, bound, 20001)
        even_part = 0.5 * x * _erf_np(x / math.sqrt(2.0))  # GELU(x) - x/2 is even in x
        _COEFF_CACHE[key] = _fit(x if in_abs else x * x, even_part, degree)
    return _COEFF_CACHE[key]


#: BOLT-style: degree 4 in |x| on [-3, 3] (max error 4.1e-3).
GELU_HIGH = GeluApprox("gelu-high", 3.0, 4, in_abs=True)
#: Reduced: 0.5 x + c0 + c1 x^2 on [-1.5, 1.5], no sign comparison (max error 0.10).
GELU_LOW = GeluApprox("gelu-low", 1.5, 1, in_abs=False)


@dataclass(frozen=True)
class ExpApprox:
    """exp(x) for x <= 0: 0 below -clamp, else (Taylor_k(x / 2^s))^(2^s)."""

    name: str
    clamp: float
    taylor: int
    squarings: int


#: Max abs error 7e-7 on [-16, 0].
EXP_HIGH = ExpApprox("exp-high", 16.0, 3, 6)
#: Max abs error 8.7e-4 on [-16, 0]; three fewer multiplications.
EXP_LOW = ExpApprox("exp-low", 16.0, 2, 4)

#: Variance range of LayerNorm inputs: MiniLM's real activations span 0.145 to 129.7 (measured
#: on Rotten Tomatoes sentences, see docs/nexus.md); BERT-base stays inside too.
LAYERNORM = LayerNormConfig(var_low=0.05, var_high=256.0)
#: Relative accuracy the 2PC Newton iterations aim for (fixed point holds 2^-18 anyway).
RSQRT_REL_TOL = 1e-4


def power_sum(u: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """sum_k c_k u^k (the 2PC side computes the same powers and one weighted sum)."""
    return sum(c * u**i for i, c in enumerate(coeffs))


def gelu(x: torch.Tensor, cfg: GeluApprox = GELU_HIGH) -> torch.Tensor:
    u = x.abs() if cfg.in_abs else x * x
    inner = 0.5 * x + power_sum(u, cfg.coeffs)
    return torch.where(x < -cfg.bound, torch.zeros_like(x), torch.where(x > cfg.bound, x, inner))


def exp_neg(x: torch.Tensor, cfg: ExpApprox = EXP_HIGH) -> torch.Tensor:
    """exp on x <= 0 (softmax after max subtraction)."""
    xc = torch.clamp(x, min=-cfg.clamp)
    y = xc / (1 << cfg.squarings)
    p = sum(y**k / math.factorial(k) for k in range(cfg.taylor + 1))
    for _ in range(cfg.squarings):
        p = p * p
    return torch.where(x < -cfg.clamp, torch.zeros_like(p), p)


def reciprocal_iterations(upper: float, frac_bits: int = 16) -> int:
    """Newton steps for 1/D, D in [1, upper], from y0 = 1/upper: the error 1 - D y shrinks
    from at most 1 - 1/upper by squaring, so 2^k >= frac_bits ln2 upper suffices."""
    return max(1, math.ceil(math.log2(frac_bits * math.log(2) * max(upper, 1.0))))


def reciprocal(d: torch.Tensor, upper: float) -> torch.Tensor:
    """1/d for d in [1, upper] by Newton's iteration y <- y (2 - d y)."""
    y = torch.full_like(d, 1.0 / upper)
    for _ in range(reciprocal_iterations(upper)):
        y = y * (2.0 - d * y)
    return y


def rsqrt_iterations() -> int:
    return newton_iterations(
        LayerNormConfig(LAYERNORM.var_low, LAYERNORM.var_high), rel_tol=RSQRT_REL_TOL
    )


def rsqrt_start() -> tuple[float, float]:
    """(a, b) of the start y0 = a - b v: NEXUS's start on u = v / var_high, rescaled to v."""
    high = LAYERNORM.var_high
    a = newton_start(0.0) / math.sqrt(high)
    b = (newton_start(0.0) - newton_start(1.0)) / high**1.5
    return a, b


def rsqrt(v: torch.Tensor) -> torch.Tensor:
    """1/sqrt(v) for v in [var_low, var_high]: Newton y <- y (1.5 - (v/2 * y) * y), grouped so
    every intermediate stays far above the fixed-point resolution."""
    if v.numel():
        low, high = float(v.detach().min()), float(v.detach().max())
        if low < LAYERNORM.var_low or high > LAYERNORM.var_high:
            bad = low if low < LAYERNORM.var_low else high
            raise OutOfRangeError("layernorm.rsqrt", LAYERNORM.var_low, LAYERNORM.var_high, bad)
    a, b = rsqrt_start()
    half_v = 0.5 * v
    y = a - b * v
    for _ in range(rsqrt_iterations()):
        y = y * (1.5 - (half_v * y) * y)
    return y


def softmax(
    x: torch.Tensor, mask_add: torch.Tensor | None, cfg: ExpApprox = EXP_HIGH
) -> torch.Tensor:
    """Softmax over the last axis with max subtraction, approximate exp and Newton reciprocal.
    ``mask_add`` (0 or a large negative number per key) is added before the max."""
    if mask_add is not None:
        x = x + mask_add
    z = x - x.max(dim=-1, keepdim=True).values
    e = exp_neg(z, cfg)
    return e * reciprocal(e.sum(dim=-1, keepdim=True), float(x.shape[-1]))


def layernorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True) + eps
    return xc * rsqrt(var) * gamma + beta

"""LayerNorm recipes: Newton's iteration for 1/sqrt(v) from a linear start, and the float twins.

Both protocols normalise u = v / var_high into (0, 1] and start Newton's iteration
y <- y (3 - u y^2) / 2 from ``newton_start``, which lies inside the basin for every u in (0, 1].

- ``nexus`` (numpy): mean and variance by QuickSum, 1/sqrt by Newton to a relative tolerance;
- ``cipherprune`` (torch): the same start rescaled to v, ``rsqrt_iterations`` steps grouped so
  every fixed-point intermediate stays far above the resolution; or (``octaves``) v scaled by
  2^-e into [1, 2), where e counts the range's powers of two below v, a minimax linear start and
  ``OCTAVE_NEWTON_STEPS`` steps, then 2^(-e/2): a fixed number of rounds whatever the range.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from privformer.approx import chebyshev as chebyshev_basis
from privformer.approx.folds import quick_sum
from privformer.approx.ranges import check_range
from privformer.errors import InputError, OutOfRangeError


@dataclass(frozen=True)
class LayerNormConfig:
    """Valid per-token variance range and Newton iterations for 1/sqrt (None: enough for 1e-6)."""

    var_low: float = 0.05  # docs/nexus.md: the variance range of MiniLM's LayerNorm inputs
    var_high: float = 256.0
    input_bound: float = 256.0  # |x|; bootstraps are scaled for it
    newton_iters: int | None = None
    # The depth-aware form (``chebyshev``): 1/sqrt starts from a Chebyshev interpolant of this
    # degree on the variance range instead of NEXUS's linear start. None: NEXUS's form.
    start_degree: int | None = None
    # CipherPrune's 2PC rsqrt: normalise v by its power of two (comparisons with the range's
    # octaves) before a short Newton (``rsqrt_octaves``) instead of Newton over the whole range.
    octaves: bool = False


DEFAULT_LAYERNORM = LayerNormConfig()
#: ``newton_start(u) = NEWTON_START_SCALE * (1.5 - u)``.
NEWTON_START_SCALE = 0.9 * math.sqrt(6.0)


ArrayOrFloat = TypeVar("ArrayOrFloat", float, np.ndarray)


def newton_start(u: ArrayOrFloat) -> ArrayOrFloat:
    """Initial guess inside Newton's basin 0 < y0 < sqrt(3/u) for every u in (0, 1].

    1/sqrt(u) is convex, so its chords lie above it and can leave the basin; instead take 0.9x
    the tangent of sqrt(3/u) at u = 1/2, which lies below sqrt(3/u) and stays positive on (0, 1].
    """
    return NEWTON_START_SCALE * (1.5 - u)


def _newton(u: np.ndarray, iters: int) -> np.ndarray:
    y = newton_start(u)
    for _ in range(iters):
        y = y * (3.0 - u * y * y) / 2.0
    return y


def newton_iterations(config: LayerNormConfig, rel_tol: float = 1e-6) -> int:
    """Fewest Newton steps giving relative error <= rel_tol over the whole variance range."""
    if config.newton_iters is not None:
        return config.newton_iters
    u = np.geomspace(config.var_low / config.var_high, 1.0, 4001)
    for iters in range(1, 64):
        if np.max(np.abs(_newton(u, iters) * np.sqrt(u) - 1.0)) <= rel_tol:
            return iters
    raise InputError("variance range too wide for Newton's method from this start")


# --- NEXUS ------------------------------------------------------------------------------------
def _centred(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(x - mean, var + eps) over the last axis, sums by QuickSum as the encrypted side does."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    z = x - quick_sum(x) / n
    return z, quick_sum(z * z) / n + eps


def inv_sqrt(v: np.ndarray, config: LayerNormConfig = DEFAULT_LAYERNORM) -> np.ndarray:
    """1/sqrt(v) by Newton, y <- y (3 - u y^2) / 2 on u = v / var_high (in (0, 1])."""
    check_range("layernorm.inv_sqrt", v, config.var_low, config.var_high)
    u = v / config.var_high
    return _newton(u, newton_iterations(config)) / math.sqrt(config.var_high)


def nexus(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-12,
    config: LayerNormConfig = DEFAULT_LAYERNORM,
) -> np.ndarray:
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last axis, 1/sqrt by Newton."""
    z, var = _centred(x, eps)
    return gamma * z * inv_sqrt(var, config) + beta


# --- Depth-aware: a Chebyshev start, then few Newton steps ---------------------------------
def _unit(u: np.ndarray, low: float) -> np.ndarray:
    """u in [low, 1] mapped to [-1, 1]."""
    return (2.0 * u - 1.0 - low) / (1.0 - low)


#: Relative error of the depth-aware 1/sqrt: 100x under LayerNorm's 1e-3 target, and each
#: Newton step squares it, so a step saved (3 levels) costs nothing measurable.
CHEBYSHEV_RSQRT_TOLERANCE = 1e-5


@functools.cache
def _rsqrt_start(low: float, degree: int) -> tuple[np.ndarray, int]:
    """Chebyshev coefficients of 1/sqrt(u) on [low, 1], and the Newton steps after them that
    bring the relative error below ``CHEBYSHEV_RSQRT_TOLERANCE`` everywhere on the range
    (counted on a fine grid)."""
    coeffs = chebyshev_basis.interpolate(lambda u: 1.0 / np.sqrt(u), low, 1.0, degree)
    coeffs.setflags(write=False)
    u = np.geomspace(low, 1.0, 20001)
    y = chebyshev_basis.evaluate(coeffs, _unit(u, low))
    for steps in range(0, 16):
        if np.max(np.abs(y * np.sqrt(u) - 1.0)) <= CHEBYSHEV_RSQRT_TOLERANCE:
            return coeffs, steps
        y = y * (3.0 - u * y * y) / 2.0
    raise InputError(f"a degree-{degree} start does not converge on [{low:.3g}, 1]")


def chebyshev_start(config: LayerNormConfig) -> tuple[np.ndarray, int]:
    """(Chebyshev coefficients, Newton steps) of the depth-aware 1/sqrt for ``config``."""
    if config.start_degree is None:
        raise InputError("chebyshev_start needs LayerNormConfig.start_degree")
    return _rsqrt_start(config.var_low / config.var_high, config.start_degree)


def chebyshev(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-12,
    config: LayerNormConfig = DEFAULT_LAYERNORM,
) -> np.ndarray:
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last axis; 1/sqrt on u = (var +
    eps) / var_high from a Chebyshev start and ``chebyshev_start``'s Newton steps (the encrypted
    ``he_nonlinear.layernorm_chebyshev`` does the same arithmetic)."""
    z, var = _centred(x, eps)
    check_range("layernorm.variance", var, config.var_low, config.var_high)
    coeffs, steps = chebyshev_start(config)
    u = var / config.var_high
    y = chebyshev_basis.evaluate(coeffs, _unit(u, config.var_low / config.var_high))
    for _ in range(steps):
        y = 1.5 * y - 0.5 * y * (u * (y * y))
    return gamma * z * y / math.sqrt(config.var_high) + beta


# --- CipherPrune ------------------------------------------------------------------------------
#: The variance range of the 2PC rsqrt (MiniLM's and BERT's activations lie inside it; a model
#: may set a wider one: ``BertClassifierWeights.layernorm_range``).
RSQRT_RANGE = LayerNormConfig(var_low=0.05, var_high=256.0)
#: Relative accuracy the 2PC Newton iterations aim for (fixed point holds 2^-18 anyway).
RSQRT_REL_TOL = 1e-4


def rsqrt_iterations(config: LayerNormConfig = RSQRT_RANGE) -> int:
    return newton_iterations(config, rel_tol=RSQRT_REL_TOL)


def rsqrt_start(config: LayerNormConfig = RSQRT_RANGE) -> tuple[float, float]:
    """(a, b) of the start y0 = a - b v: ``newton_start`` on u = v / var_high, rescaled to v."""
    high = config.var_high
    a = newton_start(0.0) / math.sqrt(high)
    b = (newton_start(0.0) - newton_start(1.0)) / high**1.5
    return a, b


def rsqrt(v: torch.Tensor, config: LayerNormConfig = RSQRT_RANGE) -> torch.Tensor:
    """1/sqrt(v) for v in [var_low, var_high]: Newton y <- y (1.5 - (v/2 * y) * y), grouped so
    every intermediate stays far above the fixed-point resolution; ``rsqrt_octaves`` instead
    when ``config.octaves``."""
    if v.numel():
        low, high = float(v.detach().min()), float(v.detach().max())
        if low < config.var_low or high > config.var_high:
            bad = low if low < config.var_low else high
            raise OutOfRangeError("layernorm.rsqrt", config.var_low, config.var_high, bad)
    if config.octaves:
        return rsqrt_octaves(v, config)
    a, b = rsqrt_start(config)
    half_v = 0.5 * v
    y = a - b * v
    for _ in range(rsqrt_iterations(config)):
        y = y * (1.5 - (half_v * y) * y)
    return y


#: Minimax linear start a - b m for 1/sqrt(m) on [1, 2] (relative error 2.2e-2), and the Newton
#: steps after it that bring the relative error under ``RSQRT_REL_TOL`` (each squares it:
#: 7.3e-4, then 8e-7).
OCTAVE_START = (1.2643361668449673, 0.2865)
OCTAVE_NEWTON_STEPS = 2
#: Scale of the 2PC side's powers of two (2^-e and 2^(-e/2) kept to 2^-30).
OCTAVE_FRAC_BITS = 30


def octaves(config: LayerNormConfig) -> tuple[int, list[int]]:
    """(lo, ks): lo = floor(log2 var_low) and the exponents k (lo < k < ceil(log2 var_high)) of
    the powers of two v is compared with; e = lo + #{k : v >= 2^k} puts v / 2^e in [1, 2)."""
    lo = math.floor(math.log2(config.var_low))
    hi = math.ceil(math.log2(config.var_high))
    return lo, list(range(lo + 1, hi))


def octave_weights(config: LayerNormConfig, power: float) -> tuple[float, list[float]]:
    """(c0, c): 2^(-power e) = c0 + sum_k c_k [v >= 2^k] (the steps of a staircase), so the
    2PC side gets it from its comparison bits with local products by public constants."""
    lo, ks = octaves(config)
    levels = [2.0 ** (-power * e) for e in [lo, *ks]]
    return levels[0], [b - a for a, b in zip(levels, levels[1:], strict=False)]


def rsqrt_octaves(v: torch.Tensor, config: LayerNormConfig) -> torch.Tensor:
    """1/sqrt(v) as the 2PC ``nonlinear.rsqrt`` computes it with ``config.octaves``: v / 2^e in
    [1, 2) (e from comparisons with the range's powers of two), the linear start, Newton, and
    2^(-e/2) folded into the last step."""
    lo, ks = octaves(config)
    above = (v.unsqueeze(-1) >= torch.tensor([2.0**k for k in ks], dtype=v.dtype)).to(v.dtype)
    e = lo + above.sum(-1)
    a, b = OCTAVE_START
    half_m = v * torch.pow(2.0, -e - 1.0)
    y = a - (2.0 * b) * half_m
    for step in range(OCTAVE_NEWTON_STEPS):
        scale = torch.pow(2.0, -e / 2.0) if step == OCTAVE_NEWTON_STEPS - 1 else 1.0
        y = (scale * y) * (1.5 - (half_m * y) * y)
    return y


def cipherprune(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
    config: LayerNormConfig = RSQRT_RANGE,
) -> torch.Tensor:
    """gamma * (x - mean) * rsqrt(var + eps) + beta over the last axis."""
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True) + eps
    return xc * rsqrt(var, config) * gamma + beta

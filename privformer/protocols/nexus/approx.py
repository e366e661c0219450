"""The NEXUS nonlinear operators as float64 ``simulate`` twins.

Each function applies exactly the polynomials and iterations its encrypted twin evaluates, so
accuracy can be studied fast and without keys, and checks its input range first: an input
outside the range an approximation is valid on raises ``OutOfRangeError`` naming the operator,
the range and the value (that is how a user finds a wrong pre-scale before an encrypted run).

Operators and their valid inputs:
- ``sgn``: x in [-1, 1]; composite odd degree-9 polynomials of Cheon, Kim, Kim, Lee, Lee
  (Asiacrypt 2020), g4 applied ``g`` times then f4 ``f`` times, depth 4 each;
- ``gelu``: x in [-bound, bound] (default 32: real MiniLM GELU inputs reach -17.2 and 24.6, far
  past NEXUS's [-8, 8]); NEXUS's piecewise form 0 / cubic / middle polynomial / x with
  breakpoints -4, -1.95, 3, pieces selected by SGN indicators (middle: degree 8, evaluated on
  a clamped input, see below);
- ``softmax``: rows whose spread (max - min) is at most 2^r; the row maximum found with SGN-based
  QuickMax and subtracted (so peaked rows stay accurate), exp(z) ~ (1 + z/2^r)^(2^r), the row
  sum by QuickSum, 1/sum by Goldschmidt iteration;
- ``layernorm``: per-token variance in [var_low, var_high]; mean subtraction, inverse square
  root by Newton iteration from a linear initial guess, then gamma and beta;
- ``argmax``: values in [-bound, bound]; log2(m) rounds of max(a, rot(a, 2^i)), then a one-hot
  mask SGN(x - max + margin); exact when the top-2 gap is at least ``2 * margin``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from privformer.errors import OutOfRangeError

# Cheon et al.'s odd degree-9 polynomials, coefficients of x^1, x^3, x^5, x^7, x^9.
F4 = np.array([315.0, -420.0, 378.0, -180.0, 35.0]) / 2**7
G4 = np.array([5850.0, -34974.0, 97015.0, -113492.0, 46623.0]) / 2**10


def check_range(operator: str, x: np.ndarray, low: float, high: float) -> None:
    """Raise ``OutOfRangeError`` naming the first value of ``x`` outside [low, high]."""
    x = np.asarray(x)
    bad = (x < low) | (x > high) | ~np.isfinite(x)
    if bad.any():
        raise OutOfRangeError(operator, low, high, float(x[bad].flat[0]))


def odd_poly(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_k coeffs[k] * x^(2k+1), the form the encrypted evaluator computes in depth 4."""
    x2 = x * x
    return x * np.polynomial.polynomial.polyval(x2, coeffs)


def sgn(x: np.ndarray, g: int = 2, f: int = 2) -> np.ndarray:
    """SGN(x) for x in [-1, 1]: f4^f(g4^g(x)); depth 4 (g + f). The default is NEXUS's depth 16."""
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


# --- GELU ------------------------------------------------------------------------------------
GELU_BREAKS = (-4.0, -1.95, 3.0)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU in float64."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return (0.5 * t * (1.0 + torch.erf(t / math.sqrt(2.0)))).numpy()


def _fit(low: float, high: float, degree: int, sigma: float | None = None) -> np.ndarray:
    """Least-squares fit of exact GELU on [low, high] (power-basis coefficients).

    ``sigma`` weights the fit by a Gaussian prior on the inputs (plus a floor), since GELU
    inputs of a layer-normalised network concentrate near zero; None fits uniformly.
    """
    x = np.linspace(low, high, 4001)
    w = None if sigma is None else np.sqrt(np.exp(-(x**2) / (2 * sigma**2)) + 0.05)
    return np.polynomial.polynomial.polyfit(x, gelu_exact(x), degree, w=w)


# NEXUS uses degree 6 on [-1.95, 3]; measured on real MiniLM GELU inputs (Rotten Tomatoes
# sentences) that piece gives mean |error| 4.3e-3, above the 7.7e-4 NEXUS reports. Degree 8
# (one more level) with a sigma = 1.5 prior gives 5.1e-4 there (max 2.8e-3).
GELU_CUBIC = _fit(GELU_BREAKS[0], GELU_BREAKS[1], 3)
GELU_MID = _fit(GELU_BREAKS[1], GELU_BREAKS[2], 8, sigma=1.5)


@dataclass(frozen=True)
class GeluConfig:
    """Valid input bound and the SGN composition used for the piece indicators."""

    bound: float = 32.0
    g: int = 3
    f: int = 2


DEFAULT_GELU = GeluConfig()

# The middle piece is a degree-8 polynomial: 1.7e7 at x = 24.6, so under CKKS a selector error of
# 1e-9 there would cost 0.017. It is therefore evaluated at x_m = a + W (x - a), W ~ 1[-4 <= x < 5]
# (one more SGN, in parallel): x_m = x wherever the piece is selected, and stays in [a, 5] or
# [-4, a] elsewhere, where the piece is small. Same accuracy as evaluating at x (measured).
GELU_MID_CENTRE = 0.5
GELU_CLAMP_HIGH = 5.0


def gelu(x: np.ndarray, config: GeluConfig = DEFAULT_GELU) -> np.ndarray:
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


# --- slot folding ----------------------------------------------------------------------------
def next_pow2(n: int) -> int:
    """The smallest power of two >= n (the width folds pad to)."""
    return 1 << max(0, (n - 1).bit_length())


def _fold(x: np.ndarray, pad: float, combine) -> np.ndarray:
    """Log-step rotate-and-combine over the last axis, padded with ``pad`` to a power of two.

    This is the slot pattern of the encrypted twin: after log2(width) rounds every slot holds
    the combination of all values (cyclically), so the first n slots are returned.
    """
    n = x.shape[-1]
    width = next_pow2(n)
    acc = np.concatenate([x, np.full((*x.shape[:-1], width - n), pad)], axis=-1)
    step = width // 2
    while step:
        acc = combine(acc, np.roll(acc, -step, axis=-1))
        step //= 2
    return acc[..., :n]


def quick_sum(x: np.ndarray) -> np.ndarray:
    """Rotate-and-add over the last axis (zero-padded); every slot gets the sum."""
    return _fold(x, 0.0, np.add)


def smooth_max(a: np.ndarray, b: np.ndarray, bound: float, g: int, f: int) -> np.ndarray:
    """max(a, b) = (a + b)/2 + (a - b)/2 * SGN((a - b) / (2 bound)), for |a|, |b| <= bound."""
    return 0.5 * (a + b) + 0.5 * (a - b) * sgn((a - b) / (2.0 * bound), g, f)


def quick_max(x: np.ndarray, bound: float, g: int = 3, f: int = 2) -> np.ndarray:
    """Rotate-and-max over the last axis in log2(n) rounds; every slot gets (about) the max.

    Padding slots hold -bound. Each round's error is at most |a - b| (1 - |SGN|) / 2, small
    both when a and b are far apart (SGN saturates) and when they are close (the factor is).
    """
    return _fold(x, -bound, lambda a, b: smooth_max(a, b, bound, g, f))


# --- softmax ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftmaxConfig:
    """exp by (1 + z/2^r)^(2^r), QuickMax on [-bound, bound], Goldschmidt iterations."""

    # r = 16: worst per-row max |error| 3.6e-5 on real MiniLM attention rows; NEXUS's r = 8 gives
    # 9.2e-3 there and r = 14 gives 1.4e-4 (measured). Each unit of r costs one level.
    r: int = 16
    bound: float = 64.0
    goldschmidt_iters: int | None = None  # None: enough for the row length
    g: int = 3
    f: int = 2


DEFAULT_SOFTMAX = SoftmaxConfig()


def exp_approx(z: np.ndarray, r: int) -> np.ndarray:
    """(1 + z/2^r)^(2^r): r squarings; valid for z >= -2^r (the base must stay >= 0)."""
    check_range("softmax.exp", z, -(2.0**r), 1.0)
    y = 1.0 + z / 2.0**r
    for _ in range(r):
        y = y * y
    return y


def goldschmidt_inverse(a: np.ndarray, iters: int) -> np.ndarray:
    """1/a for a in (0, 1]: x <- x (1 + e), e <- e^2 from x = 1, e = 1 - a; error e0^(2^iters)."""
    check_range("softmax.inverse", a, 1e-12, 1.0)
    x, e = np.ones_like(a), 1.0 - a
    for _ in range(iters):
        x = x * (1.0 + e)
        e = e * e
    return x


def softmax(x: np.ndarray, config: SoftmaxConfig = SoftmaxConfig()) -> np.ndarray:
    """Softmax over the last axis with encrypted-friendly max subtraction, exp and inverse."""
    x = np.asarray(x, dtype=np.float64)
    check_range("softmax", x, -config.bound, config.bound)
    n = x.shape[-1]
    z = x - quick_max(x, config.bound, config.g, config.f)
    # QuickMax under-estimates the max by a little, so z may be slightly positive; exp_approx
    # accepts up to 1 and raises beyond it rather than silently clipping.
    e = exp_approx(z, config.r)
    # After max subtraction the row sum lies in [~1, n]; scale it into (0, 1] for Goldschmidt.
    s = quick_sum(e) / n
    iters = config.goldschmidt_iters or math.ceil(math.log2(max(2.0, 20.0 * n)))
    return e * goldschmidt_inverse(np.clip(s, 1e-12, 1.0), iters) / n


# --- LayerNorm -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerNormConfig:
    """Valid per-token variance range and Newton iterations for 1/sqrt (None: enough for 1e-6)."""

    var_low: float = 0.05  # MiniLM's LayerNorm inputs: variance 0.145 .. 129.7 (measured)
    var_high: float = 256.0
    input_bound: float = 256.0  # |x| (MiniLM's reach 220); bootstraps are scaled for it
    newton_iters: int | None = None


DEFAULT_LAYERNORM = LayerNormConfig()


def newton_start(u: np.ndarray) -> np.ndarray:
    """Initial guess inside Newton's basin 0 < y0 < sqrt(3/u) for every u in (0, 1].

    1/sqrt(u) is convex, so its chords lie above it and can leave the basin; instead take 0.9x
    the tangent of sqrt(3/u) at u = 1/2, which lies below sqrt(3/u) and stays positive on (0, 1].
    """
    return 0.9 * math.sqrt(6.0) * (1.5 - u)


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
    raise ValueError("variance range too wide for Newton's method from this start")


def inv_sqrt(v: np.ndarray, config: LayerNormConfig = LayerNormConfig()) -> np.ndarray:
    """1/sqrt(v) by Newton, y <- y (3 - u y^2) / 2 on u = v / var_high (in (0, 1])."""
    check_range("layernorm.inv_sqrt", v, config.var_low, config.var_high)
    u = v / config.var_high
    return _newton(u, newton_iterations(config)) / math.sqrt(config.var_high)


def layernorm(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-12,
    config: LayerNormConfig = LayerNormConfig(),
) -> np.ndarray:
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last axis, 1/sqrt by Newton."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    z = x - quick_sum(x) / n
    var = quick_sum(z * z) / n + eps
    return gamma * z * inv_sqrt(var, config) + beta


# --- argmax ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArgmaxConfig:
    """Values in [-bound, bound]; the mask is exact for top-2 gaps >= 4 * margin * bound, i.e.
    2 * margin of the full range 2 * bound (1e-2 of the range with the default margin)."""

    bound: float = 1.0
    margin: float = 0.005  # fraction of the full range 2 * bound
    g: int = 4
    f: int = 2


DEFAULT_ARGMAX = ArgmaxConfig()


def argmax_onehot(x: np.ndarray, config: ArgmaxConfig = ArgmaxConfig()) -> np.ndarray:
    """One-hot of the maximum: QuickMax in log2(m) rounds, then (1 + SGN(x - max + d)) / 2.

    d = margin * 2 * bound; with the top-2 gap >= 2d, the top slot's argument is >= d and every
    other one's is <= -d, where SGN has saturated (see ``sgn_error``).
    """
    x = np.asarray(x, dtype=np.float64)
    check_range("argmax", x, -config.bound, config.bound)
    m = quick_max(x, config.bound, config.g, config.f)
    d = config.margin * 2.0 * config.bound
    arg = np.clip((x - m + d) / (4.0 * config.bound), -1.0, 1.0)
    return 0.5 * (1.0 + sgn(arg, config.g, config.f))

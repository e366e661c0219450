"""Softmax recipes and their float twins.

- ``nexus`` (numpy): rows whose spread is at most 2^r; the row maximum found with SGN-based
  QuickMax and subtracted (peaked rows stay accurate), exp(z) ~ (1 + z/2^r)^(2^r), the row sum
  by QuickSum, 1/sum by Goldschmidt iteration.
- ``squaring`` (numpy): no maximum at all, for a fixed bootstrap window. The scores are centred on
  their row mean over the real keys (so the largest is >= 0 and the row sum has a lower bound),
  exp((z - high) / 2^k) is one Chebyshev interpolant on the calibrated range of z, and ``rounds``
  = k normalize-and-square rounds (Cho et al., CCS 2024; THOR) give exp(z)^... / sum: each round
  squares, sums the row, inverts the row sum (Goldschmidt, then one Newton step) and multiplies.
  Every inverse sees a sum in [v_low, 1] with a ratio bounded by the calibration, not by the data.
- ``cipherprune`` (torch): max subtraction by comparisons, exp clamped at -clamp then
  Taylor_k(x / 2^s)^(2^s), the reciprocal of the row sum by Newton's iteration; a
  high-accuracy and a reduced exp recipe.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from privformer.approx import chebyshev as chebyshev_basis
from privformer.approx.folds import quick_max, quick_sum
from privformer.approx.ranges import check_range
from privformer.errors import InputError


# --- NEXUS ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftmaxConfig:
    """exp by (1 + z/2^r)^(2^r), QuickMax on [-bound, bound], Goldschmidt iterations."""

    # Each unit of r costs one level; docs/nexus.md lists the per-row errors of r = 8, 14, 16.
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


def goldschmidt_iterations(width: int, config: SoftmaxConfig) -> int:
    """Goldschmidt steps for rows of ``width`` values (the row sum / width is >= 1 / width)."""
    return config.goldschmidt_iters or math.ceil(math.log2(max(2.0, 20.0 * width)))


def goldschmidt_inverse(a: np.ndarray, iters: int) -> np.ndarray:
    """1/a for a in (0, 1]: x <- x (1 + e), e <- e^2 from x = 1, e = 1 - a; error e0^(2^iters)."""
    check_range("softmax.inverse", a, 1e-12, 1.0)
    x, e = np.ones_like(a), 1.0 - a
    for _ in range(iters):
        x = x * (1.0 + e)
        e = e * e
    return x


def nexus(x: np.ndarray, config: SoftmaxConfig = DEFAULT_SOFTMAX) -> np.ndarray:
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
    iters = goldschmidt_iterations(n, config)
    return e * goldschmidt_inverse(np.clip(s, 1e-12, 1.0), iters) / n


# --- Normalize-and-square (no maximum; fits fixed bootstrap windows) -------------------------
@dataclass(frozen=True)
class SquaringSoftmaxConfig:
    """Softmax by exp of row-centred scores and ``rounds`` normalize-and-square rounds.

    ``low``, ``high``: the calibrated range of z = x - (mean of the row over its real keys),
    over the real queries. ``high`` bounds how far a row's maximum lies above its mean, so
    every row sum has a lower bound (``inverse_range``).

    Only the last round's inverse must be accurate: an earlier round's relative error c is
    the same for the whole row, so it scales that row by c^(2^j) and the last normalisation
    removes it. Earlier rounds only keep the sums in range (``rough_tolerance``).
    """

    low: float = -48.0
    high: float = 48.0
    rounds: int = 4
    exp_degree: int = 15
    inverse_degree: int = 31  # the Chebyshev start of each inverse, before Newton steps
    rough_tolerance: float = 1e-2
    final_tolerance: float = 1e-7

    @property
    def exp_coeffs(self) -> np.ndarray:
        """Chebyshev coefficients of u -> exp((z(u) - high) / 2^rounds), z(u) on [low, high]."""
        return _squaring_exp_coeffs(self.low, self.high, self.rounds, self.exp_degree)

    def tolerance(self, round_index: int) -> float:
        return self.final_tolerance if round_index == self.rounds - 1 else self.rough_tolerance

    def inverse_range(self, round_index: int, tokens: int) -> tuple[float, float]:
        """[low, high] of the (scaled) row sum round ``round_index`` inverts.

        Round 0 sums e^2 / m with e = exp((z - high) / 2^k) <= 1 over m real keys; their z
        average 0, so by Jensen the sum is >= exp(-2 high / 2^k). A later round sums the
        squares of a row normalised up to the previous inverse's error d: within
        [(1 - d)^2 / tokens, (1 + d)^2]."""
        # 1% of slack on each side: exp's interpolant and CKKS noise move the sums a little
        # (a row of equal scores, e.g. a padding query's, sits exactly on the Jensen bound).
        if round_index == 0:
            return 0.99 * math.exp(-2.0 * self.high / 2.0**self.rounds), 1.01
        d = self.tolerance(round_index - 1)
        return 0.99 * (1.0 - d) ** 2 / tokens, 1.01 * (1.0 + d) ** 2


@functools.cache
def _squaring_exp_coeffs(low: float, high: float, rounds: int, degree: int) -> np.ndarray:
    if not low < 0.0 < high:
        raise InputError(f"the centred range [{low}, {high}] must contain 0")

    def f(z: np.ndarray) -> np.ndarray:
        return np.exp((z - high) / 2.0**rounds)

    coeffs = chebyshev_basis.interpolate(f, low, high, degree)
    coeffs.setflags(write=False)
    return coeffs


@dataclass(frozen=True)
class InversePlan:
    """1/v on [low, high]: a Chebyshev start (relative error <= ``start_error``), then
    ``newton_steps`` of y <- y (2 - v y), each squaring the relative error."""

    low: float
    high: float
    coeffs: np.ndarray
    start_error: float
    newton_steps: int


@functools.cache
def inverse_plan(low: float, high: float, degree: int, tolerance: float) -> InversePlan:
    if not 0.0 < low < high:
        raise InputError(f"inverse range [{low}, {high}] must be positive and non-empty")
    coeffs = chebyshev_basis.interpolate(lambda v: 1.0 / v, low, high, degree)
    coeffs.setflags(write=False)
    v = np.geomspace(low, high, 20001)
    # 5% above the largest error on a fine grid: the bound the step count is derived from.
    error = 1.05 * float(
        np.abs(1.0 - v * chebyshev_basis.evaluate(coeffs, _unit(v, low, high))).max()
    )
    if error >= 1.0:
        raise InputError(f"a degree-{degree} start cannot invert [{low:.3g}, {high:.3g}]")
    steps = 0
    while error ** (2**steps) > tolerance:
        steps += 1
    return InversePlan(low, high, coeffs, error, steps)


def _unit(v: np.ndarray, low: float, high: float) -> np.ndarray:
    """v on [low, high] mapped to [-1, 1]."""
    return (2.0 * v - (low + high)) / (high - low)


def inverse(v: np.ndarray, plan: InversePlan) -> np.ndarray:
    """1/v for v in [plan.low, plan.high]: the Chebyshev start, then Newton steps."""
    check_range("softmax.inverse", v, plan.low * (1.0 - 1e-9), plan.high * (1.0 + 1e-9))
    y = chebyshev_basis.evaluate(plan.coeffs, _unit(v, plan.low, plan.high))
    for _ in range(plan.newton_steps):
        y = y * (2.0 - v * y)
    return y


def round_inverse_plan(config: SquaringSoftmaxConfig, round_index: int, tokens: int) -> InversePlan:
    low, high = config.inverse_range(round_index, tokens)
    return inverse_plan(low, high, config.inverse_degree, config.tolerance(round_index))


def squaring(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    config: SquaringSoftmaxConfig | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax over the last axis of ``x`` (rows of n scores), keys where ``mask`` is False
    excluded (probability 0). Rows where ``rows`` (over the second-last axis) is False are
    padding queries: their scores are replaced by zeros (a uniform row), so their ranges never
    matter. The encrypted circuit ``he_nonlinear.softmax_squaring`` does the same arithmetic
    in the same order."""
    config = config or SquaringSoftmaxConfig()
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    keys = np.ones(n) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), x.shape)
    real = keys.sum(axis=-1, keepdims=True)  # m, the real keys per row
    if np.any(real < 1):
        raise InputError("softmax: every row needs at least one real key")
    if rows is not None:
        x = x * np.asarray(rows, np.float64)[..., :, None]
    mid, half = 0.5 * (config.low + config.high), 0.5 * (config.high - config.low)
    z = x - (x * keys / real).sum(axis=-1, keepdims=True)  # centred on the real keys' mean
    check_range("softmax.centred", z, config.low, config.high)
    q = keys * chebyshev_basis.evaluate(config.exp_coeffs, (z - mid) / half)  # exp((z-high)/2^k)
    for i in range(config.rounds):
        q2 = q * q
        # Round 0's sum is divided by m to land in [inverse_low(0), 1].
        scale = 1.0 / real if i == 0 else 1.0
        v = q2.sum(axis=-1, keepdims=True) * scale
        q = q2 * (inverse(v, round_inverse_plan(config, i, n)) * scale)
    return q


# --- CipherPrune ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpApprox:
    """exp(x) for x <= 0: 0 below -clamp, else (Taylor_k(x / 2^s))^(2^s)."""

    name: str
    clamp: float
    taylor: int
    squarings: int


#: The accurate exp (docs/cipherprune.md gives its error on [-16, 0]).
EXP_HIGH = ExpApprox("exp-high", 16.0, 3, 6)
#: The reduced exp: three fewer multiplications.
EXP_LOW = ExpApprox("exp-low", 16.0, 2, 4)


def exp_neg(x: torch.Tensor, cfg: ExpApprox = EXP_HIGH) -> torch.Tensor:
    """exp on x <= 0 (softmax after max subtraction)."""
    xc = torch.clamp(x, min=-cfg.clamp)
    y = xc / (1 << cfg.squarings)
    p = sum((y**k / math.factorial(k) for k in range(cfg.taylor + 1)), torch.zeros_like(y))
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


def cipherprune(
    x: torch.Tensor, mask_add: torch.Tensor | None, cfg: ExpApprox = EXP_HIGH
) -> torch.Tensor:
    """Softmax over the last axis with max subtraction, approximate exp and Newton reciprocal.
    ``mask_add`` (0 or a large negative number per key) is added before the max."""
    if mask_add is not None:
        x = x + mask_add
    z = x - x.max(dim=-1, keepdim=True).values
    e = exp_neg(z, cfg)
    return e * reciprocal(e.sum(dim=-1, keepdim=True), float(x.shape[-1]))

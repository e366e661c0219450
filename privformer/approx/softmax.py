"""Softmax recipes and their float twins.

- ``nexus`` (numpy): rows whose spread is at most 2^r; the row maximum found with SGN-based
  QuickMax and subtracted (peaked rows stay accurate), exp(z) ~ (1 + z/2^r)^(2^r), the row sum
  by QuickSum, 1/sum by Goldschmidt iteration.
- ``cipherprune`` (torch): max subtraction by comparisons, exp clamped at -clamp then
  Taylor_k(x / 2^s)^(2^s), the reciprocal of the row sum by Newton's iteration; a
  high-accuracy and a reduced exp recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from privformer.approx.folds import quick_max, quick_sum
from privformer.approx.ranges import check_range


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

"""NEXUS's argmax recipe: log2(m) QuickMax rounds, then a one-hot mask SGN(x - max + margin)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privformer.approx.folds import quick_max
from privformer.approx.ranges import check_range
from privformer.approx.sign import sgn


@dataclass(frozen=True)
class ArgmaxConfig:
    """Values in [-bound, bound]; the mask is exact for top-2 gaps >= 4 * margin * bound, i.e.
    2 * margin of the full range 2 * bound (1e-2 of the range with the default margin)."""

    bound: float = 1.0
    margin: float = 0.005  # fraction of the full range 2 * bound
    g: int = 4
    f: int = 2


DEFAULT_ARGMAX = ArgmaxConfig()


def argmax_onehot(x: np.ndarray, config: ArgmaxConfig = DEFAULT_ARGMAX) -> np.ndarray:
    """One-hot of the maximum: QuickMax in log2(m) rounds, then (1 + SGN(x - max + d)) / 2.

    d = margin * 2 * bound; with the top-2 gap >= 2d, the top slot's argument is >= d and every
    other one's is <= -d, where SGN has saturated (see ``sign.sgn_error``).
    """
    x = np.asarray(x, dtype=np.float64)
    check_range("argmax", x, -config.bound, config.bound)
    m = quick_max(x, config.bound, config.g, config.f)
    d = config.margin * 2.0 * config.bound
    arg = np.clip((x - m + d) / (4.0 * config.bound), -1.0, 1.0)
    return 0.5 * (1.0 + sgn(arg, config.g, config.f))

"""Log-step rotate-and-combine over the last axis: the slot pattern of QuickSum and QuickMax.

After log2(width) rounds every slot holds the combination of all values (cyclically), exactly as
the encrypted rotations leave them; the first n slots are returned.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from privformer.approx.sign import smooth_max


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (the width folds pad to)."""
    return 1 << max(0, (n - 1).bit_length())


def fold(
    x: np.ndarray, pad: float, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Rotate-and-combine over the last axis, padded with ``pad`` to a power of two."""
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
    return fold(x, 0.0, np.add)


def quick_max(x: np.ndarray, bound: float, g: int = 3, f: int = 2) -> np.ndarray:
    """Rotate-and-max over the last axis in log2(n) rounds; every slot gets (about) the max.

    Padding slots hold -bound. Each round's error is at most |a - b| (1 - |SGN|) / 2, small
    both when a and b are far apart (SGN saturates) and when they are close (the factor is).
    """
    return fold(x, -bound, lambda a, b: smooth_max(a, b, bound, g, f))

"""The input-range check every float twin runs before it approximates anything."""

from __future__ import annotations

import numpy as np

from privformer.errors import OutOfRangeError


def check_range(operator: str, x: np.ndarray, low: float, high: float) -> None:
    """Raise ``OutOfRangeError`` naming the first value of ``x`` outside [low, high] (or not
    finite): that is how a user finds a wrong pre-scale before an encrypted run."""
    x = np.asarray(x)
    bad = (x < low) | (x > high) | ~np.isfinite(x)
    if bad.any():
        raise OutOfRangeError(operator, low, high, float(x[bad].flat[0]))

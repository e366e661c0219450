"""The ring Z_{2^64} on torch int64 (wrap-around arithmetic) and its fixed-point encoding.

A real x is stored as round(x * 2^FRAC_BITS). 18 fractional bits (the precision SPU uses for a
64-bit ring) leave 2^(62-36) = 6.7e7 of headroom for the product of two encoded values before
truncation, which the truncation protocol needs (|x| < 2^62, see ``shared.truncate``).
"""

from __future__ import annotations

import torch

from privformer.errors import OutOfRangeError

FRAC_BITS = 18
SCALE = 1 << FRAC_BITS
#: Largest magnitude an encoded input may have: products of two such values stay below 2^62.
MAX_INPUT = float(1 << 20)
RING_BITS = 64


def encode(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    """Fixed-point encoding of a float tensor; refuses NaN, inf and |x| >= MAX_INPUT."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if not torch.isfinite(x).all():
        raise OutOfRangeError(name, -MAX_INPUT, MAX_INPUT, float("nan"))
    if x.numel() and x.abs().max() >= MAX_INPUT:
        worst = float(x.flatten()[x.abs().flatten().argmax()])
        raise OutOfRangeError(name, -MAX_INPUT, MAX_INPUT, worst)
    return torch.round(x * SCALE).to(torch.int64)


def decode(v: torch.Tensor) -> torch.Tensor:
    """Float64 value of a fixed-point ring element (read as a signed integer)."""
    return v.to(torch.float64) / SCALE


def logical_shift_right(v: torch.Tensor, bits: int) -> torch.Tensor:
    """v >> bits on the unsigned reading of v (torch's >> on int64 is arithmetic)."""
    if bits == 0:
        return v.clone()
    return (v >> bits) & ((1 << (RING_BITS - bits)) - 1)


def msb(v: torch.Tensor) -> torch.Tensor:
    """Top bit of the unsigned reading of v, as 0/1 int64."""
    return (v >> (RING_BITS - 1)) & 1

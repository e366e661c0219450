"""Comparison under 2PC: the sign bit of a shared value, selection by a shared bit, the maximum.

``ltz`` converts the arithmetic shares x0, x1 into binary shares of their sum with a Kogge-Stone
adder (log2 64 = 6 levels of bitwise Beaver ANDs on 64-bit words, plus one for the initial
generate bits), takes the sign bit and converts it back with a daBit: 8 rounds. Bits are shared
as 0/1 integers, so multiplying by a bit needs no truncation.
"""

from __future__ import annotations

import torch

from privformer.crypto.mpc.party import CLIENT, Party
from privformer.crypto.mpc.shared import Shared, cat, mul

_ADDER_LEVELS = 6  # log2(64)


def _and(p: Party, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bitwise AND of two XOR-shared word tensors (one round)."""
    t = p.dealer.get("and", shape=a.shape)
    d_mine, e_mine = a ^ t["a"], b ^ t["b"]
    d_other, e_other = p.peer.exchange([d_mine, e_mine], "and")
    d, e = d_mine ^ d_other, e_mine ^ e_other
    z = t["c"] ^ (d & t["b"]) ^ (t["a"] & e)
    if p.role == CLIENT:
        z = z ^ (d & e)
    return z


def bits_to_arith(p: Party, bits: torch.Tensor) -> Shared:
    """XOR-shared bits (0/1 words) to additive shares of the same bits (one round)."""
    t = p.dealer.get("dabit", shape=bits.shape)
    masked = bits ^ t["rb"]
    (other,) = p.peer.exchange([masked], "b2a")
    c = masked ^ other
    z = t["ra"] * (1 - 2 * c)
    if p.role == CLIENT:
        z = z + c
    return Shared(z, p)


def ltz(x: Shared) -> Shared:
    """Shares of the bit [x < 0] (x read as a signed ring element). 8 rounds."""
    p = x.party
    zero = torch.zeros_like(x.share)
    a, b = (x.share, zero) if p.role == CLIENT else (zero, x.share)
    propagate = x.share  # XOR shares of a ^ b: each party's share is its own addend
    generate = _and(p, a, b)
    prop = propagate
    for level in range(_ADDER_LEVELS):
        shift = 1 << level
        if level < _ADDER_LEVELS - 1:
            both = _and(p, torch.cat([prop, prop]), torch.cat([generate << shift, prop << shift]))
            half = prop.shape[0] if prop.dim() else 1
            generate = generate ^ both[:half]
            prop = both[half:]
        else:
            generate = generate ^ _and(p, prop, generate << shift)
    sign = ((propagate ^ (generate << 1)) >> 63) & 1
    return bits_to_arith(p, sign)


def select(bit: Shared, if_one: Shared, if_zero: Shared) -> Shared:
    """bit ? if_one : if_zero, with ``bit`` 0/1 integer shares (one round)."""
    return if_zero + mul(bit, if_one - if_zero, fixed_point=False)


def max_lastdim(x: Shared) -> Shared:
    """Maximum over the last axis by a tree of comparisons: ceil(log2 n) levels of 9 rounds."""
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        left, right, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
        left_smaller = ltz(left - right)
        x = cat([select(left_smaller, right, left), rest], dim=-1)
    return x

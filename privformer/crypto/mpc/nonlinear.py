"""Comparison and the nonlinear functions under 2PC, evaluating exactly ``approx``'s formulas.

Comparison (``ltz``) converts the arithmetic shares x0, x1 into binary shares of their sum with a
Kogge-Stone adder (log2 64 = 6 levels of bitwise Beaver ANDs on 64-bit words, plus one for the
initial generate bits), takes the sign bit and converts it back with a daBit: 8 rounds. Bits are
shared as 0/1 integers, so multiplying by a bit needs no truncation.
"""

from __future__ import annotations

import math

import torch

from privformer.crypto.mpc import approx, fixed
from privformer.crypto.mpc.party import CLIENT, Party
from privformer.crypto.mpc.shared import Shared, cat, mul, mul_public, truncate

_ADDER_LEVELS = 6  # log2(64)
COEFF_BITS = 26


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


def polynomial(u: Shared, coeffs: tuple[float, ...], frac_bits: int = fixed.FRAC_BITS) -> Shared:
    """sum_k c_k u^k. Powers come in doubling levels (u^(k+1..2k) = u^k * u^(1..k), one batched
    product per level, so degree d costs ceil(log2 d) products), then one truncation for the sum.
    ``u`` and the result are at scale 2^frac_bits."""
    degree = len(coeffs) - 1
    powers = {1: u}
    k = 1
    while k < degree:
        todo = [j for j in range(1, k + 1) if k + j <= degree]
        prod = mul(
            cat([powers[k]] * len(todo), 0), cat([powers[j] for j in todo], 0), frac_bits=frac_bits
        )
        n = u.shape[0]
        for i, j in enumerate(todo):
            powers[k + j] = prod[i * n : (i + 1) * n]
        k *= 2
    scale = float(1 << frac_bits)
    acc = torch.zeros_like(u.share)
    for deg in range(1, degree + 1):
        acc = acc + powers[deg].share * int(round(coeffs[deg] * scale))
    out = truncate(Shared(acc, u.party), frac_bits)
    return out.add_public(
        int(round(coeffs[0] * scale)) * torch.ones((), dtype=torch.int64), encoded=True
    )


def gelu(x: Shared, cfg: approx.GeluApprox = approx.GELU_HIGH) -> Shared:
    """Piecewise GELU of ``approx.gelu``: 2 or 3 comparisons in one batch, one polynomial."""
    checks = [x.add_public(cfg.bound), (-x).add_public(cfg.bound)]  # x < -b, x > b
    if cfg.in_abs:
        checks.append(x)
    n = x.shape[0]
    bits = ltz(cat(checks, 0))
    below, above = bits[:n], bits[n : 2 * n]
    if cfg.in_abs:
        neg = bits[2 * n :]
        u = x - mul(neg, x, fixed_point=False).mul_int(2)  # |x|
    else:
        u = mul(x, x)
    inner = polynomial(u, cfg.coeffs) + mul_public(x, 0.5)
    # inner + above * (x - inner) - below * inner, both products in one round
    prods = mul(cat([above, below], 0), cat([x - inner, -inner], 0), fixed_point=False)
    return inner + prods[:n] + prods[n:]


#: exp's polynomial and squarings run on values in [0, 1] (after clamping, |x / 2^s| <= 1/4), so
#: they can carry 30 fractional bits (products stay below 2^60): the 2^s squarings then amplify
#: a 2^-30 rounding instead of a 2^-18 one.
EXP_FRAC_BITS = 30


def exp_neg(x: Shared, cfg: approx.ExpApprox = approx.EXP_HIGH) -> Shared:
    """exp on x <= 0 as in ``approx.exp_neg``."""
    below = ltz(x.add_public(cfg.clamp))
    clamp = torch.full_like(x.share, 0)
    xc = select(below, Shared(clamp, x.party).add_public(-cfg.clamp), x)
    extra = EXP_FRAC_BITS - fixed.FRAC_BITS
    # y = xc / 2^s at scale 2^30: a local shift when s <= extra, exact
    y = xc.mul_int(1 << (extra - cfg.squarings))
    p = polynomial(y, tuple(1.0 / math.factorial(k) for k in range(cfg.taylor + 1)), EXP_FRAC_BITS)
    for _ in range(cfg.squarings):
        p = mul(p, p, frac_bits=EXP_FRAC_BITS)
    p = truncate(p, extra)
    return p - mul(below, p, fixed_point=False)


def reciprocal(d: Shared, upper: float) -> Shared:
    """1/d for d in [1, upper] (Newton from 1/upper, ``approx.reciprocal``), returned at scale
    2^30: 1/d is small when d is large, and 18 bits would leave it a relative error of 1e-4.
    Products stay below 2^61 because d y <= 2 and y <= 1."""
    fine = EXP_FRAC_BITS
    y = Shared(torch.zeros_like(d.share), d.party).add_public(
        int(round((1 << fine) / upper)) * torch.ones((), dtype=torch.int64), encoded=True
    )
    two = (2 << fine) * torch.ones((), dtype=torch.int64)
    for _ in range(approx.reciprocal_iterations(upper)):
        dy = mul(d, y)  # scale 2^(18 + 30) -> 2^30
        y = mul(y, (-dy).add_public(two, encoded=True), frac_bits=fine)
    return y


def softmax(x: Shared, mask_add: Shared | None, cfg: approx.ExpApprox = approx.EXP_HIGH) -> Shared:
    """Softmax over the last axis (rows of x are independent) as in ``approx.softmax``."""
    if mask_add is not None:
        x = x + mask_add
    z = x - max_lastdim(x)
    e = exp_neg(z, cfg)
    recip = reciprocal(e.sum(-1, keepdim=True), float(x.shape[-1]))
    return mul(e, recip, frac_bits=EXP_FRAC_BITS)


def rsqrt(v: Shared) -> Shared:
    """1/sqrt(v) for v in the LayerNorm range (``approx.rsqrt``)."""
    a, b = approx.rsqrt_start()
    half_v = truncate(v, 1)
    y = mul_public(v, -b).add_public(a)
    for _ in range(approx.rsqrt_iterations()):
        y = mul(y, (-mul(mul(half_v, y), y)).add_public(1.5))
    return y


def layernorm(
    x: Shared, name: str, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float
) -> Shared:
    """LayerNorm over the last axis; gamma, beta are party 1's ring tensors (party 0: None)."""
    from privformer.crypto.mpc.shared import scale_by_weight

    d = x.shape[-1]
    mean = mul_public(x.sum(-1, keepdim=True), 1.0 / d)
    xc = x - mean
    var = mul_public(mul(xc, xc).sum(-1, keepdim=True), 1.0 / d).add_public(eps)
    normed = mul(xc, rsqrt(var))
    return scale_by_weight(normed, name, gamma, (d,)).add_server_value(beta)

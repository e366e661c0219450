"""CipherPrune's transformer nonlinearities under 2PC: GELU, exp, softmax, 1/sqrt, LayerNorm.

Each evaluates exactly the recipe of its float twin in ``privformer.approx`` (the same
polynomials, clamps and iteration counts) on secret shares, so a 2PC run differs from
``simulate`` only by fixed-point rounding. The ``*_rows`` forms give the first ``n_high`` rows
the accurate recipe and the rest the reduced one, in shared rounds.
"""

from __future__ import annotations

import math

import torch

from privformer.approx.gelu import GELU_HIGH, GELU_LOW, GeluApprox
from privformer.approx.layernorm import (
    OCTAVE_FRAC_BITS,
    OCTAVE_NEWTON_STEPS,
    OCTAVE_START,
    RSQRT_RANGE,
    LayerNormConfig,
    octave_weights,
    octaves,
    rsqrt_iterations,
    rsqrt_start,
)
from privformer.approx.softmax import EXP_HIGH, EXP_LOW, ExpApprox, reciprocal_iterations
from privformer.crypto.mpc import fixed
from privformer.crypto.mpc.compare import ltz, max_lastdim, select
from privformer.crypto.mpc.shared import (
    Shared,
    cat,
    mul,
    mul_public,
    one_minus_bit,
    scale_by_weight,
    truncate,
)
from privformer.errors import InputError

COEFF_BITS = 26


def _split_flat(x: Shared, n_high: int, dim: int) -> tuple[Shared, Shared]:
    size = x.shape[dim]
    hi = Shared(x.share.narrow(dim, 0, n_high).reshape(-1), x.party)
    lo = Shared(x.share.narrow(dim, n_high, size - n_high).reshape(-1), x.party)
    return hi, lo


def _join_flat(flat: Shared, like: Shared, n_high: int, dim: int) -> Shared:
    shape_hi = list(like.shape)
    shape_hi[dim] = n_high
    shape_lo = list(like.shape)
    shape_lo[dim] = like.shape[dim] - n_high
    k = math.prod(shape_hi)
    hi = flat.share[:k].reshape(shape_hi)
    lo = flat.share[k:].reshape(shape_lo)
    return Shared(torch.cat([hi, lo], dim=dim), like.party)


def gelu_rows(
    x: Shared,
    n_high: int,
    high: GeluApprox = GELU_HIGH,
    low: GeluApprox = GELU_LOW,
) -> Shared:
    """``approx.gelu.cipherprune`` with ``high`` on the first n_high rows (dim 0) and ``low`` on
    the rest, both groups in the same rounds: one batch of comparisons, one of products a level."""
    if not high.in_abs or low.in_abs or low.degree != 1:
        raise InputError("gelu_rows pairs an abs-polynomial high GELU with a quadratic low one")
    hi, lo = _split_flat(x, n_high, 0)
    h, n_lo = hi.shape[0], lo.shape[0]
    checks = [
        hi.add_public(high.bound),
        (-hi).add_public(high.bound),
        hi,
        lo.add_public(low.bound),
        (-lo).add_public(low.bound),
    ]
    bits = ltz(cat(checks, 0))
    below = cat([bits[:h], bits[3 * h : 3 * h + n_lo]], 0)
    above = cat([bits[h : 2 * h], bits[3 * h + n_lo :]], 0)
    neg = bits[2 * h : 3 * h]
    # |x| for high rows (bit times value) and x^2 for low rows, in one Beaver round
    prod = mul(cat([neg, lo], 0), cat([hi, lo], 0), fixed_point=False)
    u_hi = hi - prod[:h].mul_int(2)
    u_lo = truncate(prod[h:])
    # high: powers u^2, then u^3 and u^4 (two levels); low needs none (degree 1 in x^2)
    u2 = mul(u_hi, u_hi)
    u34 = mul(cat([u2, u2], 0), cat([u_hi, u2], 0))
    powers_hi = [u_hi, u2, u34[:h], u34[h:]]
    scale = 1 << COEFF_BITS
    acc_hi = hi.share * (scale // 2)  # 0.5 x folded into the same truncation
    for k, c in enumerate(high.coeffs[1:], start=1):
        acc_hi = acc_hi + powers_hi[k - 1].share * int(round(c * scale))
    acc_lo = lo.share * (scale // 2) + u_lo.share * int(round(low.coeffs[1] * scale))
    inner = truncate(Shared(torch.cat([acc_hi, acc_lo]), x.party), COEFF_BITS)
    consts = torch.cat([torch.full((h,), high.coeffs[0]), torch.full((n_lo,), low.coeffs[0])])
    inner = inner.add_public(fixed.encode(consts), encoded=True)
    flat = cat([hi, lo], 0)
    # inner + above * (x - inner) - below * inner, both products in one round
    m = h + n_lo
    prods = mul(cat([above, below], 0), cat([flat - inner, -inner], 0), fixed_point=False)
    return _join_flat(inner + prods[:m] + prods[m:], x, n_high, 0)


def gelu(x: Shared, cfg: GeluApprox = GELU_HIGH) -> Shared:
    """``approx.gelu.cipherprune`` with one configuration on every element."""
    n = x.shape[0]
    return gelu_rows(x, n, high=cfg) if cfg.in_abs else gelu_rows(x, 0, low=cfg)


#: exp's polynomial and squarings run on values in [0, 1] (after clamping, |x / 2^s| <= 1/4), so
#: they can carry 30 fractional bits (products stay below 2^60): the 2^s squarings then amplify
#: a 2^-30 rounding instead of a 2^-18 one.
EXP_FRAC_BITS = 30


def exp_neg_rows(
    x: Shared,
    n_high: int,
    dim: int,
    high: ExpApprox = EXP_HIGH,
    low: ExpApprox = EXP_LOW,
) -> Shared:
    """``approx.softmax.exp_neg`` with ``high`` on the first n_high rows along ``dim`` and
    ``low`` on the rest. The groups share rounds: the low group simply stops earlier (``high``
    must need at least as many Taylor terms and squarings, and the same clamp)."""
    if high.clamp != low.clamp or high.taylor < low.taylor or high.squarings < low.squarings:
        raise InputError("exp_neg_rows needs high >= low in Taylor degree and squarings")
    hi, lo = _split_flat(x, n_high, dim)
    h = hi.shape[0]
    flat = cat([hi, lo], 0)
    below = ltz(flat.add_public(high.clamp))
    xc = select(below, Shared(torch.zeros_like(flat.share), x.party).add_public(-high.clamp), flat)
    extra = EXP_FRAC_BITS - fixed.FRAC_BITS
    shifts = torch.cat(
        [
            torch.full((h,), 1 << (extra - high.squarings)),
            torch.full((lo.shape[0],), 1 << (extra - low.squarings)),
        ]
    )
    y = xc.mul_int(shifts)  # x / 2^s at scale 2^30, exact
    # Taylor terms: y^k for k <= low.taylor on every element, beyond only on the high prefix
    powers = [y]
    for k in range(2, high.taylor + 1):
        end = y.shape[0] if k <= low.taylor else h
        powers.append(mul(powers[-1][:end], y[:end], frac_bits=EXP_FRAC_BITS))
    scale = 1 << EXP_FRAC_BITS
    acc = torch.zeros_like(y.share)
    for k, pk in enumerate(powers, start=1):
        coeff = int(round(scale / math.factorial(k)))
        acc[: pk.shape[0]] += pk.share * coeff
    p = truncate(Shared(acc, x.party), EXP_FRAC_BITS).add_public(
        scale * torch.ones((), dtype=torch.int64), encoded=True
    )
    for r in range(high.squarings):
        end = p.shape[0] if r < low.squarings else h
        sq = mul(p[:end], p[:end], frac_bits=EXP_FRAC_BITS)
        p = Shared(torch.cat([sq.share, p.share[end:]]), x.party)
    p = truncate(p, extra)
    return _join_flat(p - mul(below, p, fixed_point=False), x, n_high, dim)


def exp_neg(x: Shared, cfg: ExpApprox = EXP_HIGH) -> Shared:
    """``approx.softmax.exp_neg`` with one configuration on every element."""
    flat = x.reshape(-1)
    return exp_neg_rows(flat, flat.shape[0], 0, high=cfg, low=cfg).reshape(x.shape)


def reciprocal(d: Shared, upper: float) -> Shared:
    """1/d for d in [1, upper] (Newton from 1/upper, ``approx.softmax.reciprocal``), returned at
    scale 2^30: 1/d is small when d is large, and 18 bits would leave it a relative error of 1e-4.
    Products stay below 2^61 because d y <= 2 and y <= 1."""
    fine = EXP_FRAC_BITS
    y = Shared(torch.zeros_like(d.share), d.party).add_public(
        int(round((1 << fine) / upper)) * torch.ones((), dtype=torch.int64), encoded=True
    )
    two = (2 << fine) * torch.ones((), dtype=torch.int64)
    for _ in range(reciprocal_iterations(upper)):
        dy = mul(d, y)  # scale 2^(18 + 30) -> 2^30
        y = mul(y, (-dy).add_public(two, encoded=True), frac_bits=fine)
    return y


def softmax_rows(
    x: Shared,
    mask_add: Shared | None,
    n_high: int,
    dim: int,
    high: ExpApprox = EXP_HIGH,
    low: ExpApprox = EXP_LOW,
) -> Shared:
    """Softmax over the last axis (``approx.softmax.cipherprune``), the accurate exp on the first
    n_high rows along ``dim`` and the reduced one on the rest; max and reciprocal are shared."""
    if mask_add is not None:
        x = x + mask_add
    z = x - max_lastdim(x)
    e = exp_neg_rows(z, n_high, dim, high, low)
    recip = reciprocal(e.sum(-1, keepdim=True), float(x.shape[-1]))
    return mul(e, recip, frac_bits=EXP_FRAC_BITS)


def softmax(x: Shared, mask_add: Shared | None, cfg: ExpApprox = EXP_HIGH) -> Shared:
    """Softmax over the last axis (rows independent), as ``approx.softmax.cipherprune``."""
    return softmax_rows(x, mask_add, x.shape[0], 0, cfg, cfg)


def _staircase(bits: Shared, c0: float, steps: list[float]) -> Shared:
    """c0 + sum_k steps_k bits_k over the last axis of integer-shared bits, at scale
    2^OCTAVE_FRAC_BITS (local: bits times public integers)."""
    k = torch.tensor([round(c * (1 << OCTAVE_FRAC_BITS)) for c in steps], dtype=torch.int64)
    total = bits.mul_int(k).sum(-1, keepdim=True)
    return total.add_public(
        round(c0 * (1 << OCTAVE_FRAC_BITS)) * torch.ones((), dtype=torch.int64), encoded=True
    )


def rsqrt_octaves(v: Shared, config: LayerNormConfig) -> Shared:
    """``approx.layernorm.rsqrt_octaves`` on shares, returned at scale 2^OCTAVE_FRAC_BITS (1/sqrt
    of a large variance is small, and 2^-18 would leave it a relative error of 2^-18 sqrt(v)):
    one batched comparison of v with the range's powers of two (8 rounds), v / 2^(e+1) and its
    linear start in one product, Newton with 2^(-e/2) folded into the last step: 8 + 2 +
    6 OCTAVE_NEWTON_STEPS rounds for any range."""
    _lo, ks = octaves(config)
    powers = fixed.encode(torch.tensor([2.0**k for k in ks], dtype=torch.float64))
    shifted = Shared(v.share.expand(*v.shape[:-1], len(ks)).clone(), v.party)
    # [v >= 2^k]; a range within one octave compares nothing (e = lo)
    above = one_minus_bit(ltz(shifted.add_public(-powers, encoded=True))) if ks else shifted
    a, b = OCTAVE_START
    half_c0, half_steps = octave_weights(config, 1.0)
    half_c0, half_steps = half_c0 / 2, [c / 2 for c in half_steps]
    scale = cat(
        [
            _staircase(above, half_c0, half_steps),  # 2^-(e+1)
            _staircase(above, 2 * b * half_c0, [2 * b * c for c in half_steps]),  # b 2^-e
        ],
        dim=-1,
    )
    both = mul(cat([v, v], dim=-1), scale, frac_bits=OCTAVE_FRAC_BITS)
    half_m, t = both[..., :1], both[..., 1:]
    y = (-t).add_public(a)
    root = _staircase(above, *octave_weights(config, 0.5))  # 2^(-e/2)
    fine = OCTAVE_FRAC_BITS
    for _ in range(OCTAVE_NEWTON_STEPS - 1):
        y = mul(y, (-mul(mul(half_m, y), y)).add_public(1.5))
    # the last step: y 2^(-e/2) beside half_m y in one product (half_m lifted to root's scale,
    # so one truncation leaves both at scale 2^30), and the result kept at 2^30
    lifted = half_m.mul_int(1 << (fine - fixed.FRAC_BITS))
    pair = mul(cat([lifted, root], dim=-1), cat([y, y], dim=-1))
    hy, y_root = pair[..., :1], pair[..., 1:]
    t = mul(hy, y, frac_bits=fine)  # scale 2^18
    return mul(y_root, (-t).add_public(1.5))


def rsqrt(v: Shared, config: LayerNormConfig = RSQRT_RANGE) -> Shared:
    """1/sqrt(v) for v in ``config``'s variance range (``approx.layernorm.rsqrt``)."""
    if config.octaves:
        return truncate(rsqrt_octaves(v, config), OCTAVE_FRAC_BITS - fixed.FRAC_BITS)
    a, b = rsqrt_start(config)
    half_v = truncate(v, 1)
    y = mul_public(v, -b).add_public(a)
    for _ in range(rsqrt_iterations(config)):
        y = mul(y, (-mul(mul(half_v, y), y)).add_public(1.5))
    return y


def layernorm(
    x: Shared,
    name: str,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
    config: LayerNormConfig = RSQRT_RANGE,
) -> Shared:
    """LayerNorm over the last axis; gamma, beta are party 1's ring tensors (party 0: None);
    ``config``: the variance range of its rsqrt."""
    d = x.shape[-1]
    mean = mul_public(x.sum(-1, keepdim=True), 1.0 / d)
    xc = x - mean
    var = mul_public(mul(xc, xc).sum(-1, keepdim=True), 1.0 / d).add_public(eps)
    if config.octaves:  # 1/sqrt at scale 2^30: the product keeps 18 bits of the output
        normed = mul(xc, rsqrt_octaves(var, config), frac_bits=OCTAVE_FRAC_BITS)
    else:
        normed = mul(xc, rsqrt(var, config))
    return scale_by_weight(normed, name, gamma, (d,)).add_server_value(beta)

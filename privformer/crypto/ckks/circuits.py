"""Encrypted NEXUS building blocks on the ``CKKSBackend`` interface.

Each mirrors its float64 twin in ``approx``: the same polynomials, in the same order, so the
encrypted result differs from ``simulate`` only by CKKS noise.

Levels: every block states its depth, and calls ``ensure_level`` before a step that needs more
levels than its input has left, which bootstraps there (or raises ``BootstrapUnavailableError``
naming the operator on a backend that cannot). That is the hook a later compiler replaces with
planned bootstrap placement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privformer import approx
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import BootstrapRangeError, BootstrapUnavailableError, InputError, LevelError


def ensure_level(
    backend: CKKSBackend,
    x: Ciphertext,
    needed: int,
    operator: str,
    bound: float = 1.0,
    period: int | None = None,
) -> Ciphertext:
    """``x`` if it has ``needed`` levels left, else ``x`` bootstrapped (which must give them).
    ``bound``: every slot of ``x`` lies in [-bound, bound]; ``period``: slot i equals slot
    i mod ``period`` (see ``CKKSBackend.bootstrap``)."""
    return ensure_levels(backend, [x], needed, operator, bound, period)[0]


def ensure_levels(
    backend: CKKSBackend,
    xs: Sequence[Ciphertext],
    needed: int | Sequence[int],
    operator: str,
    bound: float = 1.0,
    period: int | None = None,
) -> list[Ciphertext]:
    """``ensure_level`` for every ciphertext of ``xs`` (``needed``: one count for all, or one
    each): those short of levels are bootstrapped together, so a bootstrapper that packs
    pairs refreshes two at a time; with ``period`` (all of ``xs`` repeat with it), one by one,
    each a sparse-slot bootstrap where the backend has keys for it."""
    wants = [needed] * len(xs) if isinstance(needed, int) else list(needed)
    if len(wants) != len(xs):
        raise InputError(f"{operator}: {len(wants)} level counts for {len(xs)} ciphertexts")
    low = [i for i, x in enumerate(xs) if backend.levels_left(x) < wants[i]]
    if not low:
        return list(xs)
    try:
        if period is None:
            fresh = backend.bootstrap_many([xs[i] for i in low], bound, max(wants[i] for i in low))
        else:
            fresh = [backend.bootstrap(xs[i], bound, period) for i in low]
    except BootstrapUnavailableError as exc:
        got = backend.levels_left(xs[low[0]])
        raise BootstrapUnavailableError(
            f"{operator}: needs {wants[low[0]]} levels, the ciphertext has {got}; {exc}"
        ) from exc
    except BootstrapRangeError as exc:
        raise BootstrapRangeError(f"{operator}: {exc}") from exc
    out = list(xs)
    for i, x in zip(low, fresh, strict=True):
        if backend.levels_left(x) < wants[i]:
            got = backend.levels_left(x)
            raise LevelError(
                f"{operator}: needs {wants[i]} levels in one chain, a bootstrap gives {got}"
            )
        out[i] = x
    return out


def mul(
    backend: CKKSBackend, a: Ciphertext, b: Ciphertext, operator: str, bound: float = 1.0
) -> Ciphertext:
    """a * b, bootstrapping an operand first if it has no level left (both within ``bound``)."""
    return backend.multiply(
        ensure_level(backend, a, 1, operator, bound), ensure_level(backend, b, 1, operator, bound)
    )


def power_of_two_steps(slots: int) -> list[int]:
    """1, 2, 4, ..., slots/2: with these keys any rotation is a product of at most log2(slots)."""
    return [1 << k for k in range(slots.bit_length() - 1)]


def rotate_composed(backend: CKKSBackend, x: Ciphertext, steps: int) -> Ciphertext:
    """Rotate left by ``steps``: one rotation if it has a key, else one per set bit of
    ``steps mod slots`` with power-of-two keys (a Galois key at ring 2^15 is hundreds of MB,
    so only a few are made)."""
    step = steps % backend.slots
    if step == 0 or step in backend.rotation_keys:
        return backend.rotate(x, step)
    for k in range(step.bit_length()):
        if step >> k & 1:
            x = backend.rotate(x, 1 << k)
    return x


def poly(backend: CKKSBackend, x: Ciphertext, coeffs: np.ndarray) -> Ciphertext:
    """sum_k coeffs[k] x^k (power basis) in depth ceil(log2(degree + 1)) + (1 if degree is a
    power of two): each term multiplies c_k x^(lowest power of two in k) by the other powers of
    two, shallowest first, so no term is deeper than it must be."""
    coeffs = np.asarray(coeffs, dtype=np.float64)
    degree = len(coeffs) - 1
    powers = {1: x}
    p = 1
    while 2 * p <= degree:
        powers[2 * p] = backend.multiply(powers[p], powers[p])
        p *= 2
    total = None
    for k in range(1, degree + 1):
        if coeffs[k] == 0.0:
            continue
        bits = [1 << b for b in range(k.bit_length()) if k >> b & 1]
        factors = [backend.multiply_plain(powers[bits[0]], float(coeffs[k]))]
        factors += [powers[b] for b in bits[1:]]
        while len(factors) > 1:  # multiply the two with the most levels left first
            factors.sort(key=backend.levels_left, reverse=True)
            factors = [backend.multiply(factors[0], factors[1]), *factors[2:]]
        total = factors[0] if total is None else backend.add(total, factors[0])
    if total is None:
        raise InputError("poly needs a non-constant polynomial")
    return backend.add_plain(total, float(coeffs[0]))


def odd_poly(backend: CKKSBackend, x: Ciphertext, coeffs: np.ndarray) -> Ciphertext:
    """sum_k c_k x^(2k+1) for up to five coefficients (degree 9) in depth 4, 6 products.

    c0 x + (c1 x) x^2 + [c2 x + (c3 x) x^2 + (c4 x) x^4] x^4: each coefficient is folded into x
    first (depth 1), so the bracket is at depth 3 and the whole at depth 4; the products are
    x^2, x^4, three inside and one outside (instead of 8 for term-by-term powers).
    """
    if len(coeffs) > 5:
        raise InputError("odd_poly evaluates degree <= 9 in depth 4")
    scaled = [backend.multiply_plain(x, float(c)) for c in coeffs]  # c_k x, depth 1
    x2 = backend.multiply(x, x)
    total = scaled[0]
    if len(coeffs) > 1:
        total = backend.add(total, backend.multiply(scaled[1], x2))
    if len(coeffs) > 2:
        x4 = backend.multiply(x2, x2)
        inner = scaled[2]
        for k, power in ((3, x2), (4, x4)):
            if len(coeffs) > k:
                inner = backend.add(inner, backend.multiply(scaled[k], power))
        total = backend.add(total, backend.multiply(inner, x4))
    return total


def sgn(
    backend: CKKSBackend, x: Ciphertext, g: int = 2, f: int = 2, operator: str = "sgn"
) -> Ciphertext:
    """Encrypted SGN for slots in [-1, 1]: g4 applied g times, then f4 f times (depth 4(g+f)),
    bootstrapping between polynomials where fewer than 4 levels are left."""
    for coeffs in [approx.sign.G4] * g + [approx.sign.F4] * f:
        x = odd_poly(backend, ensure_level(backend, x, 4, operator), coeffs)
    return x


def quick_sum_steps(width: int, stride: int = 1) -> list[int]:
    """Rotation steps for folding ``width`` (a power of two) values ``stride`` slots apart:
    stride * width/2, ..., stride * 2, stride."""
    if width < 1 or width & (width - 1):
        raise InputError(f"QuickSum width must be a power of two, got {width}")
    return [stride * (width >> k) for k in range(1, width.bit_length())]


def quick_sum(backend: CKKSBackend, x: Ciphertext, width: int, stride: int = 1) -> Ciphertext:
    """Rotate-and-add over ``width`` values ``stride`` slots apart: slot i gets the sum of slots
    i, i + stride, ..., i + (width - 1) stride (cyclically over the ciphertext).

    When width * stride is the slot count every slot gets the sum of its whole group; otherwise
    only slots whose group lies inside the ciphertext (e.g. slot 0, with zeros beyond ``width``).
    """
    for step in quick_sum_steps(width, stride):
        x = backend.add(x, backend.rotate(x, step))
    return x


def smooth_max(
    backend: CKKSBackend, a: Ciphertext, b: Ciphertext, bound: float, g: int, f: int, operator: str
) -> Ciphertext:
    """max(a, b) = (a + b)/2 + (a - b)/2 * SGN((a - b) / (2 bound)); depth 4(g + f) + 2.
    ``a`` and ``b`` need 2 levels left; SGN bootstraps inside where it must."""
    diff = backend.sub(a, b)
    s = sgn(backend, backend.multiply_plain(diff, 1.0 / (2.0 * bound)), g, f, operator)
    half_diff = backend.multiply_plain(diff, 0.5)
    s = ensure_level(backend, s, 1, operator)
    mean = backend.multiply_plain(backend.add(a, b), 0.5)
    return backend.add(mean, backend.multiply(half_diff, s))


def quick_max(
    backend: CKKSBackend,
    x: Ciphertext,
    width: int,
    stride: int,
    bound: float,
    g: int = 3,
    f: int = 2,
    operator: str = "quick_max",
) -> Ciphertext:
    """Rotate-and-max over ``width`` values ``stride`` slots apart: log2(width) SGN rounds,
    bootstrapping between rounds where levels run out (NEXUS's argmax schedule).

    The slots must repeat with period width * stride (a divisor of the slot count), so that the
    rotations are cyclic within each group and every slot gets its group's maximum.
    """
    if backend.slots % (width * stride):
        raise InputError(f"quick_max: width x stride must divide the {backend.slots} slots")
    for step in quick_sum_steps(width, stride):
        x = ensure_level(backend, x, 2, operator, bound)
        x = smooth_max(backend, x, backend.rotate(x, step), bound, g, f, operator)
    return x


def chebyshev_series(
    backend: CKKSBackend,
    t: Ciphertext,
    coeffs: np.ndarray,
    operator: str = "chebyshev",
    weights: np.ndarray | None = None,
    period: int | None = None,
) -> Ciphertext:
    """sum_k coeffs[k] T_k(t) for slots t in [-1, 1], by Paterson-Stockmeyer in the Chebyshev
    basis: baby steps T_1 .. T_{m-1}, giant steps T_m, T_2m, ..., and p = q T_n + r recursively
    (``approx.chebyshev.divide``). Consumes ``approx.chebyshev.depth(degree)`` levels (7 for
    degree 63, 8 for 127), bootstrapping ``t`` first if it has fewer.

    T_{2a} = 2 T_a^2 - 1 and T_{a+b} = 2 T_a T_b - T_{a-b} are formed as (T_a + T_a) T_b, so
    the doubling costs no level: T_i has depth ceil(log2 i).

    ``weights`` (a slot vector): the result is weights * p(t), at no extra level: every scalar
    of the leaves and of the split is multiplied by it (a key mask, for instance).
    ``period``: t's slots repeat with it (for its bootstrap; see ``CKKSBackend.bootstrap``).
    """
    coeffs = np.asarray(coeffs, dtype=np.float64)
    degree = len(coeffs) - 1
    if degree < 1:
        raise InputError("chebyshev_series needs a polynomial of degree >= 1")
    m = approx.chebyshev.baby_step_count(degree)
    t = ensure_level(backend, t, approx.chebyshev.depth(degree, m), operator, 1.0, period)
    powers: dict[int, Ciphertext] = {1: t}

    def power(i: int) -> Ciphertext:  # T_i, i >= 1
        if i not in powers:
            a = 1 << (i.bit_length() - 1)  # the largest power of two <= i
            if a == i:
                h = power(i // 2)
                powers[i] = backend.add_plain(backend.multiply(backend.add(h, h), h), -1.0)
            else:
                ta, tb = power(a), power(i - a)
                prod = backend.multiply(backend.add(ta, ta), tb)
                powers[i] = backend.sub(prod, power(2 * a - i)) if 2 * a > i else prod
        return powers[i]

    def scaled(c: float) -> np.ndarray | float:  # a scalar of the series, times the weights
        return c if weights is None else c * weights

    def series(c: np.ndarray) -> Ciphertext | float:  # a float: the part is a constant
        if len(c) <= m:  # a leaf: one fused sum of scalar products (zero terms skipped)
            terms = [(power(i), scaled(float(c[i]))) for i in range(1, len(c)) if c[i] != 0.0]
            if not terms:
                return float(c[0])
            return backend.add_plain(backend.multiply_plain_sum(terms), scaled(float(c[0])))
        n = approx.chebyshev.split_point(len(c), m)
        q, r = (series(part) for part in approx.chebyshev.divide(c, n))
        if isinstance(q, float):
            if q == 0.0:
                return r
            high = backend.multiply_plain(power(n), scaled(q))
        else:
            high = backend.multiply(q, power(n))
        if isinstance(r, float):
            return backend.add_plain(high, scaled(r))
        return backend.add(high, r)

    out = series(coeffs)
    if isinstance(out, float):
        raise InputError("chebyshev_series: every non-constant coefficient is zero")
    return out

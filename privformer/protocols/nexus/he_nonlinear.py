"""Encrypted GELU, softmax, LayerNorm and argmax: the NEXUS nonlinear operators on CKKS.

Each evaluates exactly the polynomials and iterations of its float64 twin in ``approx`` (same
order, same constants), so encrypted and ``simulate`` results differ only by CKKS noise. The
encrypted versions cannot check their input ranges: run ``simulate`` first.

Layouts (``matmul.TokenInterleaved``: slot f n + t holds feature f of token t):
- ``gelu`` is slot-wise, so any packing works;
- ``softmax`` reduces over ``width`` values ``stride`` slots apart; for attention scores in the
  diagonal layout of ``attention`` (slot d n + t holds the score of query t against key t + d)
  that is width = n, stride = n;
- ``layernorm`` takes the token-interleaved feature blocks of one activation and reduces over
  the features of each token (rotations by multiples of n, after adding the blocks);
- ``argmax_onehot`` takes m values in slots 0 .. m-1 of one or more ciphertexts.

Levels (one chain, no bootstrap): GELU 7 + 4(g + f) (27 with the default g = 3, f = 2);
softmax log2(n) SGN rounds for the row maximum, r + 1 for exp and about log2(20 n) for the
inverse; LayerNorm 4 + 3 per Newton step + 2. None fits a 19-level chain, and where a ciphertext
has fewer levels left, ``he_ops.ensure_level`` bootstraps, so these run unchanged on a
bootstrapping backend.
"""

from __future__ import annotations

import math

import numpy as np

from privformer import approx
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import InputError
from privformer.protocols.nexus.matmul import TokenInterleaved


def gelu_depth(config: approx.gelu.GeluConfig = approx.gelu.DEFAULT_GELU) -> int:
    """Levels one GELU consumes: 1/scale, SGN, the clamped x_m, the degree-8 middle piece and
    the selector product (27 with the default g = 3, f = 2)."""
    return 7 + 4 * (config.g + config.f)


MID_BOUND = 8.0  # x_m stays within [-4, 5] up to selector noise


def _piece_bounds(bound: float) -> list[float]:
    """Largest |piece| on [-bound, bound] for the cubic and linear pieces (each is bootstrapped
    only before its selector product), and on x_m's range for the middle piece."""
    x = np.linspace(-bound, bound, 4001)
    xm = np.linspace(-MID_BOUND, MID_BOUND, 4001)
    peaks = [
        np.abs(np.polyval(0.5 * np.asarray(approx.gelu.GELU_CUBIC)[::-1], x)).max(),
        np.abs(np.polyval(0.5 * np.asarray(approx.gelu.GELU_MID)[::-1], xm)).max(),
        0.5 * bound,
    ]
    return [1.01 * float(p) for p in peaks]


def gelu(
    backend: CKKSBackend, x: Ciphertext, config: approx.gelu.GeluConfig = approx.gelu.DEFAULT_GELU
) -> Ciphertext:
    """NEXUS piecewise GELU: (s0 - s1) cubic(x) + (s1 - s2) mid(x_m) + s2 x, s_c = (1 + S_c)/2
    with S_c = SGN((x - c) / scale), x_m = a + (s0 - s3)(x - a) (see ``approx.gelu.nexus``).

    Written as 0.5 [(S0 - S1) cubic + (S1 - S2) mid + (S2 + 1) x] with the halves folded into
    the pieces' coefficients, so the indicators cost no extra level.
    """
    op = "gelu"
    x = he.ensure_level(backend, x, 3, op, config.bound)  # cubic piece (depth 2), selector
    scale, a = 2.0 * config.bound, approx.gelu.GELU_MID_CENTRE
    xs = backend.multiply_plain(x, 1.0 / scale)
    signs = [
        he.sgn(backend, backend.add_plain(xs, -c / scale), config.g, config.f, op)
        for c in (*approx.gelu.GELU_BREAKS, approx.gelu.GELU_CLAMP_HIGH)
    ]
    half_offset = backend.multiply_plain(backend.add_plain(x, -a), 0.5)  # (x - a) / 2
    window = backend.sub(signs[0], signs[3])  # 2 (s0 - s3)
    # window in [0, 2], half_offset within bound: bootstraps (if any) state the larger.
    x_mid = backend.add_plain(he.mul(backend, window, half_offset, op, config.bound), a)
    pieces = [
        he.poly(backend, x, 0.5 * approx.gelu.GELU_CUBIC),
        he.poly(
            backend, he.ensure_level(backend, x_mid, 4, op, MID_BOUND), 0.5 * approx.gelu.GELU_MID
        ),
        backend.multiply_plain(x, 0.5),
    ]
    selectors = [
        backend.sub(signs[0], signs[1]),
        backend.sub(signs[1], signs[2]),
        backend.add_plain(signs[2], 1.0),
    ]
    terms = [
        he.mul(backend, sel, piece, op, bound)
        for sel, piece, bound in zip(selectors, pieces, _piece_bounds(config.bound), strict=True)
    ]
    total = terms[0]
    for term in terms[1:]:
        total = backend.add(total, term)
    return total


def gelu_chebyshev(
    backend: CKKSBackend,
    x: Ciphertext,
    config: approx.gelu.ChebyshevGeluConfig = approx.gelu.DEFAULT_CHEBYSHEV_GELU,
    prescaled: bool = False,
) -> Ciphertext:
    """GELU as one Chebyshev interpolant (``approx.gelu.chebyshev``): no SGN, one chain of
    ``approx.chebyshev.depth(degree)`` levels (+1 for the scaling; ``prescaled``: the slots
    already hold x / bound, e.g. with 1 / bound folded into the matmul before)."""
    op = "gelu"
    x = he.ensure_level(
        backend, x, _gelu_levels(config, prescaled), op, _gelu_bound(config, prescaled)
    )
    t = x if prescaled else backend.multiply_plain(x, 1.0 / config.bound)
    return he.chebyshev_series(backend, t, config.coeffs, op)


def gelu_chebyshev_many(
    backend: CKKSBackend,
    xs: list[Ciphertext],
    config: approx.gelu.ChebyshevGeluConfig = approx.gelu.DEFAULT_CHEBYSHEV_GELU,
    prescaled: bool = False,
) -> list[Ciphertext]:
    """``gelu_chebyshev`` of each ciphertext, those short of levels bootstrapped together."""
    need, bound = _gelu_levels(config, prescaled), _gelu_bound(config, prescaled)
    xs = he.ensure_levels(backend, xs, need, "gelu", bound)
    return [gelu_chebyshev(backend, x, config, prescaled) for x in xs]


def _gelu_levels(config: approx.gelu.ChebyshevGeluConfig, prescaled: bool) -> int:
    """The interpolant's depth, plus the 1 / bound scaling unless it is folded in already."""
    return approx.chebyshev.depth(config.degree) + (0 if prescaled else 1)


def _gelu_bound(config: approx.gelu.ChebyshevGeluConfig, prescaled: bool) -> float:
    """|input| of the Chebyshev GELU: 1 once scaled by 1 / bound, else the bound."""
    return 1.0 if prescaled else config.bound


def softmax(
    backend: CKKSBackend,
    x: Ciphertext,
    width: int,
    stride: int,
    config: approx.softmax.SoftmaxConfig = approx.softmax.DEFAULT_SOFTMAX,
) -> Ciphertext:
    """Softmax over groups of ``width`` values ``stride`` slots apart (width x stride = slots).

    Row maximum by QuickMax and subtracted (peaked rows stay accurate), exp(z) as
    (1 + z / 2^r)^(2^r), the row sum by QuickSum, its inverse by Goldschmidt iteration.
    """
    if width * stride != backend.slots:
        raise InputError(f"softmax: width x stride must equal the {backend.slots} slots")
    op = "softmax"
    x = he.ensure_level(backend, x, 2, op, config.bound)
    row_max = he.quick_max(backend, x, width, stride, config.bound, config.g, config.f, op)
    # exp in one chain where the preset allows: a bootstrap between squarings has its error
    # doubled by every squaring after it.
    need = min(config.r + 2, backend.preset.levels)
    z = he.ensure_level(backend, backend.sub(x, row_max), need, op, 2.0 * config.bound)
    e = backend.add_plain(backend.multiply_plain(z, 2.0**-config.r), 1.0)
    for _ in range(config.r):
        e = he.mul(backend, e, e, op)
    # err = 1 - sum(e) / width, the Goldschmidt error term; inverse = prod (1 + err^(2^i)).
    e = he.ensure_level(backend, e, 1, op)
    err = backend.add_plain(
        backend.multiply_plain(he.quick_sum(backend, e, width, stride), -1.0 / width), 1.0
    )
    inverse = backend.add_plain(err, 1.0)
    # inverse climbs to width / sum(e) <= width (the row maximum's e is 1)
    for _ in range(approx.softmax.goldschmidt_iterations(width, config) - 1):
        err = he.mul(backend, err, err, op)
        inverse = he.mul(backend, inverse, backend.add_plain(err, 1.0), op, width)
    scaled = backend.multiply_plain(e, 1.0 / width)
    return he.mul(backend, scaled, inverse, op, width)


def inv_sqrt(
    backend: CKKSBackend,
    total: Ciphertext,
    c: float,
    iters: int,
    y_bound: float,
    operator: str = "layernorm",
    period: int | None = None,
) -> Ciphertext:
    """1/sqrt(u) for u = c * total in (0, 1], by Newton, y <- 1.5 y - 0.5 y (u y^2);
    ``period``: total's slots repeat with it (one value per token), as y's then do.

    CKKS noise is absolute (about 1e-8 after a rescale at a 2^40 scale), so u itself, as small
    as 2e-4, is only good to ~5e-5 relative, and that error moves Newton's fixed point. The
    first ``iters - 1`` steps use u (3 levels a step): their error is a bias the last step
    removes. The last step forms u y^2 as (c/2)(total y^2), whose factors are all >= 1 in
    magnitude, so it is good to ~1e-7 (4 levels). ``total`` needs 3 levels, so it is never
    bootstrapped here: a bootstrap's error is relative to the largest slot, which would
    bring the small variances' problem back.
    """
    a = approx.layernorm.NEWTON_START_SCALE  # the twin's start: a (1.5 - u)
    total = he.ensure_level(backend, total, 3, operator, 1.0 / c, period)
    u = he.ensure_level(backend, backend.multiply_plain(total, c), 2, operator, 1.0, period)
    y = backend.add_plain(backend.multiply_plain(u, -a), 1.5 * a)
    for _ in range(iters - 1):
        y = he.ensure_level(backend, y, 3, operator, y_bound, period)
        uy2 = backend.multiply(u, backend.multiply(y, y))
        y = backend.add(
            backend.multiply_plain(y, 1.5),
            backend.multiply(backend.multiply_plain(y, -0.5), uy2),
        )
    y = he.ensure_level(backend, y, 4, operator, y_bound, period)
    t = backend.multiply(total, backend.multiply(y, y))  # ~1/c = hidden * var_high
    return backend.multiply(y, backend.add_plain(backend.multiply_plain(t, -0.5 * c), 1.5))


def diagonal_key_mask(tokens: int, real: int, groups: int = 1) -> np.ndarray:
    """The real-key mask in the interleaved diagonal layout of attention scores (G =
    ``groups`` heads per ciphertext): slot (G d + g) n + t holds 1 if key (t + d) mod n is one
    of the first ``real`` tokens, else 0."""
    if not 1 <= real <= tokens:
        raise InputError(f"{real} real tokens do not fit {tokens} positions")
    t = np.arange(tokens)
    rows = [((t + d) % tokens < real).astype(np.float64) for d in range(tokens)]
    return np.concatenate([row for row in rows for _ in range(groups)])


def _inverse(
    backend: CKKSBackend,
    neg_v: Ciphertext,
    t: Ciphertext,
    plan: approx.softmax.InversePlan,
    op: str,
) -> Ciphertext:
    """1/v from -v and t (v mapped to [-1, 1]), as ``approx.softmax.inverse``: the Chebyshev
    start on t, then Newton steps y (2 - v y), which also remove the error of any bootstrap on
    the way. Only this one (packed) ciphertext is bootstrapped."""
    y_bound = 1.01 / plan.low
    y = he.chebyshev_series(backend, t, plan.coeffs, op)
    for _ in range(plan.newton_steps):
        # two levels each: v y takes one, and y (2 - v y) needs one more on its lower operand
        neg_v = he.ensure_level(backend, neg_v, 2, op, plan.high)
        y = he.ensure_level(backend, y, 2, op, y_bound)
        y = backend.multiply(y, backend.add_plain(backend.multiply(neg_v, y), 2.0))
    return y


def softmax_squaring(
    backend: CKKSBackend,
    heads: list[Ciphertext],
    tokens: int,
    real: int,
    config: approx.softmax.SquaringSoftmaxConfig,
    bound: float,
) -> list[Ciphertext]:
    """Softmax of every head's scores over its first ``real`` keys, as
    ``approx.softmax.squaring`` (no maximum, no SGN). ``heads``: score ciphertexts in the
    interleaved diagonal layout of ``attention`` (G = slots / tokens^2 heads each: slot
    (G d + g) n + t holds S_g[t, (t + d) mod n]).

    ``bound``: |scores| (for the bootstrap that may bring them to level). The row sums of all
    heads are packed into one ciphertext (head h in block h) so that each round's inverse, the
    deep part, is computed and bootstrapped once for the layer, not once per head.
    """
    n, op, slots = tokens, "softmax", backend.slots
    groups = slots // (n * n)
    if slots % (n * n) or not 1 <= len(heads) * groups <= groups * n:
        raise InputError(
            f"softmax: {len(heads)} score ciphertexts of {n} tokens do not fit {slots} slots"
        )
    stride = groups * n  # the next key offset of the same head and query
    keys = diagonal_key_mask(n, real, groups)
    queries = np.tile((np.arange(n) < real).astype(np.float64), stride)  # query t, any block
    mid, half = 0.5 * (config.low + config.high), 0.5 * (config.high - config.low)
    exp_depth = approx.chebyshev.depth(len(config.exp_coeffs) - 1)
    qs = []
    for x in he.ensure_levels(backend, heads, 1 + exp_depth, op, bound):
        # Padding queries' scores become 0 in the same products that scale and centre.
        mean = he.quick_sum(
            backend, backend.multiply_plain(x, keys * queries / (real * half)), n, stride
        )
        scaled = backend.multiply_plain(x, queries / half)
        u = backend.add_plain(backend.sub(scaled, mean), -mid / half)
        qs.append(he.chebyshev_series(backend, u, config.exp_coeffs, op, weights=keys))
    # Ciphertext c's head g has its row sums in every block = g (mod G): block c G + g
    # selects them, so the packed ciphertext holds head h's sums in block h.
    mine = [range(c * groups, (c + 1) * groups) for c in range(len(heads))]
    grid = TokenInterleaved(n, slots)  # blocks of n slots, as in the score layout
    used = grid.block_mask(range(len(heads) * groups))
    for i in range(config.rounds):
        plan = approx.softmax.round_inverse_plan(config, i, n)
        scale = 1.0 / real if i == 0 else 1.0
        width = plan.high - plan.low
        q2 = [backend.multiply(q, q) for q in he.ensure_levels(backend, qs, 2, op)]
        sums = [he.quick_sum(backend, s, n, stride) for s in q2]  # every block: its row sums
        # -v (v: the scaled row sums, head h in block h) and t, v mapped to [-1, 1] for the
        # Chebyshev start; where no head sits, v is the middle of its range and t = 0.
        neg_v = backend.multiply_plain_sum(
            [(s, grid.block_mask(b, -scale)) for s, b in zip(sums, mine, strict=True)]
        )
        neg_v = backend.add_plain(neg_v, -(1.0 - used) * 0.5 * (plan.low + plan.high))
        t = backend.multiply_plain_sum(
            [(s, grid.block_mask(b, 2.0 * scale / width)) for s, b in zip(sums, mine, strict=True)]
        )
        t = backend.add_plain(t, -used * (plan.low + plan.high) / width)
        inv = _inverse(backend, neg_v, t, plan, op)
        inv = he.ensure_level(backend, inv, 2, op, 1.01 / plan.low)
        qs = []
        for s, b in zip(q2, mine, strict=True):
            # head h's inverses, from block h to every block of its group
            selected = backend.multiply_plain(inv, grid.block_mask(b, scale))
            qs.append(backend.multiply(s, he.quick_sum(backend, selected, n, stride)))
    return qs


def _centred_variance(
    backend: CKKSBackend,
    blocks: list[Ciphertext],
    layout: TokenInterleaved,
    hidden: int,
    eps: float,
    levels: int,
    bound: float,
) -> tuple[list[Ciphertext], Ciphertext]:
    """(z = x - mean per token, hidden x (var + eps) in every slot of its token), the blocks
    first brought to ``levels`` levels (bootstrapped within ``bound`` if below)."""
    if layout.slots != backend.slots or layout.blocks(hidden) != len(blocks):
        raise InputError(
            f"layernorm: {len(blocks)} blocks do not hold {hidden} features at "
            f"{layout.features} features per block"
        )
    n, feats = layout.tokens, layout.features
    blocks = he.ensure_levels(backend, blocks, levels, "layernorm", bound)
    total = blocks[0]
    for b in blocks[1:]:
        total = backend.add(total, b)
    sums = he.quick_sum(backend, total, feats, n)  # every slot: the sum over its token
    # Padding features (hidden not a multiple of F) get mask 0, so they stay 0 after centring.
    masks = layout.pack(np.ones((n, hidden)) / hidden)
    z = [
        backend.sub(b, backend.multiply_plain(sums, m)) for b, m in zip(blocks, masks, strict=True)
    ]
    squares = backend.multiply(z[0], z[0])
    for zb in z[1:]:
        squares = backend.add(squares, backend.multiply(zb, zb))
    return z, backend.add_plain(he.quick_sum(backend, squares, feats, n), hidden * eps)


def _normalised(
    backend: CKKSBackend,
    z: list[Ciphertext],
    y: Ciphertext,
    layout: TokenInterleaved,
    gamma: np.ndarray,
    beta: np.ndarray,
    var_high: float,
    levels: int,
    bound: float,
) -> list[Ciphertext]:
    """gamma z y / sqrt(var_high) + beta per block, z at ``levels`` levels (y must have them)."""
    n, scale = layout.tokens, 1.0 / math.sqrt(var_high)
    out = []
    for zb, g, bt in zip(
        he.ensure_levels(backend, z, levels, "layernorm", bound),
        layout.pack(np.tile(gamma * scale, (n, 1))),
        layout.pack(np.tile(beta, (n, 1))),
        strict=True,
    ):
        # z y (magnitude ~16 x the normalised value) before the small gamma / 16: the absolute
        # rescale noise then stays small against every factor.
        out.append(backend.add_plain(backend.multiply_plain(backend.multiply(zb, y), g), bt))
    return out


def layernorm(
    backend: CKKSBackend,
    blocks: list[Ciphertext],
    layout: TokenInterleaved,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float = 1e-12,
    config: approx.layernorm.LayerNormConfig = approx.layernorm.DEFAULT_LAYERNORM,
) -> list[Ciphertext]:
    """gamma (x - mean) / sqrt(var + eps) + beta over each token's features, on the
    token-interleaved blocks of one activation (the hidden size is len(gamma))."""
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    hidden, op, x_bound = gamma.shape[0], "layernorm", config.input_bound
    # 5 levels: z, z^2, then the variance sum with the 3 levels inv_sqrt's last step needs, so
    # only x and y are bootstrapped (y's bootstrap error is Newton's to correct). On a chain
    # shorter than 5 the variance sum is bootstrapped too, and small variances lose precision.
    z, total = _centred_variance(backend, blocks, layout, hidden, eps, min(5, backend.top), x_bound)
    c = 1.0 / (hidden * config.var_high)
    # Newton from below rises monotonically to 1/sqrt(u) <= sqrt(var_high / var_low).
    y_bound = 1.01 * math.sqrt(config.var_high / config.var_low)
    iters, n = approx.layernorm.newton_iterations(config), layout.tokens
    y = inv_sqrt(backend, total, c, iters, y_bound, op, n)
    y = he.ensure_level(backend, y, 2, op, y_bound, n)
    return _normalised(backend, z, y, layout, gamma, beta, config.var_high, 2, 2.0 * x_bound)


def layernorm_chebyshev(
    backend: CKKSBackend,
    blocks: list[Ciphertext],
    layout: TokenInterleaved,
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    config: approx.layernorm.LayerNormConfig,
) -> list[Ciphertext]:
    """LayerNorm as ``approx.layernorm.chebyshev``: mean and variance by QuickSum, 1/sqrt from
    a Chebyshev start on the calibrated variance range and a few Newton steps.

    Bootstraps: the input blocks (if they arrive without levels), then only one-per-token
    ciphertexts: the mapped variance t before the start and y between Newton steps. u, which
    Newton's steps read, is never bootstrapped (a bootstrap's error is relative to the largest
    slot and would swamp small variances); Newton removes the error bootstraps put into y.
    """
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    hidden, op = gamma.shape[0], "layernorm"
    coeffs, steps = approx.layernorm.chebyshev_start(config)
    low = config.var_low / config.var_high
    # z (1 level), z^2 (1), then u and t (1), and Newton's u y^2 one level below u: 5 levels.
    z, total = _centred_variance(backend, blocks, layout, hidden, eps, 5, config.input_bound)
    c = 1.0 / (hidden * config.var_high)  # total c = u = var / var_high, in [low, 1]
    neg_half_u = backend.multiply_plain(total, -0.5 * c)
    t = backend.add_plain(
        backend.multiply_plain(total, 2.0 * c / (1.0 - low)), -(1.0 + low) / (1.0 - low)
    )
    y_bound = 1.01 / math.sqrt(low)
    per_token = layout.tokens  # t and y hold one value per token in every feature slot
    y = he.chebyshev_series(backend, t, coeffs, op, period=per_token)
    for _ in range(steps):  # y <- 1.5 y - 0.5 y (u y^2)
        y = he.ensure_level(backend, y, 3, op, y_bound, per_token)
        correction = backend.multiply(y, backend.multiply(neg_half_u, backend.multiply(y, y)))
        y = backend.add(backend.multiply_plain(y, 1.5), correction)
    # The output keeps one level (z y, then gamma: two below min(z, y)), so the next matmul
    # (Q, K, V or FFN in) needs no bootstrap of the hidden state; z has 4 levels here.
    y = he.ensure_level(backend, y, 3, op, y_bound, per_token)
    return _normalised(
        backend, z, y, layout, gamma, beta, config.var_high, 3, 2.0 * config.input_bound
    )


def _replication_steps(width: int, slots: int) -> list[int]:
    return [width << k for k in range((slots // width).bit_length() - 1)]


def argmax_rotations(count: int, slots: int) -> list[int]:
    """Rotation steps ``argmax_onehot`` needs for ``count`` values."""
    inner = min(approx.folds.next_pow2(count), slots)
    return [-s for s in _replication_steps(inner, slots)] + he.quick_sum_steps(inner)


def argmax_onehot(
    backend: CKKSBackend,
    cts: list[Ciphertext],
    count: int,
    config: approx.argmax.ArgmaxConfig = approx.argmax.DEFAULT_ARGMAX,
) -> list[Ciphertext]:
    """One-hot of the largest of ``count`` values held in slots 0 .. count-1 of ``cts`` (the
    rest zero), in log2(count) QuickMax rounds and one SGN, as NEXUS; bootstraps between rounds.

    Padding to a power of two uses -bound (as the twin), so it never wins.
    """
    slots, op = backend.slots, "argmax"
    width = approx.folds.next_pow2(count)
    n_cts = max(1, width // slots)
    if len(cts) != math.ceil(count / slots):
        raise InputError(f"argmax: {count} values need {math.ceil(count / slots)} ciphertexts")
    padded = []
    for i in range(n_cts):
        start = i * slots
        pad = np.zeros(slots)
        pad[max(0, count - start) :] = -config.bound
        pad[min(slots, width - start) :] = 0.0  # beyond the power-of-two width: replicated below
        if i < len(cts):
            padded.append(backend.add_plain(cts[i], pad))
        else:
            padded.append(backend.add_plain(backend.multiply_plain(cts[0], 0.0), pad))
    # Across ciphertexts: the twin's first rounds pair value i with i + width / 2.
    level = padded
    while len(level) > 1:
        half = len(level) // 2
        level = [
            he.smooth_max(
                backend,
                he.ensure_level(backend, level[j], 2, op, config.bound),
                he.ensure_level(backend, level[j + half], 2, op, config.bound),
                config.bound,
                config.g,
                config.f,
                op,
            )
            for j in range(half)
        ]
    m = level[0]
    inner = min(width, slots)
    for step in _replication_steps(inner, slots):  # period ``inner``: rotations stay in a group
        m = backend.add(m, backend.rotate(m, -step))
    m = he.quick_max(backend, m, inner, 1, config.bound, config.g, config.f, op)
    d = config.margin * 2.0 * config.bound
    out = []
    for i, ct in enumerate(padded[: len(cts)]):
        arg = backend.add_plain(backend.sub(ct, m), d)
        arg = backend.multiply_plain(
            he.ensure_level(backend, arg, 2, op, 2.0 * config.bound + d), 1.0 / (4.0 * config.bound)
        )
        s = he.ensure_level(backend, he.sgn(backend, arg, config.g, config.f, op), 1, op)
        onehot = backend.multiply_plain(backend.add_plain(s, 1.0), 0.5)
        out.append(onehot.prefix(min(slots, count - i * slots)))
    return out

"""Ciphertext x ciphertext matmuls of attention: scores Q K^T per head and probabilities x V.

Inputs are the token-interleaved blocks of ``matmul`` (slot f n + t: feature f of token t; F
features per block, heads of ``head_dim`` features, F / head_dim heads per block); the 1/sqrt(d_h)
of the scores is folded into W_Q by the caller. Requires slots = G n^2 with G a power of two
(G = 1: 128 tokens on ring 2^15's 16,384 slots; G = 2: on ring 2^16's 32,768).

Scores come out in an interleaved diagonal layout, G heads per ciphertext:

    slot (G d + g) n + t  =  S_g[t, (t + d) mod n]      (head g of the ciphertext, query t,
                                                         key offset d)

so softmax over the keys of query t reduces over d: rotations by multiples of G n, cyclic over
the whole ciphertext (``he_nonlinear.softmax_squaring``), and the probabilities feed
``weighted_values`` in the same layout. Heads are grouped in order: ciphertext c holds heads
c G .. c G + G - 1.

Algorithm, for each key offset d (n of them) and each block:
- ``scores``: K_d = token-rotate(K, d) (slot f n + t gets K[t + d, f]: two rotations and two
  masks), P = Q * K_d, a rotate-and-add over each head's d_h features, then each head's sum
  (at block h d_h) is masked out and accumulated Horner-style: acc_h <- M_{h,d} + rot(acc_h, -G n),
  which leaves offset d at block h d_h + G d; one rotation per head moves it to block G d + g.
- ``weighted_values``: head h's row of offset d is brought to block h dh (a chain of rotations
  by G n), masked, replicated over the head's d_h features, and multiplied by token-rotate(V, d).
Per offset and block: 2 + log2(d_h) + F / d_h rotations in each of the two. Levels: scores 3,
weighted values 2; inputs are first dropped to exactly those levels, because a rotation costs
about 10x less at level 3 than at level 19 (measured on ring 2^15, see bench/he_ops.py).
Keys: powers of two, -1, -G n and -n 2^k (k < log2 d_h); all other shifts are composed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import InputError
from privformer.protocols.nexus.matmul import TokenInterleaved

SCORE_LEVELS = 3
VALUE_LEVELS = 2


@dataclass(frozen=True)
class AttentionLayout:
    """Token-interleaved blocks split into heads of ``head_dim`` features, and the interleaved
    diagonal layout of their scores (``groups`` = G heads per score ciphertext)."""

    layout: TokenInterleaved
    head_dim: int

    def __post_init__(self) -> None:
        n, f, dh, slots = self.layout.tokens, self.layout.features, self.head_dim, self.layout.slots
        groups = slots // (n * n)
        if slots % (n * n) or groups & (groups - 1):
            raise InputError(
                f"attention needs slots = G tokens^2 with G a power of two, got {slots} "
                f"slots for {n} tokens"
            )
        if dh < 1 or dh & (dh - 1) or f % dh:
            raise InputError(f"head_dim {dh} must be a power of two dividing {f} features")

    @property
    def heads_per_block(self) -> int:
        return self.layout.features // self.head_dim

    @property
    def groups(self) -> int:
        """G: heads per score ciphertext."""
        return self.layout.slots // (self.layout.tokens * self.layout.tokens)

    def rotation_steps(self) -> list[int]:
        n, slots = self.layout.tokens, self.layout.slots
        steps = set(he.power_of_two_steps(slots)) | {-1, -n, -self.groups * n}
        steps |= {-n * (1 << k) for k in range(self.head_dim.bit_length() - 1)}
        return sorted(s % slots for s in steps)

    # --- the diagonal layout of scores, in numpy (for packing tests and reference) ----------
    def pack_scores(self, s: np.ndarray) -> np.ndarray:
        """(n x n) scores of one head (G = 1), or (G x n x n) of G heads, to the layout:
        slot (G d + g) n + t = S_g[t, (t + d) % n]."""
        n, groups = self.layout.tokens, self.groups
        heads = np.asarray(s, dtype=np.float64).reshape(-1, n, n)
        if heads.shape[0] != groups:
            raise InputError(f"a score ciphertext holds {groups} heads, got {heads.shape[0]}")
        t = np.arange(n)
        rows = [heads[g][t, (t + d) % n] for d in range(n) for g in range(groups)]
        return np.stack(rows).reshape(-1)

    def unpack_scores(self, v: np.ndarray) -> np.ndarray:
        """The inverse of ``pack_scores``: (n x n) when G = 1, else (G x n x n)."""
        n, groups = self.layout.tokens, self.groups
        diag = np.asarray(v[: groups * n * n]).reshape(n, groups, n)  # [d, g, t]
        out = np.empty((groups, n, n))
        t = np.arange(n)
        for d in range(n):
            for g in range(groups):
                out[g, t, (t + d) % n] = diag[d, g]
        return out[0] if groups == 1 else out


def _token_masks(layout: TokenInterleaved, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks for token-rotate by d: keep t < n - d from rot(x, d), t >= n - d from rot(x, d - n)."""
    n = layout.tokens
    low = np.tile((np.arange(n) < n - d).astype(np.float64), layout.features)
    return low, 1.0 - low


def _token_rotated(
    backend: CKKSBackend, rotated: Ciphertext, d: int, layout: TokenInterleaved
) -> Ciphertext:
    """token-rotate(x, d) from ``rotated`` = rot(x, d): slot f n + t gets x[(t + d) % n, f]."""
    if d == 0:
        return backend.multiply_plain(rotated, 1.0)  # same level as the d > 0 case
    low, high = _token_masks(layout, d)
    wrapped = backend.rotate(rotated, -layout.tokens)  # rot(x, d - n)
    return backend.multiply_plain_sum([(rotated, low), (wrapped, high)])


# |Q|, |K|, |V| entries a bootstrap may have to take (MiniLM's reach ~20; see LayerConfig).
ACTIVATION_BOUND = 64.0


def _at_levels(
    backend: CKKSBackend, xs: list[Ciphertext], levels: list[int], bound: float
) -> list[Ciphertext]:
    """Each of ``xs`` at exactly its entry of ``levels``: bootstrapped first (together) if
    below, slots within ``bound``; dropped if above."""
    xs = he.ensure_levels(backend, xs, levels, "attention", bound)
    return [backend.drop_to(x, level) for x, level in zip(xs, levels, strict=True)]


def _check(backend: CKKSBackend, att: AttentionLayout, *groups: list[Ciphertext]) -> None:
    if att.layout.slots != backend.slots:
        raise InputError(f"layout has {att.layout.slots} slots, the backend {backend.slots}")
    if len({len(g) for g in groups}) != 1:
        raise InputError(f"operands have {[len(g) for g in groups]} blocks; they must match")


def _real_heads(att: AttentionLayout, blocks: int, heads: int | None) -> int:
    """The heads that hold features (padding features make empty heads in the last block)."""
    capacity = att.heads_per_block * blocks
    heads = capacity if heads is None else heads
    if not 1 <= heads <= capacity:
        raise InputError(f"{heads} heads do not fit {blocks} blocks of {att.heads_per_block}")
    return heads


def scores(
    backend: CKKSBackend,
    q: list[Ciphertext],
    k: list[Ciphertext],
    att: AttentionLayout,
    bound: float = ACTIVATION_BOUND,
    heads: int | None = None,
) -> list[Ciphertext]:
    """Q K^T of the first ``heads`` heads (default: every head the blocks hold), G heads per
    ciphertext in the interleaved diagonal layout. ``bound``: |Q|, |K| entries (for the
    bootstraps that may bring them to level)."""
    _check(backend, att, q, k)
    layout, dh, n, groups = att.layout, att.head_dim, att.layout.tokens, att.groups
    total = _real_heads(att, len(q), heads)
    per_head: list[Ciphertext] = []  # head h's offsets at blocks h dh + G d (in its block)
    used = -(-total // att.heads_per_block)  # blocks holding a real head
    # Q is used after K's token-rotate, so it needs a level less; both share bootstraps.
    qk = _at_levels(
        backend, q[:used] + k[:used], [SCORE_LEVELS - 1] * used + [SCORE_LEVELS] * used, bound
    )
    q, k = qk[:used], qk[used:]
    for i, (qb, kb) in enumerate(zip(q, k, strict=True)):
        local = min(att.heads_per_block, total - i * att.heads_per_block)
        rotated = he.rotate_composed(backend, kb, n - 1)
        acc: list[Ciphertext | None] = [None] * local
        for d in range(n - 1, -1, -1):  # descending, for the Horner accumulation
            if d < n - 1:
                rotated = backend.rotate(rotated, -1)
            prod = backend.multiply(qb, _token_rotated(backend, rotated, d, layout))
            summed = he.quick_sum(backend, prod, dh, n)
            for h in range(local):
                term = backend.multiply_plain(summed, layout.block_mask([h * dh]))
                prev = acc[h]
                acc[h] = (
                    term if prev is None else backend.add(term, backend.rotate(prev, -groups * n))
                )
        per_head += cast(list[Ciphertext], acc)  # every head got n terms
    # Head h (its block's h_local) sits at blocks h_local dh + G d; it belongs at G d + g.
    out = []
    for c in range(0, total, groups):
        members = []
        for g, h in enumerate(range(c, min(c + groups, total))):
            shift = (h % att.heads_per_block) * dh - g
            members.append(he.rotate_composed(backend, per_head[h], shift * n))
        combined = members[0]
        for m in members[1:]:
            combined = backend.add(combined, m)
        out.append(combined)
    return out


def weighted_values(
    backend: CKKSBackend,
    probs: list[Ciphertext],
    v: list[Ciphertext],
    att: AttentionLayout,
    bound: float = ACTIVATION_BOUND,
    heads: int | None = None,
) -> list[Ciphertext]:
    """softmax(S) V for the first ``heads`` heads (default: all the blocks hold), from their
    probabilities (G heads per ciphertext, as ``scores`` makes them), back in V's
    token-interleaved blocks (|V| <= ``bound``)."""
    _check(backend, att, v)
    layout, dh, n, groups = att.layout, att.head_dim, att.layout.tokens, att.groups
    total = _real_heads(att, len(v), heads)
    if len(probs) != -(-total // groups):
        raise InputError(
            f"{len(probs)} probability ciphertexts for {total} heads, {groups} per ciphertext"
        )
    hp = att.heads_per_block
    levelled = _at_levels(backend, probs, [VALUE_LEVELS] * len(probs), 1.0)
    v = _at_levels(backend, v, [VALUE_LEVELS] * len(v), bound)
    out = []
    for i, vb in enumerate(v):
        local = min(hp, total - i * hp)
        if local <= 0:  # a block of padding features only: its heads are empty
            out.append(backend.multiply_plain(vb, 0.0))
            continue
        # Head h's offset-d row (block G d + g) is wanted at block h_local dh: start shifted
        # right by h_local dh - g blocks, then one rotation by G n per offset.
        chains = []
        for h_local in range(local):
            h = i * hp + h_local
            shift = h_local * dh - h % groups
            chains.append(he.rotate_composed(backend, levelled[h // groups], -shift * n))
        rotated = vb
        acc = None
        for d in range(n):
            if d:
                chains = [backend.rotate(c, groups * n) for c in chains]
                rotated = backend.rotate(rotated, 1)
            row = backend.multiply_plain_sum(
                [(c, layout.block_mask([h * dh])) for h, c in enumerate(chains)]
            )
            for j in range(dh.bit_length() - 1):  # replicate over the head's features
                row = backend.add(row, backend.rotate(row, -n * (1 << j)))
            term = backend.multiply(row, _token_rotated(backend, rotated, d, layout))
            acc = term if acc is None else backend.add(acc, term)
        out.append(cast(Ciphertext, acc))  # n >= 1 offsets were added
    return out

"""Ciphertext x ciphertext matmuls of attention: scores Q K^T per head and probabilities x V.

Inputs are the token-interleaved blocks of ``matmul`` (slot f n + t: feature f of token t; F
features per block, heads of ``head_dim`` features, F / head_dim heads per block); the 1/sqrt(d_h)
of the scores is folded into W_Q by the caller. Requires n x n = slots (n = 128 at ring 2^15).

Scores come out in a diagonal layout, one ciphertext per head:

    slot d n + t  =  S[t, (t + d) mod n]      (query t, key offset d)

so softmax over the keys of query t reduces over d, rotations by multiples of n that are cyclic
over the whole ciphertext (``he_nonlinear.softmax(width=n, stride=n)``), and the probabilities
feed ``weighted_values`` in the same layout.

Algorithm, for each key offset d (n of them) and each block:
- ``scores``: K_d = token-rotate(K, d) (slot f n + t gets K[t + d, f]: two rotations and two
  masks), P = Q * K_d, a rotate-and-add over each head's d_h features, then each head's sum
  (at block h d_h) is masked out and accumulated Horner-style: acc_h <- M_{h,d} + rot(acc_h, -n).
- ``weighted_values``: head h's row of offset d is brought to block h d_h (a chain of rotations
  by n), masked, replicated over the head's d_h features, and multiplied by token-rotate(V, d).
Per offset and block: 2 + log2(d_h) + F / d_h rotations in each of the two. Levels: scores 3,
weighted values 2; inputs are first dropped to exactly those levels, because a rotation costs
about 10x less at level 3 than at level 19 (measured on ring 2^15, see bench/he_ops.py).
Keys: powers of two, -1, -n and -n 2^k (k < log2 d_h); all other shifts are composed.
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
    """Token-interleaved blocks split into heads of ``head_dim`` features."""

    layout: TokenInterleaved
    head_dim: int

    def __post_init__(self) -> None:
        n, f, dh = self.layout.tokens, self.layout.features, self.head_dim
        if n * n != self.layout.slots:
            raise InputError(f"attention needs tokens^2 = slots, got {n}^2 != {self.layout.slots}")
        if dh < 1 or dh & (dh - 1) or f % dh:
            raise InputError(f"head_dim {dh} must be a power of two dividing {f} features")

    @property
    def heads_per_block(self) -> int:
        return self.layout.features // self.head_dim

    def rotation_steps(self) -> list[int]:
        n, slots = self.layout.tokens, self.layout.slots
        steps = set(he.power_of_two_steps(slots)) | {-1, -n}
        steps |= {-n * (1 << k) for k in range(self.head_dim.bit_length() - 1)}
        return sorted(s % slots for s in steps)

    # --- the diagonal layout of scores, in numpy (for packing tests and reference) ----------
    def pack_scores(self, s: np.ndarray) -> np.ndarray:
        """(n x n) scores of one head to the diagonal layout: slot d n + t = S[t, (t + d) % n]."""
        n = self.layout.tokens
        t = np.arange(n)
        return np.stack([s[t, (t + d) % n] for d in range(n)]).reshape(-1)

    def unpack_scores(self, v: np.ndarray) -> np.ndarray:
        n = self.layout.tokens
        diag = np.asarray(v[: n * n]).reshape(n, n)  # [d, t]
        out = np.empty((n, n))
        t = np.arange(n)
        for d in range(n):
            out[t, (t + d) % n] = diag[d]
        return out


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


def _block_mask(layout: TokenInterleaved, blocks: list[int]) -> np.ndarray:
    mask = np.zeros((layout.features, layout.tokens))
    mask[blocks] = 1.0
    return mask.reshape(-1)


def _at_level(backend: CKKSBackend, x: Ciphertext, level: int, bound: float) -> Ciphertext:
    """x at exactly ``level``: bootstrapped first if below (slots within ``bound``), dropped
    if above."""
    return backend.drop_to(he.ensure_level(backend, x, level, "attention", bound), level)


def _check(backend: CKKSBackend, att: AttentionLayout, *groups: list[Ciphertext]) -> None:
    if att.layout.slots != backend.slots:
        raise InputError(f"layout has {att.layout.slots} slots, the backend {backend.slots}")
    if len({len(g) for g in groups}) != 1:
        raise InputError(f"operands have {[len(g) for g in groups]} blocks; they must match")


def scores(
    backend: CKKSBackend,
    q: list[Ciphertext],
    k: list[Ciphertext],
    att: AttentionLayout,
    bound: float = ACTIVATION_BOUND,
) -> list[Ciphertext]:
    """Q K^T for every head (in block order), each a ciphertext in the diagonal layout.
    ``bound``: |Q|, |K| entries (for the bootstraps that may bring them to level)."""
    _check(backend, att, q, k)
    layout, dh, n = att.layout, att.head_dim, att.layout.tokens
    out = []
    for qb, kb in zip(q, k, strict=True):
        qb = _at_level(backend, qb, SCORE_LEVELS - 1, bound)  # used after the token-rotate
        kb = _at_level(backend, kb, SCORE_LEVELS, bound)
        rotated = he.rotate_composed(backend, kb, n - 1)
        acc: list[Ciphertext | None] = [None] * att.heads_per_block
        for d in range(n - 1, -1, -1):  # descending, for the Horner accumulation
            if d < n - 1:
                rotated = backend.rotate(rotated, -1)
            prod = backend.multiply(qb, _token_rotated(backend, rotated, d, layout))
            summed = he.quick_sum(backend, prod, dh, n)
            for h in range(att.heads_per_block):
                term = backend.multiply_plain(summed, _block_mask(layout, [h * dh]))
                prev = acc[h]
                acc[h] = term if prev is None else backend.add(term, backend.rotate(prev, -n))
        # acc_h = sum_d rot(M_{h,d}, -d n): head h's sums sit at block h dh + d; move to d.
        done = cast(list[Ciphertext], acc)  # every head got n terms
        out += [he.rotate_composed(backend, a, h * dh * n) for h, a in enumerate(done)]
    return out


def weighted_values(
    backend: CKKSBackend,
    probs: list[Ciphertext],
    v: list[Ciphertext],
    att: AttentionLayout,
    bound: float = ACTIVATION_BOUND,
) -> list[Ciphertext]:
    """softmax(S) V for every head, back in V's token-interleaved blocks (|V| <= ``bound``)."""
    hp = att.heads_per_block
    if len(probs) != hp * len(v):
        raise InputError(f"{len(probs)} heads of probabilities for {len(v)} blocks of {hp} heads")
    _check(backend, att, v)
    layout, dh, n = att.layout, att.head_dim, att.layout.tokens
    out = []
    for i, vb in enumerate(v):
        vb = _at_level(backend, vb, VALUE_LEVELS, bound)
        # Head h's offset-d row (block d) is wanted at block h dh: start shifted by -h dh blocks,
        # then one rotation by n per offset.
        chains = [
            he.rotate_composed(backend, _at_level(backend, p, VALUE_LEVELS, 1.0), -h * dh * n)
            for h, p in enumerate(probs[i * hp : (i + 1) * hp])
        ]
        rotated = vb
        acc = None
        for d in range(n):
            if d:
                chains = [backend.rotate(c, n) for c in chains]
                rotated = backend.rotate(rotated, 1)
            row = backend.multiply_plain_sum(
                [(c, _block_mask(layout, [h * dh])) for h, c in enumerate(chains)]
            )
            for j in range(dh.bit_length() - 1):  # replicate over the head's features
                row = backend.add(row, backend.rotate(row, -n * (1 << j)))
            term = backend.multiply(row, _token_rotated(backend, rotated, d, layout))
            acc = term if acc is None else backend.add(acc, term)
        out.append(cast(Ciphertext, acc))  # n >= 1 offsets were added
    return out

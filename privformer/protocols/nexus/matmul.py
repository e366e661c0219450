"""Plaintext-weight x ciphertext-activation matmul X @ W, by generalized diagonals with
baby-step giant-step rotations, in a token-interleaved packing.

Packing ("token-interleaved", one picture per ciphertext of S slots, n tokens, F = S / n features):

    slot  0 .. n-1     : feature 0 of tokens 0 .. n-1
    slot  n .. 2n-1    : feature 1 of tokens 0 .. n-1
    ...
    slot (F-1)n .. S-1 : feature F-1

A d-wide activation takes ceil(d / F) ciphertexts (feature blocks). Rotating a ciphertext left by
k n slots moves every token's feature f + k (mod F) to feature f at once, so one rotation serves
all n tokens, and the output comes back in the same packing (matmuls chain without repacking).

For one F x F weight block, Y = sum_k diag_k * rot(X, k n) with
diag_k[f n + t] = W[(f + k) mod F, f] (F plaintext multiplications). Baby-step giant-step
with k = g b + j:
Y = sum_g rot(sum_j rot(diag_{g b + j}, -g b n) * rot(X, j n), g b n): b - 1 rotations per input
block (shared by every output block) and F / b - 1 per output block, instead of F - 1 per pair of
blocks. Cost: blocks_in x blocks_out x F plaintext products, one level.

Replicated input (small layouts, e.g. 16 tokens: F = 2,048 features for MiniLM's 384). When the
input is one block whose features from d_in on are zero (the caller's promise), and an output
block uses w_o features with c d_in <= F for c = ceil((w_o + d_in - 1) / d_in), the input is
copied c times along the features (rotations and additions, no level) so that X_rep[f + k] =
X[(f + k) mod d_in] for every f < w_o and k < d_in. Then d_in diagonals suffice,
diag_k[f n + t] = W[(f + k) mod d_in, f] for f < w_o, instead of every k in [0, F) that meets
the padded block: 384 products instead of 767 for a 384 x 384 weight, 384 instead of 1,919 for
384 x 1,536, and ceil(d_in / b) giant steps instead of F / b.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import InputError


@dataclass(frozen=True)
class TokenInterleaved:
    """The packing above, for ``tokens`` (a power of two dividing the slot count)."""

    tokens: int
    slots: int

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.slots % self.tokens or self.tokens & (self.tokens - 1):
            raise InputError(
                f"tokens ({self.tokens}) must be a power of two dividing the slots ({self.slots})"
            )

    @property
    def features(self) -> int:
        """Features per ciphertext (F)."""
        return self.slots // self.tokens

    def blocks(self, width: int) -> int:
        return math.ceil(width / self.features)

    def pack(self, x: np.ndarray) -> list[np.ndarray]:
        """(tokens x d) matrix to slot vectors, one per feature block (zero padded)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.tokens:
            raise InputError(f"expected a ({self.tokens} x d) activation, got shape {x.shape}")
        f = self.features
        padded = np.zeros((self.tokens, self.blocks(x.shape[1]) * f))  # (n, blocks * F)
        padded[:, : x.shape[1]] = x
        # block b: its (n, F) columns transposed to (F, n), flattened: slot f n + t = x[t, bF + f]
        return [padded[:, b * f : (b + 1) * f].T.reshape(-1) for b in range(padded.shape[1] // f)]

    def block_mask(self, blocks: Iterable[int], value: float = 1.0) -> np.ndarray:
        """A slot vector holding ``value`` in the given blocks of ``tokens`` slots (feature f of
        every token: block f), 0 elsewhere."""
        mask = np.zeros((self.features, self.tokens))
        mask[list(blocks)] = value
        return mask.reshape(-1)

    def unpack(self, vectors: list[np.ndarray], width: int) -> np.ndarray:
        """Slot vectors (one per feature block) back to the (tokens x width) matrix."""
        f = self.features
        cols = [np.asarray(v[: self.slots]).reshape(f, self.tokens).T for v in vectors]  # (n, F)
        return np.concatenate(cols, axis=1)[:, :width]  # (n, width)


def baby_steps(features: int) -> int:
    """b: a power of two near sqrt(F), minimising (b - 1) + (F / b - 1)."""
    return 1 << (int(math.log2(features)) // 2)


def rotation_steps(layout: TokenInterleaved) -> list[int]:
    """Rotation keys the matmul needs: n (each baby step rotates the previous one by n) and
    b n (the giant steps are accumulated Horner-style, one rotation by b n each). Two keys
    instead of b + f / b - 2: at ring 2^16 each key is ~140 MB, and keys are what fills a
    server's memory (docs/nexus.md)."""
    f, n = layout.features, layout.tokens
    b = baby_steps(f)
    return sorted({n} | ({b * n} if f // b > 1 else set()))


def encrypt_activation(
    backend: CKKSBackend, x: np.ndarray, layout: TokenInterleaved
) -> list[Ciphertext]:
    if layout.slots != backend.slots:
        raise InputError(f"layout has {layout.slots} slots, the backend {backend.slots}")
    return [backend.encrypt(v) for v in layout.pack(x)]


def decrypt_activation(
    backend: CKKSBackend, cts: list[Ciphertext], layout: TokenInterleaved, width: int
) -> np.ndarray:
    return layout.unpack([backend.decrypt(ct) for ct in cts], width)


def diagonal(block: np.ndarray, k: int, tokens: int) -> np.ndarray:
    """diag_k of an F x F block, repeated for every token: slot f n + t holds W[(f + k) % F, f]."""
    f = block.shape[0]
    idx = np.arange(f)
    return np.repeat(block[(idx + k) % f, idx], tokens)


def replicas(d_in: int, width_out: int, features: int) -> int:
    """Copies of a d_in-wide input that let d_in diagonals serve ``width_out`` outputs in blocks
    of ``features`` (the docstring above); 0 where they do not fit one block."""
    copies = -(-(width_out + d_in - 1) // d_in)
    return copies if copies * d_in <= features else 0


def replicate(
    backend: CKKSBackend, x: Ciphertext, copies: int, d_in: int, tokens: int
) -> Ciphertext:
    """x plus copies of itself shifted by d_in, 2 d_in, ... features (``copies`` in all), by
    doubling: rotations composed from the power-of-two keys, additions, no level."""
    powers = [x]  # powers[i]: 2^i copies
    while 2 ** len(powers) <= copies:
        last = powers[-1]
        shift = -(2 ** (len(powers) - 1)) * d_in * tokens
        powers.append(backend.add(last, he.rotate_composed(backend, last, shift)))
    top = len(powers) - 1
    acc, have = powers[top], 2**top
    for i in range(top - 1, -1, -1):
        if copies >> i & 1:
            acc = backend.add(acc, he.rotate_composed(backend, powers[i], -have * d_in * tokens))
            have += 2**i
    return acc


def matmul_plain(
    backend: CKKSBackend,
    x: list[Ciphertext],
    weight: np.ndarray,
    layout: TokenInterleaved,
    zero_padded: bool = False,
) -> list[Ciphertext]:
    """Encrypted X (packed by ``layout``) times the server's plaintext W (d_in x d_out).

    ``zero_padded``: the caller's promise that the input's features from d_in on are zero (to
    CKKS noise), as the client's packing, LayerNorm (gamma and beta are zero there) and every
    matmul with its bias leave them; it lets a one-block input use the replicated diagonals."""
    w = np.asarray(weight, dtype=np.float64)
    f, n = layout.features, layout.tokens
    if w.ndim != 2 or layout.blocks(w.shape[0]) != len(x):
        raise InputError(
            f"weight of shape {w.shape} does not match {len(x)} input blocks of {f} features"
        )
    bi, bo = len(x), layout.blocks(w.shape[1])
    d_in, d_out = w.shape
    padded = np.zeros((bi * f, bo * f))
    padded[: w.shape[0], : w.shape[1]] = w
    b = baby_steps(f)
    if zero_padded and bi == 1:
        copies = [replicas(d_in, min(f, d_out - jo * f), f) for jo in range(bo)]
    else:
        copies = [0] * bo
    # the plain baby steps, unless every output block comes from the replicated input
    baby = [] if all(copies) else [_baby_chain(backend, ct, b, n) for ct in x]
    replicated: dict[int, list[Ciphertext]] = {}
    out = []
    for jo in range(bo):
        if copies[jo]:
            c = copies[jo]
            if c not in replicated:
                replicated[c] = _baby_chain(backend, replicate(backend, x[0], c, d_in, n), b, n)
            width = min(f, d_out - jo * f)
            out.append(
                _replicated_block(backend, replicated[c], w[:, jo * f : jo * f + width], f, n, b)
            )
            continue

        def plain_terms(g: int, jo: int = jo) -> list[tuple[Ciphertext, np.ndarray]]:
            terms = []
            for i in range(bi):
                block = padded[i * f : (i + 1) * f, jo * f : (jo + 1) * f]
                for j in range(b):
                    diag = np.roll(diagonal(block, g * b + j, n), g * b * n)
                    if diag.any():
                        terms.append((baby[i][j], diag))
            return terms

        out.append(_giant_steps(backend, plain_terms, f // b, b * n, x[0]))
    return out


def _baby_chain(backend: CKKSBackend, ct: Ciphertext, b: int, n: int) -> list[Ciphertext]:
    """Baby step j: the input rotated by j n, each from the previous one."""
    chain = [ct]
    for _ in range(1, b):
        chain.append(backend.rotate(chain[-1], n))
    return chain


def _replicated_block(
    backend: CKKSBackend,
    baby: list[Ciphertext],
    w: np.ndarray,
    features: int,
    n: int,
    b: int,
) -> Ciphertext:
    """One output block (w: d_in x w_o) from the replicated input's baby steps: d_in diagonals
    diag_k[f n + t] = w[(f + k) mod d_in, f], giant steps accumulated Horner-style as above."""
    d_in, width = w.shape
    cols = np.arange(width)

    def terms(g: int) -> list[tuple[Ciphertext, np.ndarray]]:
        out = []
        for j in range(min(b, d_in - g * b)):
            row = np.zeros(features)
            row[:width] = w[(cols + g * b + j) % d_in, cols]
            if row.any():
                out.append((baby[j], np.roll(np.repeat(row, n), g * b * n)))
        return out

    return _giant_steps(backend, terms, -(-d_in // b), b * n, baby[0])


def _giant_steps(
    backend: CKKSBackend,
    terms: Callable[[int], list[tuple[Ciphertext, np.ndarray]]],
    giant: int,
    shift: int,
    zero_like: Ciphertext,
) -> Ciphertext:
    """sum_g rot(sum of terms(g)'s products, g shift) over g < ``giant``, Horner-style from the
    last giant step down (acc <- rot(acc, shift) + inner_g, so every giant rotation is by
    ``shift``), one rescale per giant step. Diagonals are made one giant step at a time (all of
    them at once would hold F ring-sized vectors). An all-zero weight block gives zeros at
    ``zero_like``'s level."""
    acc = None
    for g in range(giant - 1, -1, -1):
        if acc is not None:
            acc = backend.rotate(acc, shift)
        step = terms(g)
        if step:
            inner = backend.multiply_plain_sum(step)
            acc = inner if acc is None else backend.add(acc, inner)
    return acc if acc is not None else backend.multiply_plain(zero_like, 0.0)

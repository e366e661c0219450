"""Secret permutations for STIP, drawn from the operating system's CSPRNG.

Convention (the same as ``user.key``): a permutation is an int64 index vector ``perm`` and a
tensor is permuted along its last axis by ``x_permuted = x[..., perm]``; ``inverse(perm)`` undoes
it. In the paper's matrix notation ``x_permuted = x @ P`` with ``P[perm[k], k] = 1``.

Attention permutations must keep the computation exact (constraints STIP's paper omits):
- Q and K of a head must be permuted with the same within-head permutation, so that
  ``Q' K'^T = Q K^T``; V may have its own within-head permutation, which then reaches W_o's rows.
- Heads move as whole blocks, and with grouped-query attention a query head may only move with
  its key/value group: KV heads are permuted, and query heads inside each group.
- With RoPE, a within-head permutation must commute with the 2-D rotations. Standard RoPE gives
  every pair its own frequency, so the only safe choice is the identity inside a head
  (whole-head permutation only), for Q and K; V has no rotation and is permuted freely.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from privformer.errors import InputError

_SYSTEM_RANDOM = secrets.SystemRandom()  # os.urandom underneath: a CSPRNG, not Mersenne Twister


def random_permutation(n: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` from the OS CSPRNG (Fisher-Yates)."""
    if n < 1:
        raise InputError(f"permutation size must be positive, got {n}")
    items = list(range(n))
    _SYSTEM_RANDOM.shuffle(items)
    return torch.tensor(items, dtype=torch.int64)


def identity(n: int) -> torch.Tensor:
    """The identity permutation of size ``n``."""
    return torch.arange(n, dtype=torch.int64)


def inverse(perm: torch.Tensor) -> torch.Tensor:
    """The index vector ``inv`` with ``x[..., perm][..., inv] == x``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype)
    return inv


def is_permutation(perm: torch.Tensor, n: int) -> bool:
    """True when ``perm`` is an int64 vector holding each of ``0..n-1`` exactly once."""
    return (
        perm.dtype == torch.int64
        and perm.ndim == 1
        and perm.numel() == n
        and bool(torch.equal(torch.sort(perm).values, torch.arange(n)))
    )


@dataclass(frozen=True)
class AttentionPermutation:
    """Index vectors for one attention block's four spaces.

    ``q`` and ``o`` act on the ``num_heads * head_dim`` query/output space, ``k`` and ``v`` on the
    ``num_kv_heads * head_dim`` key/value space.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor


def attention_permutation(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    rope: bool,
    randomize: bool = True,
) -> AttentionPermutation:
    """Draw a structured permutation of an attention block that keeps its output exact.

    KV heads are permuted by ``kv``; the query heads of each group move with their group and are
    shuffled inside it; within-head permutations are shared by Q and K (identity under RoPE), and
    V gets its own per-KV-head within-head permutation, which the output space ``o`` inherits.
    """
    if num_heads % num_kv_heads:
        raise InputError(f"{num_heads} query heads do not split into {num_kv_heads} KV groups")
    group = num_heads // num_kv_heads
    draw = random_permutation if randomize else identity
    kv = draw(num_kv_heads)
    inner = [draw(group) for _ in range(num_kv_heads)]  # query heads inside each original group
    qk_within = [identity(head_dim) if rope else draw(head_dim) for _ in range(num_kv_heads)]
    v_within = [draw(head_dim) for _ in range(num_kv_heads)]

    q, o, k, v = [], [], [], []
    for new_group in range(num_kv_heads):
        g = int(kv[new_group])  # the original KV head now at position new_group
        k.append(g * head_dim + qk_within[g])
        v.append(g * head_dim + v_within[g])
        for j in range(group):
            head = g * group + int(inner[g][j])  # the original query head now at this position
            q.append(head * head_dim + qk_within[g])
            o.append(head * head_dim + v_within[g])
    return AttentionPermutation(q=torch.cat(q), k=torch.cat(k), v=torch.cat(v), o=torch.cat(o))

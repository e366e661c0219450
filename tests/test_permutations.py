"""Secret permutations: CSPRNG source, validity, and the attention constraints STIP needs."""

from __future__ import annotations

import secrets

import pytest
import torch

from privformer.protocols.stip import permutations as P


def test_permutations_come_from_the_os_csprng():
    assert isinstance(P._SYSTEM_RANDOM, secrets.SystemRandom)
    draws = {tuple(P.random_permutation(64).tolist()) for _ in range(5)}
    assert len(draws) == 5  # five equal draws of 64! outcomes would mean a broken generator


@pytest.mark.parametrize("n", [1, 2, 7, 576])
def test_random_permutation_is_a_permutation_and_inverse_undoes_it(n):
    perm = P.random_permutation(n)
    assert P.is_permutation(perm, n)
    x = torch.randn(3, n)
    assert torch.equal(x[..., perm][..., P.inverse(perm)], x)


def test_is_permutation_rejects_repeats_and_wrong_sizes():
    assert not P.is_permutation(torch.tensor([0, 0, 1]), 3)
    assert not P.is_permutation(torch.tensor([0, 1]), 3)
    assert not P.is_permutation(torch.tensor([0.0, 1.0, 2.0]), 3)


def _grouped_attention(q, k, v, num_heads, num_kv_heads, head_dim, rotate=None):
    """Reference multi-head attention with KV groups on (n, H*dh) / (n, Hkv*dh) tensors."""
    n, group = q.shape[0], num_heads // num_kv_heads
    qh = q.view(n, num_heads, head_dim).transpose(0, 1)
    kh = k.view(n, num_kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, 0)
    vh = v.view(n, num_kv_heads, head_dim).transpose(0, 1).repeat_interleave(group, 0)
    if rotate is not None:
        qh, kh = rotate(qh), rotate(kh)
    att = torch.softmax(qh @ kh.transpose(1, 2) / head_dim**0.5, dim=-1)
    return (att @ vh).transpose(0, 1).reshape(n, num_heads * head_dim)


def _rope(head_dim: int, n: int):
    """HF's rotate-half RoPE on (heads, n, head_dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rotate(x):
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    return rotate


@pytest.mark.parametrize(
    "heads,kv_heads,rope", [(4, 4, False), (8, 2, False), (9, 3, True), (4, 1, True)]
)
def test_attention_permutation_keeps_grouped_attention_exact(heads, kv_heads, rope):
    head_dim, n = 8, 6
    perm = P.attention_permutation(heads, kv_heads, head_dim, rope=rope)
    q = torch.randn(n, heads * head_dim, dtype=torch.float64)
    k = torch.randn(n, kv_heads * head_dim, dtype=torch.float64)
    v = torch.randn(n, kv_heads * head_dim, dtype=torch.float64)
    rotate = _rope(head_dim, n) if rope else None
    plain = _grouped_attention(q, k, v, heads, kv_heads, head_dim, rotate)
    permuted = _grouped_attention(
        q[:, perm.q], k[:, perm.k], v[:, perm.v], heads, kv_heads, head_dim, rotate
    )
    torch.testing.assert_close(permuted, plain[:, perm.o], rtol=0, atol=1e-12)


def test_rope_permutations_move_whole_heads_only():
    perm = P.attention_permutation(9, 3, 16, rope=True)
    blocks = perm.q.view(9, 16)
    assert torch.equal(blocks - blocks[:, :1], torch.arange(16).expand(9, 16))


def test_a_within_head_permutation_breaks_rope():
    """Why the constraint exists: shuffling dims inside a head does not commute with RoPE."""
    heads, head_dim, n = 2, 8, 5
    within = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])
    idx = torch.cat([h * head_dim + within for h in range(heads)])
    q, k, v = (torch.randn(n, heads * head_dim, dtype=torch.float64) for _ in range(3))
    rotate = _rope(head_dim, n)
    plain = _grouped_attention(q, k, v, heads, heads, head_dim, rotate)
    shuffled = _grouped_attention(q[:, idx], k[:, idx], v, heads, heads, head_dim, rotate)
    assert (shuffled - plain).abs().max() > 1e-3


def test_gqa_query_heads_stay_in_their_group():
    heads, kv_heads, head_dim = 12, 3, 4
    group = heads // kv_heads
    for _ in range(20):
        perm = P.attention_permutation(heads, kv_heads, head_dim, rope=False)
        q_heads = perm.q.view(heads, head_dim)[:, 0] // head_dim
        # query heads in q may be shuffled within a head, so take the head of any entry
        kv_of_new_group = perm.k.view(kv_heads, head_dim)[:, 0] // head_dim
        for new_head in range(heads):
            assert int(q_heads[new_head]) // group == int(kv_of_new_group[new_head // group])

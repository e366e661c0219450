"""Encrypted NEXUS operators against their simulate twins, on real MiniLM operator inputs.

GELU, softmax, LayerNorm and argmax need 27 to 40+ levels, more than a 128-bit ring 2^15 has
(19), so they run on SEAL at ``test-medium`` (N = 2^14, 7 levels) with the ``SecretKeyRefresh``
bootstrapper: decrypt, noise, re-encrypt (the real bootstrap is OpenFHE's, tested under the
``openfhe`` marker). Each operator runs its real bootstrap schedule; each refresh adds uniform noise
of 2^-20 times the largest slot, a real bootstrap's precision. The attention matmuls need 3 and
2 levels and run on plain SEAL (``test-small``).

Tolerances: the 2^-20 = 9.5e-7 refresh error dominates; each operator's bound
below is that error times the operator's worst amplification (stated per test), rounded up,
and far under the size of a real bug (a wrong piece, mask or rotation errs by >= 1e-2).
"""

from __future__ import annotations

import numpy as np
import pytest

from privformer import approx as A
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.refresh import SecretKeyRefresh
from privformer.crypto.ckks.seal_backend import SealBackend
from privformer.errors import (
    BootstrapRangeError,
    BootstrapUnavailableError,
    InputError,
    LevelError,
)
from privformer.protocols.nexus import attention as at
from privformer.protocols.nexus import he_nonlinear as H
from privformer.protocols.nexus.matmul import TokenInterleaved


@pytest.fixture(scope="module")
def refresh():
    return SealBackend("test-medium", bootstrapper=SecretKeyRefresh())


def _sample(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(x.ravel(), size, replace=False)


def test_gelu_across_bootstraps(activations, refresh):
    x = _sample(activations["gelu"], refresh.slots, 1)
    before = refresh.bootstraps
    out = refresh.decrypt(H.gelu(refresh, refresh.encrypt(x)))  # default g = 3, f = 2: depth 22
    assert refresh.bootstraps > before
    err = np.abs(out - A.gelu.nexus(x))
    # SGN's slope near a breakpoint reaches ~200 (times 1/64 input scaling), times pieces of
    # size <= 8 there: a refresh error of 1e-6 becomes ~1e-4 at worst; elsewhere ~1e-6.
    assert err.max() <= 1e-3, err.max()
    assert err.mean() <= 1e-5, err.mean()


def test_chebyshev_gelu_matches_its_twin_in_one_chain(activations):
    """GELU as one degree-127 Chebyshev series needs 8 levels (7 + the 1/32 scaling): a ring
    2^15 chain (19 levels at 2^40) holds it with no bootstrap. Each rescale adds ~1e-9 absolute
    error; the series multiplies unit-bounded T_k by coefficients up to 16 in ~70 terms, so the
    error is ~1e-6 (measured 5.7e-6 on uniform inputs); 5e-5 still rejects any wrong
    coefficient or step (>= 1e-3)."""
    backend = SealBackend("depth19")
    x = _sample(activations["gelu"], backend.slots, 2)
    ct = backend.encrypt(x)
    out = H.gelu_chebyshev(backend, ct)
    assert backend.levels_left(ct) - backend.levels_left(out) == 8
    err = np.abs(backend.decrypt(out) - A.gelu.chebyshev(x))
    assert err.max() <= 5e-5, err.max()


def test_softmax_on_real_attention_rows(activations, refresh):
    width, stride = 64, refresh.slots // 64  # 128 rows of 64 keys
    refresh.generate_rotation_keys(he.quick_sum_steps(width, stride))
    cfg = A.softmax.SoftmaxConfig()
    rows = [r for block in activations["scores"] if block.shape[1] <= width for r in block]
    rows = rows[:: max(1, len(rows) // stride)][:stride]  # real rows of <= 64 keys, all layers
    padded = np.full((stride, width), -cfg.bound + 4.0)  # masked keys, as padding tokens are
    for i, r in enumerate(rows):
        padded[i, : r.size] = r
    slots = padded.T.reshape(-1)  # slot k * stride + row
    out = refresh.decrypt(H.softmax(refresh, refresh.encrypt(slots), width, stride, cfg))
    out = out.reshape(width, stride).T
    # A refresh error in the row maximum shifts z, which the normalisation cancels. But exp's
    # 16 squarings need 18 levels and test-medium has 7, so they span three chains, and a
    # refresh error is doubled by each later squaring: 2^-20 x 2^10 ~ 1e-3 relative on the
    # largest probabilities (measured 2.8e-4 absolute). Where exp fits one chain (18 levels,
    # e.g. OpenFHE at ring 2^16) this term vanishes; bench/he_ops.py measures that case.
    assert np.abs(out - A.softmax.nexus(padded, cfg)).max() <= 1e-3
    peaked = padded.max(1) - np.sort(padded, 1)[:, -2] > 5.0
    assert peaked.any()  # the rows include peaked ones (top score 5 above the rest)


def test_layernorm_on_real_minilm_inputs(activations, plain_model, refresh):
    layer = plain_model("minilm").encoder.layer[0].attention.output.LayerNorm
    gamma, beta = (t.detach().double().numpy() for t in (layer.weight, layer.bias))
    tokens = 32
    layout = TokenInterleaved(tokens, refresh.slots)  # 256 features a block: 384 -> 2 blocks
    refresh.generate_rotation_keys(he.quick_sum_steps(layout.features, tokens))
    x = activations["layernorm"][::97][:tokens]
    cts = H.layernorm(refresh, [refresh.encrypt(v) for v in layout.pack(x)], layout, gamma, beta)
    out = layout.unpack([refresh.decrypt(c) for c in cts], 384)
    # Newton converges quadratically, so a refresh error in y is squared away by the next step,
    # and the last step's u y^2 is formed from factors >= 1, so the rescale noise (~1e-8
    # absolute) is ~1e-8 relative there; outputs reach 30 (MiniLM's outlier feature 99), so
    # 30 x ~1e-8 x the few products after it: measured <= 4.5e-7 in 24 runs. Before that last
    # step was reordered, u's absolute noise on variances near 0.17 gave 3e-5 .. 1.5e-4.
    assert np.abs(out - A.layernorm.nexus(x, gamma, beta)).max() <= 3e-6


@pytest.mark.parametrize("count", [300, 9000])  # one ciphertext, and two (as for 30522)
def test_argmax_onehot(refresh, count):
    refresh.generate_rotation_keys(H.argmax_rotations(count, refresh.slots))
    rng = np.random.default_rng(count)
    v = rng.uniform(-1.0, 0.9, count)
    top = int(rng.integers(count))
    v[top] = 0.99  # top-2 gap >= 1e-2 of the range [-1, 1]
    chunks = [v[i : i + refresh.slots] for i in range(0, count, refresh.slots)]
    out = H.argmax_onehot(refresh, [refresh.encrypt(c) for c in chunks], count)
    onehot = np.concatenate([refresh.decrypt(c) for c in out])
    assert onehot.shape == (count,)
    # SGN is saturated at the margin, so the mask is 0 or 1 up to the refresh error.
    assert np.abs(onehot - A.argmax.argmax_onehot(v)).max() <= 1e-3
    assert int(np.argmax(onehot)) == top and np.abs(onehot - (np.arange(count) == top)).max() < 1e-3


def test_simulated_bootstrap_refreshes_within_its_stated_precision(refresh):
    x = np.random.default_rng(4).uniform(-8, 8, refresh.slots)
    low = refresh.drop_to(refresh.encrypt(x), 0)
    fresh = refresh.bootstrap(low, bound=8.0)
    assert refresh.levels_left(fresh) == refresh.top == 7
    # uniform noise of 2^-20 x max|x| (= 8), plus ~1e-9 of CKKS noise
    assert np.abs(refresh.decrypt(fresh) - x).max() <= 8 * 2.0**-20 + 1e-7
    with pytest.raises(LevelError, match="needs 9 levels in one chain"):
        he.ensure_level(refresh, low, 9, "op", bound=8.0)
    # A bound the values break is refused: a real bootstrap would return garbage (OpenFHE's
    # errs by 0.04 on a constant 8 it was not told to scale).
    with pytest.raises(
        BootstrapRangeError, match="op: a bootstrap input reaches 7.99.*stated bound 1"
    ):
        he.ensure_level(refresh, low, 2, "op")


def test_operators_that_need_bootstrapping_say_so_on_seal():
    backend = SealBackend("test-medium")
    backend.generate_rotation_keys(he.quick_sum_steps(64, 128))
    ct = backend.encrypt(np.zeros(backend.slots))
    with pytest.raises(BootstrapUnavailableError, match="softmax: needs"):
        H.softmax(backend, ct, 64, 128)


@pytest.fixture(scope="module")
def small():
    backend = SealBackend("test-small")  # 4096 slots: 64 tokens of 64 features
    backend.generate_rotation_keys(
        at.AttentionLayout(TokenInterleaved(64, 4096), 16).rotation_steps()
    )
    return backend


def test_attention_scores_and_weighted_values(small):
    att = at.AttentionLayout(TokenInterleaved(64, small.slots), 16)  # 4 heads a block
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(0, 1, (64, 128)) for _ in range(3))  # 8 heads, 2 blocks

    def enc(m):
        return [small.encrypt(x) for x in att.layout.pack(m)]

    heads = [slice(h * 16, (h + 1) * 16) for h in range(8)]
    scores = at.scores(small, enc(q), enc(k), att)
    assert len(scores) == 8
    for h, sl in enumerate(heads):
        # 16-term dot products of unit normals (|S| ~ 4) at scale 2^30: ~1e-4 absolute.
        got = att.unpack_scores(small.decrypt(scores[h]))
        assert np.abs(got - q[:, sl] @ k[:, sl].T).max() <= 2e-3
    probs = [rng.dirichlet(np.ones(64), 64) for _ in heads]
    out = at.weighted_values(small, [small.encrypt(att.pack_scores(p)) for p in probs], enc(v), att)
    got = att.layout.unpack([small.decrypt(c) for c in out], 128)
    want = np.concatenate([p @ v[:, sl] for p, sl in zip(probs, heads, strict=True)], axis=1)
    assert np.abs(got - want).max() <= 2e-3


def test_attention_layout_errors(small):
    with pytest.raises(InputError, match="slots = G tokens\\^2"):
        at.AttentionLayout(TokenInterleaved(64, 2048), 16)  # fewer slots than one 64 x 64 head
    with pytest.raises(InputError, match="head_dim"):
        at.AttentionLayout(TokenInterleaved(64, 4096), 24)
    att = at.AttentionLayout(TokenInterleaved(64, small.slots), 16)
    ct = small.encrypt(np.zeros(small.slots))
    with pytest.raises(InputError, match="blocks"):
        at.scores(small, [ct, ct], [ct], att)

"""The depth-aware NEXUS operators (issue 9): one bootstrap window each, no SGN, no maximum.

Three kinds of check:
- twin against the exact function, on real MiniLM operator inputs (targets from the issue:
  GELU mean error <= 7.7e-4, softmax <= 1e-4 on peaked and flat rows, LayerNorm <= 1e-3
  relative);
- circuit against twin on ``FloatBackend`` (the circuit's arithmetic in float64 with CKKS's
  levels): the same operations in the same order, so they agree to float rounding (<= 1e-9;
  a wrong mask, rotation or coefficient errs by >= 1e-3), and bootstraps fall where a 7-level
  window (OpenFHE's default chain) puts them;
- circuit on SEAL (real CKKS noise) against the twin, with ``SecretKeyRefresh`` bootstraps.
"""

from __future__ import annotations

import numpy as np
import pytest

from privformer import approx as A
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.float_backend import FloatBackend
from privformer.crypto.ckks.refresh import SecretKeyRefresh
from privformer.crypto.ckks.seal_backend import SealBackend
from privformer.errors import (
    BootstrapRangeError,
    CiphertextFormatError,
    CryptoError,
    LevelError,
    OutOfRangeError,
)
from privformer.protocols.nexus import calibrate
from privformer.protocols.nexus import he_nonlinear as H
from privformer.protocols.nexus import layer as nl
from privformer.protocols.nexus.attention import AttentionLayout
from privformer.protocols.nexus.matmul import TokenInterleaved

N = 128  # tokens: the diagonal score layout fills N^2 = 16,384 slots


def _exact_softmax(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    masked = np.where(keys, x, -np.inf)
    e = np.exp(masked - masked.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- FloatBackend ------------------------------------------------------------------------------
def test_float_backend_keeps_ckks_level_and_key_rules():
    be = FloatBackend(16, top=3)
    a = be.encrypt(np.arange(16.0))
    assert be.levels_left(be.multiply(a, a)) == 2
    assert be.levels_left(be.add(a, be.multiply_plain(a, 2.0))) == 2  # the lower operand's
    low = be.drop_to(a, 0)
    with pytest.raises(LevelError, match="level 0"):
        be.multiply_plain(low, 1.0)
    with pytest.raises(CryptoError, match="no rotation key for step 3"):
        be.rotate(a, 3)
    be.generate_rotation_keys([3])
    assert be.decrypt(be.rotate(a, 3))[0] == 3.0  # left rotation, cyclic
    with pytest.raises(BootstrapRangeError, match="reaches 15"):
        be.bootstrap(low, bound=1.0)  # the caller's bound is checked, as on a test refresh
    fresh = be.bootstrap(low, bound=16.0)
    assert be.levels_left(fresh) == 3 and be.bootstraps == 1
    assert np.array_equal(be.decrypt(be.deserialize(be.serialize(fresh))), np.arange(16.0))
    data = bytearray(be.serialize(fresh))
    data[-1] ^= 1
    with pytest.raises(CiphertextFormatError, match="checksum"):
        be.deserialize(bytes(data))


def test_chebyshev_series_uses_its_stated_depth_and_folds_weights():
    be = FloatBackend(64, top=8)
    t = np.linspace(-1, 1, 64)
    weights = (np.arange(64) % 3 == 0).astype(float)
    rng = np.random.default_rng(0)
    for degree in (15, 63, 119, 127):
        coeffs = rng.normal(0, 1, degree + 1) / np.arange(1, degree + 2)  # every term present
        out = he.chebyshev_series(be, be.encrypt(t), coeffs, weights=weights)
        assert be.top - be.levels_left(out) == A.chebyshev.depth(degree)
        assert np.abs(be.decrypt(out) - weights * A.chebyshev.evaluate(coeffs, t)).max() < 1e-11


# --- softmax -----------------------------------------------------------------------------------
def test_squaring_softmax_twin_on_real_peaked_and_flat_rows(activations):
    """Twin vs exact: <= 1e-4 (measured ~1e-9: exp's interpolant and the last inverse are
    accurate to ~1e-8, and earlier rounds' errors cancel in the last normalisation)."""
    rows = activations["scores"][:150]
    config = A.softmax.SquaringSoftmaxConfig(low=-60.0, high=60.0, rounds=5)
    worst = 0.0
    for r in rows:
        keys = np.ones(r.shape[1], bool)
        worst = max(
            worst, np.abs(A.softmax.squaring(r, keys, config) - _exact_softmax(r, keys)).max()
        )
    assert worst <= 1e-4, worst
    rng = np.random.default_rng(0)
    peaked = rng.normal(0, 1, (32, N))
    peaked[np.arange(32), rng.integers(0, 40, 32)] += 12.0  # one score dominates its row
    flat = rng.normal(0, 0.01, (32, N))
    keys = np.arange(N) < 40  # 40 real tokens, the rest padding
    config = A.softmax.SquaringSoftmaxConfig(low=-20.0, high=20.0, rounds=3)
    for x in (peaked, flat):
        got = A.softmax.squaring(x, keys, config)
        assert np.abs(got - _exact_softmax(x, keys)).max() <= 1e-4
        assert np.all(got[:, ~keys] == 0.0)  # padding keys get exactly nothing
    with pytest.raises(OutOfRangeError, match="softmax.centred"):
        A.softmax.squaring(peaked * 3, keys, config)


def _pack_heads(be, scores):
    att = AttentionLayout(TokenInterleaved(N, N * N), 32)
    return att, [be.encrypt(att.pack_scores(s)) for s in scores]


def test_squaring_softmax_circuit_is_its_twin_with_one_packed_inverse_per_round():
    real, heads = 40, 12
    config = A.softmax.SquaringSoftmaxConfig(low=-20.0, high=20.0, rounds=3)
    rng = np.random.default_rng(1)
    scores = [rng.normal(0, 4, (N, N)) for _ in range(heads)]
    keys = np.arange(N) < real
    be = FloatBackend(N * N, top=7)
    be.generate_rotation_keys(he.quick_sum_steps(N, N))
    att, cts = _pack_heads(be, scores)
    out = H.softmax_squaring(be, cts, N, real, config, bound=32.0)
    for s, c in zip(scores, out, strict=True):
        twin = A.softmax.squaring(s, keys, config, rows=keys)
        assert np.abs(att.unpack_scores(be.decrypt(c)) - twin).max() <= 1e-9
    # Fresh inputs (7 levels): centring 1 + exp 4 + round 0's 2 leave 0, so each head is
    # bootstrapped once for rounds 1-2; the packed sums are bootstrapped per round, never 12x.
    per_head = heads
    assert per_head <= be.bootstraps <= per_head + 3 * config.rounds, be.bootstraps


def test_squaring_softmax_on_seal_with_refresh_matches_its_twin():
    """Real CKKS (SEAL test-medium: ring 2^14, 2^40 scale, 7 levels: OpenFHE's window), two
    heads per score ciphertext (64 tokens on 8,192 slots), refresh noise 2^-20 of the largest
    slot. Measured 1.4e-5 here (4e-5 with 128 tokens, one head a ciphertext, on ring 2^15, the
    same with the refresh noise off): the 2^40 scale's rounding in exp, doubled by each of the 3
    squarings (the inverses' errors are per row and cancel, Newton removes their bootstrap
    error). 2e-4 still rejects any wrong mask, rotation or coefficient (>= 1e-2)."""
    n, real, heads = 64, 30, 4
    config = A.softmax.SquaringSoftmaxConfig(low=-20.0, high=20.0, rounds=3)
    rng = np.random.default_rng(2)
    scores = [rng.normal(0, 3, (n, n)) for _ in range(heads)]
    be = SealBackend("test-medium", bootstrapper=SecretKeyRefresh())
    att = AttentionLayout(TokenInterleaved(n, be.slots), 16)
    assert att.groups == 2
    be.generate_rotation_keys(he.quick_sum_steps(n, 2 * n))
    cts = [be.encrypt(att.pack_scores(np.stack(scores[c : c + 2]))) for c in (0, 2)]
    out = H.softmax_squaring(be, cts, n, real, config, bound=32.0)
    keys = np.arange(n) < real
    for c, ct in enumerate(out):
        pair = att.unpack_scores(be.decrypt(ct))
        for g in range(2):
            twin = A.softmax.squaring(scores[2 * c + g], keys, config, rows=keys)
            assert np.abs(pair[g][:real] - twin[:real]).max() <= 2e-4


# --- LayerNorm ---------------------------------------------------------------------------------
LN = A.layernorm.LayerNormConfig(var_low=0.05, var_high=256.0, input_bound=256.0, start_degree=63)


def test_chebyshev_layernorm_twin_on_real_minilm_inputs(activations):
    x = activations["layernorm"]
    rng = np.random.default_rng(1)
    gamma, beta = rng.normal(1, 0.3, x.shape[1]), rng.normal(0, 0.1, x.shape[1])
    exact = gamma * (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-12) + beta
    got = A.layernorm.chebyshev(x, gamma, beta, config=LN)
    rel = np.linalg.norm(got - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert rel.max() <= 1e-3, rel.max()  # Newton to 1e-5 relative
    coeffs, steps = A.layernorm.chebyshev_start(LN)
    assert steps <= A.layernorm.newton_iterations(LN) / 2  # NEXUS's linear start: 4 vs 12


def test_chebyshev_layernorm_circuit_is_its_twin(activations):
    x = activations["layernorm"][:N]
    rng = np.random.default_rng(3)
    gamma, beta = rng.normal(1, 0.3, x.shape[1]), rng.normal(0, 0.1, x.shape[1])
    be = FloatBackend(N * N, top=7)
    layout = TokenInterleaved(N, N * N)
    be.generate_rotation_keys(he.quick_sum_steps(layout.features, N))
    out = H.layernorm_chebyshev(
        be, [be.encrypt(v) for v in layout.pack(x)], layout, gamma, beta, 1e-12, LN
    )
    got = layout.unpack([be.decrypt(c) for c in out], x.shape[1])
    assert np.abs(got - A.layernorm.chebyshev(x, gamma, beta, config=LN)).max() <= 1e-9
    # only the per-token ciphertexts are refreshed (the blocks arrive fresh): t before the
    # start, y after it, between steps (a window holds two) and before the output's 3 levels
    assert be.bootstraps <= 2 + A.layernorm.chebyshev_start(LN)[1]


def test_layernorm_refreshes_its_per_token_ciphertexts_as_sparse_ones(activations):
    """t and y hold one value per token in every feature slot, so they repeat every N slots:
    with sparse keys for period N every one of their bootstraps is a sparse-slot one (the
    refresh checks the promise on the values), and the result is unchanged (to rounding: a
    sparse refresh returns the average of the repeats)."""
    x = activations["layernorm"][:N]
    rng = np.random.default_rng(3)
    gamma, beta = rng.normal(1, 0.3, x.shape[1]), rng.normal(0, 0.1, x.shape[1])
    layout = TokenInterleaved(N, N * N)
    outs, counts = [], []
    for periods in ((), (N,)):
        be = FloatBackend(N * N, top=7, sparse_periods=periods)
        be.generate_rotation_keys(he.quick_sum_steps(layout.features, N))
        out = H.layernorm_chebyshev(
            be, [be.encrypt(v) for v in layout.pack(x)], layout, gamma, beta, 1e-12, LN
        )
        outs.append(layout.unpack([be.decrypt(c) for c in out], x.shape[1]))
        counts.append((be.bootstraps, be.sparse_bootstraps))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-12  # a sparse refresh averages the repeats
    assert counts[0][1] == 0 and counts[1][0] == counts[1][1] == counts[0][0] > 0


def test_a_broken_period_promise_is_refused():
    """A sparse bootstrap of a vector that does not repeat would return its repeats' average:
    the test refresh refuses the promise, and keeps it for vectors that do repeat."""
    from privformer.errors import BootstrapRangeError

    be = FloatBackend(64, top=2, sparse_periods=(16,))
    ramp = be.drop_to(be.encrypt(np.linspace(-1, 1, 64)), 0)
    with pytest.raises(BootstrapRangeError, match="repeat every 16 slots"):
        be.bootstrap(ramp, 1.0, period=16)
    tiled = be.drop_to(be.encrypt(np.tile(np.linspace(-1, 1, 16), 4)), 0)
    assert be.levels_left(be.bootstrap(tiled, 1.0, period=16)) == 2
    assert (be.bootstraps, be.sparse_bootstraps) == (1, 1)
    be.bootstrap(tiled, 1.0, period=32)  # a period without sparse keys: a full bootstrap
    assert (be.bootstraps, be.sparse_bootstraps) == (2, 1)


# --- a real MiniLM layer ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_layers(plain_model, tokenizer):
    from privformer.data import rotten_tomatoes_split
    from privformer.models.encoder import read_encoder

    bert, tok = plain_model("minilm"), tokenizer("minilm")
    enc = read_encoder(bert)
    layers = [
        nl.EncoderLayerWeights.from_hf(layer, enc.heads, bert.config.layer_norm_eps)
        for layer in bert.encoder.layer[:2]
    ]
    train, test = rotten_tomatoes_split()
    ids = [tok(t, truncation=True, max_length=N)["input_ids"] for t, _ in train[:24]]
    configs = calibrate.layer_configs(
        calibrate.record_ranges(enc.embeddings, layers, ids, N, tok.pad_token_id), N
    )
    sentence = tok(test[3][0], truncation=True, max_length=N)["input_ids"]
    x = enc.embeddings.embed(calibrate.padded(sentence, N, tok.pad_token_id)).numpy()
    return layers, configs, x, len(sentence)


def test_calibrated_configs_fit_one_window_per_operator(minilm_layers):
    _, configs, _, _ = minilm_layers
    for c in configs:
        assert A.chebyshev.depth(c.gelu_chebyshev.degree) <= 7  # 1/bound rides on W_ffn1
        assert c.softmax_squaring.rounds <= 4
        assert c.layernorm.start_degree in calibrate.LAYERNORM_START_DEGREES
        assert A.chebyshev.depth(c.layernorm.start_degree) <= 7


def test_real_minilm_layer_circuit_equals_twin_and_counts_bootstraps(minilm_layers):
    """Layer 1 of MiniLM on a real padded sentence: circuit == twin to float rounding, twin
    vs the exact layer within the approximations' error (measured 7.5e-5 on values up to
    ~10), and the bootstrap count of a 7-level window (measured 66; today's NEXUS operators
    need 322)."""
    layers, configs, x, real = minilm_layers
    x1 = nl.float_layer(x, layers[0], nl.FloatOps("plain"), real)
    layout = TokenInterleaved(N, N * N)
    be = FloatBackend(N * N, top=7)
    be.generate_rotation_keys(nl.rotation_steps(layout, layers[1].head_dim))
    stages: dict[str, int] = {}
    out = nl.encrypted_layer(
        be,
        [be.encrypt(v) for v in layout.pack(x1)],
        layers[1],
        layout,
        configs[1],
        real=real,
        bootstraps=stages,
    )
    got = layout.unpack([be.decrypt(c) for c in out], x1.shape[1])
    twin = nl.simulate_layer(x1, layers[1], configs[1], real)
    exact = nl.float_layer(x1, layers[1], nl.FloatOps("plain"), real)
    assert np.abs(got - twin).max() <= 1e-9
    assert np.abs(twin - exact)[:real].max() <= 1e-3
    assert sum(stages.values()) == be.bootstraps <= 80, stages
    assert stages["softmax"] <= 2 * 12 + 3 * configs[1].softmax_squaring.rounds


# --- the whole classifier: one forward, three executors -----------------------------------------
@pytest.fixture(scope="module")
def two_layer():
    """The 2-layer MiniLM probe (real weights), calibrated on 24 training sentences."""
    from privformer.data import rotten_tomatoes_split
    from privformer.models.classifiers import PROBE_2_LAYERS, load_classifier
    from privformer.protocols.nexus.model import NexusClassifier

    clf = load_classifier(PROBE_2_LAYERS)
    model = NexusClassifier.from_hf(clf.encoder, clf.head)
    model.pad_id = clf.tokenizer.pad_token_id
    train, test = rotten_tomatoes_split()
    ids = [clf.tokenizer(t, truncation=True, max_length=N)["input_ids"] for t, _ in train[:24]]
    model.calibrate(ids)
    sentences = [clf.tokenizer(t)["input_ids"] for t, _ in test[:3]]
    return clf, model, sentences


def test_plain_forward_with_padding_matches_transformers(two_layer):
    """Plain mode pads to 128 positions with [PAD] and masks them as keys, as ``transformers``
    does with an attention mask: float64 against float32 torch, within 1e-5."""
    import torch

    clf, model, sentences = two_layer
    for ids in sentences:
        mask = torch.zeros(1, N, dtype=torch.long)
        mask[0, : len(ids)] = 1
        padded = torch.as_tensor(calibrate.padded(ids, N, model.pad_id))[None]
        with torch.inference_mode():
            cls = clf.encoder(input_ids=padded, attention_mask=mask).last_hidden_state[:, 0]
            reference = clf.head(cls)[0].double().numpy()
        assert np.abs(model.logits(ids, "plain") - reference).max() <= 1e-5


def test_encrypted_forward_is_the_simulate_forward(two_layer, tmp_path):
    """The server's circuit (both layers and the head) on FloatBackend gives simulate's logits
    to float rounding, in the slots the client reads, and nothing in any other slot."""
    from privformer.protocols.nexus.model import NexusClassifier

    _, model, sentences = two_layer
    stages: list[str] = []
    for ids in sentences[:2]:
        be = FloatBackend(N * N, top=7)
        be.generate_rotation_keys(model.rotation_steps(be.slots))
        x, real = model.embed(ids)
        cts = [be.encrypt(v) for v in model.layout(be).pack(x)]
        stats: list[dict] = []
        out = model.forward_circuit(
            be, cts, real, progress=lambda i, s: stages.append(f"{i}:{s}"), stats=stats
        )
        values = be.decrypt(out)
        logits = model.read_logits(values)
        assert np.abs(logits - model.logits(ids, "simulate")).max() <= 1e-9
        assert np.count_nonzero(values) == len(logits)  # only [CLS]'s logits leave the server
        assert [sum(s["bootstraps"].values()) for s in stats] and be.bootstraps <= 2 * 90
    assert "1:LayerNorm 2" in stages
    # NEXUS's reply: the encrypted one-hot argmax (the client learns the class, not the logits)
    ids = sentences[0]
    be = FloatBackend(N * N, top=7)
    be.generate_rotation_keys(model.rotation_steps(be.slots))
    x, real = model.embed(ids)
    cts = [be.encrypt(v) for v in model.layout(be).pack(x)]
    onehot = be.decrypt(model.forward_circuit(be, cts, real, output="argmax"))
    simulated = model.logits(ids, "simulate")
    assert np.abs(onehot - model.argmax_onehot(simulated)).max() <= 1e-9
    assert int(np.argmax(onehot)) == int(np.argmax(simulated)) and onehot.max() > 0.99
    model.save(tmp_path / "server", tmp_path / "client")
    again = NexusClassifier.load(tmp_path / "server", tmp_path / "client")
    assert again.configs == model.configs and again.pad_id == model.pad_id
    assert again.argmax == model.argmax
    assert np.array_equal(
        again.logits(sentences[0], "simulate"), model.logits(sentences[0], "simulate")
    )


def test_planner_places_the_layer_chain_close_to_the_circuit(minilm_layers):
    """The planner's optimum for the layer's main chain (side chains on one ciphertext
    excluded) bounds the circuit's count from below; the circuit's greedy placement, tuned by
    hand (one bootstrap of Q, K and V's input, LayerNorm leaving a level), is within the side
    chains' bootstraps of it."""
    from privformer.crypto.ckks import planner

    layers, configs, x, real = minilm_layers
    layout = TokenInterleaved(N, N * N)
    steps = nl.layer_steps(configs[1], layout, 384, 1536, layers[1].heads)
    assert all(s.depth <= 7 for s in steps)  # every operator fits one window
    plan = planner.plan(steps, 7, 7, 21.5)
    assert "GELU" in plan.table() and plan.bootstraps >= 3 * 12  # scores twice, GELU once
    # Pairs that kept whole windows would halve every count: the circuit's lower bound.
    paired = planner.plan(steps, 7, 7, 21.5, per_bootstrap=2)
    be = FloatBackend(N * N, top=7)
    be.generate_rotation_keys(nl.rotation_steps(layout, layers[1].head_dim))
    x1 = nl.float_layer(x, layers[0], nl.FloatOps("plain"), real)
    nl.encrypted_layer(
        be, [be.encrypt(v) for v in layout.pack(x1)], layers[1], layout, configs[1], real=real
    )
    side = 3 * configs[1].softmax_squaring.rounds + 2 * 5  # packed inverses, LayerNorm y's
    # A pair's second half comes back a level lower, so the circuit pairs only where a step
    # leaves a level spare and pays for it later: between the paired and unpaired optima.
    assert paired.bootstraps <= be.bootstraps <= plan.bootstraps + side


# --- two heads per score ciphertext (all 32,768 slots of ring 2^16) ------------------------------
def test_attention_with_two_heads_per_score_ciphertext():
    """slots = 2 n^2: scores come out two heads per ciphertext, interleaved by key offset, and
    P V reads them back; against numpy on random Q, K, V and probabilities (float rounding)."""
    from privformer.protocols.nexus import attention as at

    n, dh, heads = 16, 4, 6  # 2 n^2 = 512 slots: 32 features a block, 8 heads, 6 used
    layout = TokenInterleaved(n, 2 * n * n)
    att = AttentionLayout(layout, dh)
    assert att.groups == 2
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(0, 1, (n, heads * dh)) for _ in range(3))
    be = FloatBackend(layout.slots, top=7)
    be.generate_rotation_keys(att.rotation_steps())

    def enc(x):
        return [be.encrypt(b) for b in layout.pack(x)]

    scores = at.scores(be, enc(q), enc(k), att, heads=heads)
    assert len(scores) == heads // 2
    for c, ct in enumerate(scores):
        pair = att.unpack_scores(be.decrypt(ct))  # (2, n, n)
        for g in range(2):
            cols = slice((2 * c + g) * dh, (2 * c + g + 1) * dh)
            assert np.abs(pair[g] - q[:, cols] @ k[:, cols].T).max() <= 1e-12
    probs = [rng.dirichlet(np.ones(n), n) for _ in range(heads)]
    packed = [be.encrypt(att.pack_scores(np.stack(probs[c : c + 2]))) for c in (0, 2, 4)]
    out = at.weighted_values(be, packed, enc(v), att, heads=heads)
    got = layout.unpack([be.decrypt(c) for c in out], heads * dh)
    want = np.concatenate([probs[h] @ v[:, h * dh : (h + 1) * dh] for h in range(heads)], axis=1)
    assert np.abs(got - want).max() <= 1e-12


def test_squaring_softmax_with_two_heads_per_ciphertext_is_its_twin():
    real, heads = 40, 6
    config = A.softmax.SquaringSoftmaxConfig(low=-20.0, high=20.0, rounds=3)
    rng = np.random.default_rng(6)
    scores = [rng.normal(0, 4, (N, N)) for _ in range(heads)]
    keys = np.arange(N) < real
    be = FloatBackend(2 * N * N, top=7)
    be.generate_rotation_keys(he.quick_sum_steps(N, 2 * N))
    att = AttentionLayout(TokenInterleaved(N, 2 * N * N), 32)
    cts = [be.encrypt(att.pack_scores(np.stack(scores[c : c + 2]))) for c in (0, 2, 4)]
    out = H.softmax_squaring(be, cts, N, real, config, bound=32.0)
    for c, ct in enumerate(out):
        pair = att.unpack_scores(be.decrypt(ct))
        for g in range(2):
            twin = A.softmax.squaring(scores[2 * c + g], keys, config, rows=keys)
            assert np.abs(pair[g] - twin).max() <= 1e-9


def test_real_minilm_layer_on_all_ring_2_16_slots_halves_the_bootstraps(minilm_layers):
    layers, configs, x, real = minilm_layers
    x1 = nl.float_layer(x, layers[0], nl.FloatOps("plain"), real)
    counts = {}
    for slots in (N * N, 2 * N * N):
        layout = TokenInterleaved(N, slots)
        be = FloatBackend(slots, top=7, complex_packing=False)
        be.generate_rotation_keys(nl.rotation_steps(layout, layers[1].head_dim))
        out = nl.encrypted_layer(
            be, [be.encrypt(v) for v in layout.pack(x1)], layers[1], layout, configs[1], real=real
        )
        got = layout.unpack([be.decrypt(c) for c in out], x1.shape[1])
        assert np.abs(got - nl.simulate_layer(x1, layers[1], configs[1], real)).max() <= 1e-9
        counts[slots] = be.bootstraps
    # measured 68 -> 41: score and FFN ciphertexts halve, per-token side chains do not
    assert counts[2 * N * N] <= 0.65 * counts[N * N], counts


def test_complex_packing_refreshes_pairs_in_one_bootstrap(minilm_layers):
    """Ciphertexts bootstrapped at the same point share one bootstrap as a + i b. If both
    halves keep whole windows (OpenFHE's ``pair_level`` chain) a real MiniLM layer on ring
    2^16's slots needs about two-thirds of the bootstraps (measured 39 -> 25; single per-token
    LayerNorm and softmax-inverse ciphertexts have no partner); with the default chain the
    second half comes back a level lower, pairs form only where a step leaves a level spare,
    and the saving shrinks (measured 39 -> 35). The output is the same: the bootstrap error is
    relative to the larger of the pair, and 2^-20 of it keeps the layer within 1e-3 of its twin
    (measured ~1.1e-4 in all three)."""
    layers, configs, x, real = minilm_layers
    x1 = nl.float_layer(x, layers[0], nl.FloatOps("plain"), real)
    layout = TokenInterleaved(N, 2 * N * N)
    twin = nl.simulate_layer(x1, layers[1], configs[1], real)
    counts, errors = {}, {}
    for packing, loss in ((False, 1), (True, 1), (True, 0)):
        be = FloatBackend(layout.slots, 7, 20, complex_packing=packing, pair_level_loss=loss)
        be.generate_rotation_keys(nl.rotation_steps(layout, layers[1].head_dim))
        out = nl.encrypted_layer(
            be, [be.encrypt(v) for v in layout.pack(x1)], layers[1], layout, configs[1], real=real
        )
        got = layout.unpack([be.decrypt(c) for c in out], x1.shape[1])
        key = (packing, loss)
        counts[key], errors[key] = be.bootstraps, np.abs(got - twin)[:real].max()
    assert counts[True, 0] <= 0.7 * counts[False, 1], counts
    assert counts[True, 0] <= counts[True, 1] < counts[False, 1], counts
    assert max(errors.values()) <= 1e-3, errors


def test_inverse_newton_steps_refresh_a_low_row_sum():
    """The softmax inverse's Newton steps y (2 - v y) take two levels of -v each step: -v
    arriving with one level left (as after a deep exp and row sum in a calibrated layer of the
    fine-tuned MiniLM) is refreshed first, not multiplied into level 0. Result within the
    plan's tolerance (the Newton steps bring the start's error under 1e-6 here) of 1/v."""
    plan = A.softmax.inverse_plan(0.5, 40.0, 15, 1e-6)
    assert plan.newton_steps >= 2
    be = FloatBackend(16, top=7)
    v = np.linspace(0.5, 40.0, 16)
    t = (2.0 * v - (plan.low + plan.high)) / (plan.high - plan.low)
    neg_v = be.drop_to(be.encrypt(-v), 1)
    y = H._inverse(be, neg_v, be.encrypt(t), plan, "softmax")
    assert be.bootstraps >= 1
    assert np.abs(be.decrypt(y) * v - 1.0).max() < 1e-6


def test_encrypted_forward_at_16_positions_uses_replicated_matmuls(two_layer, monkeypatch):
    """At 16 positions (F = 2,048 features per block) Q, K, V, the output projection and FFN in
    take the replicated-input matmul (their inputs are zero beyond 384 features); the circuit
    still gives simulate's logits to float rounding (1e-9, as at 128 positions). Padded
    features that were not zero would show: 0.1 added to the client's moves the logits by 5e-3."""
    import dataclasses

    from privformer.data import rotten_tomatoes_split
    from privformer.protocols.nexus import matmul as mm

    clf, model, _ = two_layer
    small = dataclasses.replace(model, tokens=16)
    train, test = rotten_tomatoes_split()
    tok = clf.tokenizer
    small.calibrate([tok(t, truncation=True, max_length=16)["input_ids"] for t, _ in train[:24]])
    calls: list[int] = []
    replicate = mm.replicate
    monkeypatch.setattr(mm, "replicate", lambda *a: calls.append(a[2]) or replicate(*a))
    sentence = tok(test[0][0], truncation=True, max_length=16)["input_ids"]
    be = FloatBackend(32768, top=7)
    be.generate_rotation_keys(small.rotation_steps(be.slots))
    x, real = small.embed(sentence)
    cts = [be.encrypt(v) for v in small.layout(be).pack(x)]
    logits = small.read_logits(be.decrypt(small.forward_circuit(be, cts, real)))
    assert np.abs(logits - small.logits(sentence, "simulate")).max() <= 1e-9
    assert calls == [2, 2, 2, 2, 5] * 2  # Q, K, V, O (2 copies) and FFN in (5) in each layer

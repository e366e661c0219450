"""One BERT encoder layer composed from the encrypted NEXUS operators, against its float twin.

Runs on SEAL ``test-small`` (N = 2^13, 4 levels at 2^30) with ``SecretKeyRefresh`` bootstraps
(simulated): 64 tokens fill the 4,096 slots' 64 x 64 attention block. Softmax uses r = 8 here: at
2^30 and 4 levels, r = 16 would split exp's squarings over five chains and amplify each refresh
error 2^12-fold (measured 0.08 on the probabilities), which says nothing about composition.

Tolerance: per-stage errors measured on MiniLM's layer 1: projections 3e-5, scores 1.4e-4,
probabilities 5e-4, attention output 1.8e-3; LayerNorm multiplies errors by gamma / std (up to
~20 there: gamma reaches ~10, std ~0.4), giving 4e-2 after the first LayerNorm on values up to
30 and 8e-3 at the output (values up to 8). A wrong rotation, mask or level errs by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from privformer import approx
from privformer.crypto.ckks.refresh import SecretKeyRefresh
from privformer.crypto.ckks.seal_backend import SealBackend
from privformer.data import load_movie_reviews
from privformer.protocols.nexus import layer as nl
from privformer.protocols.nexus.matmul import TokenInterleaved

TOKENS = 64
CONFIG = nl.LayerConfig(softmax=approx.softmax.SoftmaxConfig(r=8))


def _run_encrypted(x: np.ndarray, weights: nl.EncoderLayerWeights) -> tuple[np.ndarray, int]:
    backend = SealBackend("test-small", bootstrapper=SecretKeyRefresh())
    layout = TokenInterleaved(TOKENS, backend.slots)
    backend.generate_rotation_keys(nl.rotation_steps(layout, weights.head_dim))
    cts = [backend.encrypt(v) for v in layout.pack(x)]
    out = nl.encrypted_layer(backend, cts, weights, layout, CONFIG)
    return layout.unpack([backend.decrypt(c) for c in out], x.shape[1]), backend.bootstraps


def test_small_random_layer_composes():
    """Shape coverage: a random 64-wide, 2-head BERT layer (one block, 2 blocks of FFN)."""
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_attention_heads=2, intermediate_size=128)
    cfg._attn_implementation = "eager"
    layer = BertLayer(cfg).eval().double()
    x = np.random.default_rng(0).normal(0, 1, (TOKENS, 64))
    with torch.inference_mode():
        out = layer(torch.tensor(x)[None])
        exact = (out[0] if isinstance(out, tuple) else out)[0].numpy()
    weights = nl.EncoderLayerWeights.from_hf(layer, 2, cfg.layer_norm_eps)
    twin = nl.simulate_layer(x, weights, CONFIG)
    assert np.abs(twin - exact).max() <= 5e-3  # softmax r = 8 and GELU approximations (1.2e-3)
    got, bootstraps = _run_encrypted(x, weights)
    assert bootstraps > 0
    assert np.abs(got - twin).max() <= 2e-2  # measured 4.3e-3


@pytest.mark.slow
def test_real_minilm_layer_on_real_tokens(plain_model, tokenizer):
    model, tok = plain_model("minilm"), tokenizer("minilm")
    text = next(t for t, _ in load_movie_reviews("imdb") if len(tok(t)["input_ids"]) > TOKENS)
    enc = tok(text, truncation=True, max_length=TOKENS, return_tensors="pt")  # no padding
    with torch.inference_mode():
        states = model(**enc, output_hidden_states=True).hidden_states
    x, exact = states[1][0].double().numpy(), states[2][0].double().numpy()
    weights = nl.EncoderLayerWeights.from_hf(
        model.encoder.layer[1], model.config.num_attention_heads, model.config.layer_norm_eps
    )
    twin = nl.simulate_layer(x, weights, CONFIG)
    assert np.abs(twin - exact).max() <= 2e-2  # measured 7.6e-3 (values up to 8)
    got, _ = _run_encrypted(x, weights)
    assert np.abs(got - twin).max() <= 4e-2  # measured 7.7e-3
    assert np.abs(got - exact).max() <= 5e-2  # measured 1.1e-2

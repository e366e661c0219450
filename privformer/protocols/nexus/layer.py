"""One BERT encoder layer under CKKS, composed from the NEXUS operators, and in float64.

``encrypted_layer`` runs Q/K/V projections, Q K^T, softmax, P V, the output projection,
residual, LayerNorm, FFN with GELU, residual, LayerNorm, all on token-interleaved ciphertexts.
``float_layer`` is the same layer in float64 with the nonlinearities of ``FloatOps``: exact
(``plain``) or NEXUS's recipes (``simulate``, the encrypted layer's twin, ``simulate_layer``).

Attention here has no padding mask: all ``tokens`` positions are real tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from privformer import approx
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import UnknownNameError
from privformer.models.encoder import read_layer
from privformer.models.registry import HFModel
from privformer.protocols.nexus import attention as at
from privformer.protocols.nexus import he_nonlinear as hn
from privformer.protocols.nexus import matmul as mm


@dataclass(frozen=True)
class LayerConfig:
    """The approximations a layer uses (shared by the encrypted layer and its twin)."""

    # GELU: NEXUS's SGN-selected pieces (``gelu``), or, when ``gelu_chebyshev`` is set, one
    # Chebyshev interpolant (depth 9 instead of 27); the twin and the encrypted layer both obey it.
    gelu: approx.gelu.GeluConfig = approx.gelu.DEFAULT_GELU
    gelu_chebyshev: approx.gelu.ChebyshevGeluConfig | None = None
    softmax: approx.softmax.SoftmaxConfig = approx.softmax.DEFAULT_SOFTMAX
    layernorm: approx.layernorm.LayerNormConfig = approx.layernorm.DEFAULT_LAYERNORM
    # |entries| of hidden states, Q, K, V and FFN outputs, for the bootstraps that may refresh
    # them (a real bootstrap needs them scaled into range; see CKKSBackend.bootstrap).
    activation_bound: float = at.ACTIVATION_BOUND


DEFAULT_LAYER = LayerConfig()


@dataclass
class EncoderLayerWeights:
    """float64 weights of a ``BertLayer``, (d_in x d_out), 1/sqrt(d_head) folded into Q."""

    weights: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]
    ln1: tuple[np.ndarray, np.ndarray]
    ln2: tuple[np.ndarray, np.ndarray]
    heads: int
    eps: float

    @classmethod
    def from_hf(cls, layer: HFModel, heads: int, eps: float) -> EncoderLayerWeights:
        """From a ``transformers`` ``BertLayer`` (read by ``models.encoder.read_layer``)."""
        t = read_layer(layer, heads)
        return cls(
            {key: w.numpy() for key, (w, _b) in t.linear.items()},
            {key: b.numpy() for key, (_w, b) in t.linear.items()},
            (t.norms["ln1"][0].numpy(), t.norms["ln1"][1].numpy()),
            (t.norms["ln2"][0].numpy(), t.norms["ln2"][1].numpy()),
            heads,
            float(eps),
        )

    @property
    def head_dim(self) -> int:
        return self.weights["q"].shape[1] // self.heads


class FloatOps:
    """The layer's nonlinearities in float64: exact (``plain``) or NEXUS's (``simulate``)."""

    def __init__(self, mode: str, config: LayerConfig = DEFAULT_LAYER):
        if mode not in ("plain", "simulate"):
            raise UnknownNameError(f"unknown float mode {mode!r}; use 'plain' or 'simulate'")
        self.mode, self.config = mode, config

    def softmax(self, scores: np.ndarray) -> np.ndarray:
        if self.mode == "plain":
            z = np.exp(scores - scores.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True)
        return approx.softmax.nexus(scores, self.config.softmax)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "plain":
            return approx.gelu.gelu_exact(x)
        if self.config.gelu_chebyshev is not None:
            return approx.gelu.chebyshev(x, self.config.gelu_chebyshev)
        return approx.gelu.nexus(x, self.config.gelu)

    def layernorm(self, x: np.ndarray, norm: tuple[np.ndarray, np.ndarray], eps: float):
        if self.mode == "plain":
            z = x - x.mean(axis=-1, keepdims=True)
            return norm[0] * z / np.sqrt((z * z).mean(axis=-1, keepdims=True) + eps) + norm[1]
        return approx.layernorm.nexus(x, *norm, eps=eps, config=self.config.layernorm)


def float_layer(x: np.ndarray, w: EncoderLayerWeights, ops: FloatOps) -> np.ndarray:
    """The layer in float64 on a (tokens x hidden) activation, nonlinearities from ``ops``."""
    lin = {key: x @ w.weights[key] + w.biases[key] for key in ("q", "k", "v")}  # (n, hidden)
    dh = w.head_dim
    heads = []
    for h in range(w.heads):
        cols = slice(h * dh, (h + 1) * dh)
        probs = ops.softmax(lin["q"][:, cols] @ lin["k"][:, cols].T)  # (n, n)
        heads.append(probs @ lin["v"][:, cols])  # (n, dh)
    attn = np.concatenate(heads, axis=1) @ w.weights["o"] + w.biases["o"]  # (n, hidden)
    h1 = ops.layernorm(attn + x, w.ln1, w.eps)
    ffn = ops.gelu(h1 @ w.weights["ffn1"] + w.biases["ffn1"])  # (n, intermediate)
    out = ffn @ w.weights["ffn2"] + w.biases["ffn2"] + h1
    return ops.layernorm(out, w.ln2, w.eps)


def simulate_layer(
    x: np.ndarray, w: EncoderLayerWeights, config: LayerConfig = DEFAULT_LAYER
) -> np.ndarray:
    """The layer in float64 with the NEXUS approximations (the encrypted layer's twin)."""
    return float_layer(x, w, FloatOps("simulate", config))


def rotation_steps(layout: mm.TokenInterleaved, head_dim: int) -> list[int]:
    """Every rotation key ``encrypted_layer`` uses."""
    att = at.AttentionLayout(layout, head_dim)
    return sorted(set(mm.rotation_steps(layout)) | set(att.rotation_steps()))


def _linear(
    backend: CKKSBackend,
    x: list[Ciphertext],
    w: EncoderLayerWeights,
    key: str,
    layout: mm.TokenInterleaved,
    bound: float,
) -> list[Ciphertext]:
    """x W_key + b_key (the matmul needs one level; bootstrap first if there is none)."""
    x = [he.ensure_level(backend, c, 1, "linear", bound) for c in x]
    out = mm.matmul_plain(backend, x, w.weights[key], layout)
    biases = layout.pack(np.tile(w.biases[key], (layout.tokens, 1)))
    return [backend.add_plain(c, b) for c, b in zip(out, biases, strict=True)]


def _add_and_norm(
    backend: CKKSBackend,
    a: list[Ciphertext],
    b: list[Ciphertext],
    norm: tuple[np.ndarray, np.ndarray],
    w: EncoderLayerWeights,
    layout: mm.TokenInterleaved,
    config: LayerConfig,
) -> list[Ciphertext]:
    """LayerNorm(a + b): the residual connection and the norm after it."""
    residual = [backend.add(x, y) for x, y in zip(a, b, strict=True)]
    return hn.layernorm(backend, residual, layout, *norm, w.eps, config.layernorm)


def encrypted_layer(
    backend: CKKSBackend,
    x: list[Ciphertext],
    w: EncoderLayerWeights,
    layout: mm.TokenInterleaved,
    config: LayerConfig = DEFAULT_LAYER,
    seconds: dict[str, float] | None = None,
) -> list[Ciphertext]:
    """The layer on token-interleaved ciphertexts of a (tokens x hidden) activation.

    ``seconds``, if given, receives the wall time of each stage (for benchmarks).
    """
    att = at.AttentionLayout(layout, w.head_dim)
    n = layout.tokens
    clock = _StageClock(seconds)
    bound = config.activation_bound
    q, k, v = (_linear(backend, x, w, key, layout, bound) for key in "qkv")
    clock("Q, K, V projections")
    scores = at.scores(backend, q, k, att, bound)
    clock("Q K^T")
    probs = [hn.softmax(backend, s, n, n, config.softmax) for s in scores]
    clock("softmax")
    heads = at.weighted_values(backend, probs, v, att, bound)
    clock("P V")
    attn = _linear(backend, heads, w, "o", layout, bound)
    clock("output projection")
    h1 = _add_and_norm(backend, attn, x, w.ln1, w, layout, config)
    clock("LayerNorm 1")
    ffn = _linear(backend, h1, w, "ffn1", layout, bound)
    clock("FFN in")
    if config.gelu_chebyshev is not None:
        ffn = [hn.gelu_chebyshev(backend, c, config.gelu_chebyshev) for c in ffn]
    else:
        ffn = [hn.gelu(backend, c, config.gelu) for c in ffn]
    clock("GELU")
    ffn2 = _linear(backend, ffn, w, "ffn2", layout, bound)
    clock("FFN out")
    out = _add_and_norm(backend, ffn2, h1, w.ln2, w, layout, config)
    clock("LayerNorm 2")
    return out


class _StageClock:
    """Records the time since the previous call under each stage name (if asked to)."""

    def __init__(self, into: dict[str, float] | None):
        self.into, self.last = into, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[stage] = now - self.last
        self.last = now

"""One BERT encoder layer under CKKS, composed from the NEXUS operators, and in float64.

``encrypted_layer`` runs Q/K/V projections, Q K^T, softmax, P V, the output projection,
residual, LayerNorm, FFN with GELU, residual, LayerNorm, all on token-interleaved ciphertexts.
``float_layer`` is the same layer in float64 with the nonlinearities of ``FloatOps``: exact
(``plain``) or NEXUS's recipes (``simulate``, the encrypted layer's twin, ``simulate_layer``).

Padding: ``real`` (default: all) says how many leading positions hold real tokens; the others
hold [PAD] embeddings and are computed too, but attention masks them as keys (as ``transformers``
does), so the real tokens' outputs do not depend on them. Only the depth-aware softmax
(``LayerConfig.softmax_squaring``) takes the mask; NEXUS's own softmax needs every position real.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from privformer import approx
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks import planner
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import InputError, UnknownNameError
from privformer.models.encoder import read_layer
from privformer.models.registry import HFModel
from privformer.protocols.nexus import attention as at
from privformer.protocols.nexus import he_nonlinear as hn
from privformer.protocols.nexus import matmul as mm


@dataclass(frozen=True)
class LayerConfig:
    """The approximations a layer uses (shared by the encrypted layer and its twin)."""

    # GELU: NEXUS's SGN-selected pieces (``gelu``), or, when ``gelu_chebyshev`` is set, one
    # Chebyshev interpolant (depth 7 instead of 27); the twin and the encrypted layer both obey it.
    gelu: approx.gelu.GeluConfig = approx.gelu.DEFAULT_GELU
    gelu_chebyshev: approx.gelu.ChebyshevGeluConfig | None = None
    softmax: approx.softmax.SoftmaxConfig = approx.softmax.DEFAULT_SOFTMAX
    # Softmax with no maximum (normalize-and-square, one packed inverse per round), when set.
    softmax_squaring: approx.softmax.SquaringSoftmaxConfig | None = None
    # |attention scores|, for the bootstrap that refreshes them before the softmax.
    score_bound: float = 64.0
    layernorm: approx.layernorm.LayerNormConfig = approx.layernorm.DEFAULT_LAYERNORM
    # |entries| of hidden states, Q, K, V and FFN outputs, for the bootstraps that may refresh
    # them (a real bootstrap needs them scaled into range; see CKKSBackend.bootstrap).
    activation_bound: float = at.ACTIVATION_BOUND


DEFAULT_LAYER = LayerConfig()

_PARTS = {
    "gelu": approx.gelu.GeluConfig,
    "gelu_chebyshev": approx.gelu.ChebyshevGeluConfig,
    "softmax": approx.softmax.SoftmaxConfig,
    "softmax_squaring": approx.softmax.SquaringSoftmaxConfig,
    "layernorm": approx.layernorm.LayerNormConfig,
}


def config_to_dict(config: LayerConfig) -> dict[str, Any]:
    """A JSON-ready form of ``config`` (``config_from_dict`` reads it back)."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> LayerConfig:
    """The ``LayerConfig`` of ``config_to_dict``'s output; unknown fields raise ``InputError``."""
    try:
        fields: dict[str, Any] = {
            key: (None if data.get(key) is None else kind(**data[key]))
            for key, kind in _PARTS.items()
            if key in data
        }
        fields |= {key: float(v) for key, v in data.items() if key not in _PARTS}
        return LayerConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a NEXUS layer configuration: {exc}") from exc


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


class RangeRecorder:
    """The lowest and highest value each named operator input took (calibration data)."""

    def __init__(self) -> None:
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}

    def see(self, name: str, values: np.ndarray) -> None:
        low, high = float(np.min(values)), float(np.max(values))
        self.low[name] = min(low, self.low.get(name, low))
        self.high[name] = max(high, self.high.get(name, high))

    def magnitude(self, name: str) -> float:
        return max(abs(self.low[name]), abs(self.high[name]))


class FloatOps:
    """The layer's nonlinearities in float64: exact (``plain``) or NEXUS's (``simulate``).
    ``recorder``, if given, sees every operator's input (to calibrate ranges)."""

    def __init__(
        self, mode: str, config: LayerConfig = DEFAULT_LAYER, recorder: RangeRecorder | None = None
    ):
        if mode not in ("plain", "simulate"):
            raise UnknownNameError(f"unknown float mode {mode!r}; use 'plain' or 'simulate'")
        self.mode, self.config, self.recorder = mode, config, recorder

    def observe(self, name: str, values: np.ndarray) -> None:
        if self.recorder is not None:
            self.recorder.see(name, values)

    def softmax(self, scores: np.ndarray, real: int) -> np.ndarray:
        """Softmax over the first ``real`` keys of each row (the rest get probability 0)."""
        keys = np.arange(scores.shape[-1]) < real
        if self.recorder is not None:
            self.recorder.see("scores", scores)
            # Padding queries' rows are zeroed before centring (see approx.softmax.squaring).
            centred = scores[:real] - scores[:real, keys].mean(axis=-1, keepdims=True)
            self.recorder.see("scores_centred", centred)
        if self.mode == "plain":
            masked = np.where(keys, scores, -np.inf)
            z = np.exp(masked - masked.max(axis=-1, keepdims=True))
            return z / z.sum(axis=-1, keepdims=True)
        if self.config.softmax_squaring is not None:
            return approx.softmax.squaring(scores, keys, self.config.softmax_squaring, rows=keys)
        if real != scores.shape[-1]:
            raise InputError("NEXUS's softmax has no padding mask: use softmax_squaring")
        return approx.softmax.nexus(scores, self.config.softmax)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        self.observe("gelu", x)
        if self.mode == "plain":
            return approx.gelu.gelu_exact(x)
        if self.config.gelu_chebyshev is not None:
            return approx.gelu.chebyshev(x, self.config.gelu_chebyshev)
        return approx.gelu.nexus(x, self.config.gelu)

    def layernorm(self, x: np.ndarray, norm: tuple[np.ndarray, np.ndarray], eps: float):
        if self.mode == "plain" or self.recorder is not None:
            z = x - x.mean(axis=-1, keepdims=True)
            var = (z * z).mean(axis=-1, keepdims=True) + eps
            self.observe("layernorm_input", x)
            self.observe("layernorm_variance", var)
        if self.mode == "plain":
            return norm[0] * z / np.sqrt(var) + norm[1]
        if self.config.layernorm.start_degree is not None:
            return approx.layernorm.chebyshev(x, *norm, eps=eps, config=self.config.layernorm)
        return approx.layernorm.nexus(x, *norm, eps=eps, config=self.config.layernorm)


def float_layer(
    x: np.ndarray, w: EncoderLayerWeights, ops: FloatOps, real: int | None = None
) -> np.ndarray:
    """The layer in float64 on a (tokens x hidden) activation, nonlinearities from ``ops``;
    keys at positions >= ``real`` (default: none) are masked."""
    real = x.shape[0] if real is None else real
    lin = {key: x @ w.weights[key] + w.biases[key] for key in ("q", "k", "v")}  # (n, hidden)
    for values in lin.values():
        ops.observe("activation", values)
    dh = w.head_dim
    heads = []
    for h in range(w.heads):
        cols = slice(h * dh, (h + 1) * dh)
        probs = ops.softmax(lin["q"][:, cols] @ lin["k"][:, cols].T, real)  # (n, n)
        heads.append(probs @ lin["v"][:, cols])  # (n, dh)
    attn = np.concatenate(heads, axis=1) @ w.weights["o"] + w.biases["o"]  # (n, hidden)
    h1 = ops.layernorm(attn + x, w.ln1, w.eps)
    ffn = ops.gelu(h1 @ w.weights["ffn1"] + w.biases["ffn1"])  # (n, intermediate)
    ffn_out = ffn @ w.weights["ffn2"] + w.biases["ffn2"]
    for values in (attn, h1, ffn, ffn_out):
        ops.observe("activation", values)
    out = ffn_out + h1
    return ops.layernorm(out, w.ln2, w.eps)


def simulate_layer(
    x: np.ndarray,
    w: EncoderLayerWeights,
    config: LayerConfig = DEFAULT_LAYER,
    real: int | None = None,
) -> np.ndarray:
    """The layer in float64 with the NEXUS approximations (the encrypted layer's twin)."""
    return float_layer(x, w, FloatOps("simulate", config), real)


def rotation_steps(layout: mm.TokenInterleaved, head_dim: int) -> list[int]:
    """Every rotation key ``encrypted_layer`` uses."""
    att = at.AttentionLayout(layout, head_dim)
    return sorted(set(mm.rotation_steps(layout)) | set(att.rotation_steps()))


def layer_steps(
    config: LayerConfig, layout: mm.TokenInterleaved, hidden: int, intermediate: int, heads: int
) -> list[planner.Step]:
    """The layer's main chain as planner steps (depth, live ciphertexts), for the depth-aware
    operators: what ``planner.plan`` places bootstraps on. Side chains on one ciphertext (each
    round's packed inverse, LayerNorm's per-token 1/sqrt) and the residual branches are not in
    it, so a plan's count is a lower bound for the layer's main tensors."""
    cheb, sq, ln = config.gelu_chebyshev, config.softmax_squaring, config.layernorm
    if cheb is None or sq is None or ln.start_degree is None:
        raise InputError("layer_steps describes the depth-aware operators only")
    h, f = layout.blocks(hidden), layout.blocks(intermediate)
    groups = layout.slots // (layout.tokens * layout.tokens)  # heads per score ciphertext
    heads = -(-heads // groups)  # score ciphertexts
    exp_depth = approx.chebyshev.depth(len(sq.exp_coeffs) - 1)
    steps = [
        planner.Step("Q, K, V projections", 1, h),
        planner.Step("Q K^T", at.SCORE_LEVELS, 2 * h),
        planner.Step("softmax: centre + exp", 1 + exp_depth, heads),
        *(planner.Step(f"softmax round {i}", 2, heads) for i in range(sq.rounds)),
        planner.Step("P V", at.VALUE_LEVELS, heads + h),
        planner.Step("output projection", 1, h),
        planner.Step("LayerNorm 1 (z, z^2, scale)", 3, h),
        planner.Step("LayerNorm 1 (z y, gamma)", 2, h),
        planner.Step("FFN in", 1, h),
        planner.Step("GELU", approx.chebyshev.depth(cheb.degree), f),
        planner.Step("FFN out", 1, f),
        planner.Step("LayerNorm 2 (z, z^2, scale)", 3, h),
        planner.Step("LayerNorm 2 (z y, gamma)", 2, h),
    ]
    return steps


def _linear(
    backend: CKKSBackend,
    x: list[Ciphertext],
    w: EncoderLayerWeights,
    key: str,
    layout: mm.TokenInterleaved,
    bound: float,
    scale: float = 1.0,
) -> list[Ciphertext]:
    """scale (x W_key + b_key), the scale folded into the plaintext weights (the matmul needs
    one level; bootstrap first if there is none). Every input but GELU's output (which is
    GELU's polynomial at 0 on padded features, not 0) is zero beyond its width: the client's
    packing, LayerNorm's (gamma and beta are zero there) and P V's (its masks are)."""
    x = he.ensure_levels(backend, x, 1, "linear", bound)
    zero_padded = key != "ffn2"
    out = mm.matmul_plain(backend, x, scale * w.weights[key], layout, zero_padded)
    biases = layout.pack(np.tile(scale * w.biases[key], (layout.tokens, 1)))
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
    if config.layernorm.start_degree is not None:
        return hn.layernorm_chebyshev(backend, residual, layout, *norm, w.eps, config.layernorm)
    return hn.layernorm(backend, residual, layout, *norm, w.eps, config.layernorm)


def encrypted_layer(
    backend: CKKSBackend,
    x: list[Ciphertext],
    w: EncoderLayerWeights,
    layout: mm.TokenInterleaved,
    config: LayerConfig = DEFAULT_LAYER,
    seconds: dict[str, float] | None = None,
    real: int | None = None,
    bootstraps: dict[str, int] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> list[Ciphertext]:
    """The layer on token-interleaved ciphertexts of a (tokens x hidden) activation whose first
    ``real`` positions (default: all) are real tokens.

    ``seconds`` and ``bootstraps``, if given, receive each stage's wall time and bootstrap count;
    ``on_stage(stage)`` is called as each stage ends (progress bars).
    """
    att = at.AttentionLayout(layout, w.head_dim)
    n = layout.tokens
    real = n if real is None else real
    clock = _StageClock(backend, seconds, bootstraps, on_stage)
    bound = config.activation_bound
    x = he.ensure_levels(backend, x, 1, "linear", bound)  # once for Q, K and V
    q, k, v = (_linear(backend, x, w, key, layout, bound) for key in "qkv")
    clock("Q, K, V projections")
    scores = at.scores(backend, q, k, att, bound, w.heads)
    clock("Q K^T")
    if config.softmax_squaring is not None:
        probs = hn.softmax_squaring(
            backend, scores, n, real, config.softmax_squaring, config.score_bound
        )
    elif real != n:
        raise InputError("NEXUS's softmax has no padding mask: set LayerConfig.softmax_squaring")
    else:
        probs = [hn.softmax(backend, s, n, n, config.softmax) for s in scores]
    clock("softmax")
    heads = at.weighted_values(backend, probs, v, att, bound, w.heads)
    clock("P V")
    attn = _linear(backend, heads, w, "o", layout, bound)
    clock("output projection")
    h1 = _add_and_norm(backend, attn, x, w.ln1, w, layout, config)
    clock("LayerNorm 1")
    cheb = config.gelu_chebyshev
    # Chebyshev GELU reads x / bound: that scale rides on W_ffn1 and saves a level.
    ffn = _linear(backend, h1, w, "ffn1", layout, bound, 1.0 / cheb.bound if cheb else 1.0)
    clock("FFN in")
    if cheb is not None:
        ffn = hn.gelu_chebyshev_many(backend, ffn, cheb, prescaled=True)
    else:
        ffn = [hn.gelu(backend, c, config.gelu) for c in ffn]
    clock("GELU")
    ffn2 = _linear(backend, ffn, w, "ffn2", layout, bound)
    clock("FFN out")
    out = _add_and_norm(backend, ffn2, h1, w.ln2, w, layout, config)
    clock("LayerNorm 2")
    return out


class _StageClock:
    """Records the time and the bootstraps since the previous call under each stage name."""

    def __init__(
        self,
        backend: CKKSBackend,
        seconds: dict[str, float] | None,
        bootstraps: dict[str, int] | None,
        on_stage: Callable[[str], None] | None = None,
    ):
        self.backend, self.seconds, self.bootstraps = backend, seconds, bootstraps
        self.on_stage = on_stage
        self.last, self.last_count = time.perf_counter(), backend.bootstraps

    def __call__(self, stage: str) -> None:
        now, count = time.perf_counter(), self.backend.bootstraps
        if self.seconds is not None:
            self.seconds[stage] = now - self.last
        if self.bootstraps is not None:
            self.bootstraps[stage] = count - self.last_count
        self.last, self.last_count = now, count
        if self.on_stage is not None:
            self.on_stage(stage)

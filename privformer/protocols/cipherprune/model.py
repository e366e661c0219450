"""The BERT classifier CipherPrune runs, and its forward pass written once for both executors.

The classifier is a BERT encoder (Hugging Face ``BertModel`` weights) with a linear head on the
final [CLS] state (no tanh pooler: it would need one more approximation for no accuracy gain).
``forward`` is written against ``Ops``; ``simulate.FloatOps`` runs it in float64 and
``secure.SharedOps`` under 2PC, so both apply the same approximations and the same pruning rule.

Pruning (paper section 3): after attention at layer l, token j's importance is the attention it
receives averaged over heads and query rows, S_j = sum_{h,i} P_h[i, j] / (H n). Tokens with
S_j <= theta_l are removed before the rest of the layer; survivors with S_j <= beta_l
(beta_l >= theta_l) are "low" and use the reduced GELU in this layer and the reduced exp in the
next layer's softmax rows. [CLS] is always kept and high. After each pruning step the token rows
are ordered [CLS, high..., low...]; the counts are public (that is what the protocol reveals).
With ``PruningConfig.min_keep`` the first pruned rows stay, as masked dummies among the low
rows, until that many rows survive: the count revealed is then max(kept, min_keep).

MPNet encoders add a relative position bias to every layer's scores (``RelativePositionBias``,
a server weight). ``ops.attention`` adds the bias of the current rows' original positions: the
executor recomputes it at each pruning step, from the kept positions (float) or from the
secret selection of kept rows (2PC, which keeps the positions secret).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import torch

from privformer.approx.layernorm import RSQRT_RANGE, LayerNormConfig
from privformer.errors import InputError
from privformer.models.encoder import (
    EmbeddingTables,
    EncoderLayerTensors,
    EncoderTensors,
    RelativePositionBias,
    read_encoder,
)
from privformer.models.registry import HFModel

#: Additive attention mask of padded keys: far below the exp clamp, far inside the ring.
MASK_VALUE = -1024.0
EMBEDDING_SCALE = 16.0
DIM_FIELDS = (
    "layers",
    "hidden",
    "heads",
    "intermediate",
    "vocab",
    "max_positions",
    "eps",
    "classes",
    "relative_max_distance",
    "layernorm_ranges",
    "rsqrt",
)
#: The 2PC rsqrt's forms (``approx.layernorm``): Newton over the whole variance range from a
#: linear start, or v normalised by its power of two first (fixed rounds; docs/cipherprune.md).
RSQRT_FORMS = ("newton", "octaves")
#: The relative position bias table (buckets x heads) of MPNet encoders.
RELATIVE_BIAS = "rel.bias"


@dataclass
class PruningConfig:
    """Per-layer thresholds (None: no pruning at that layer) and the compaction method."""

    keep: list[float | None]
    high: list[float | None]
    compaction: str = "shuffle"  # or "swap" (the paper's adjacent oblivious swaps)
    # At least this many rows ([CLS] included) survive each pruning step: when fewer tokens
    # clear the threshold, the first pruned rows (by position) stay as dummies (masked as keys,
    # low), so the revealed count is max(kept, min_keep) and hides how far below it the count
    # fell, e.g. a sentence's length. 0: off.
    min_keep: int = 0

    def __post_init__(self) -> None:
        if self.min_keep < 0:
            raise InputError(f"min_keep must be >= 0, got {self.min_keep}")
        if len(self.keep) != len(self.high):
            raise InputError("keep and high thresholds need one entry per layer each")
        for k, h in zip(self.keep, self.high, strict=True):
            if (k is None) != (h is None):
                raise InputError("a layer needs both thresholds or neither")
            if k is not None and h is not None and h < k:
                raise InputError(f"high threshold {h} is below keep threshold {k}")
        if self.compaction not in ("shuffle", "swap"):
            raise InputError(f"unknown compaction {self.compaction!r}; use 'shuffle' or 'swap'")

    @classmethod
    def none(cls, layers: int) -> PruningConfig:
        return cls([None] * layers, [None] * layers)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PruningConfig:
        return cls(**json.loads(text))


@dataclass
class BertClassifierWeights:
    """float64 weights by name (x @ W convention: W is in x out) and the shape constants."""

    tensors: dict[str, torch.Tensor]
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    eps: float
    classes: int
    relative_max_distance: int = 0  # MPNet's relative position bias (0: none)
    # Variance range of each LayerNorm's rsqrt by name ("emb.ln", "l0.ln1", ...), calibrated
    # (``train.calibrate_layernorm``); a LayerNorm not listed uses RSQRT_RANGE.
    layernorm_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    rsqrt: str = "newton"  # one of RSQRT_FORMS
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rsqrt not in RSQRT_FORMS:
            raise InputError(f"unknown rsqrt form {self.rsqrt!r}: choose from {RSQRT_FORMS}")

    def dims(self) -> dict[str, Any]:
        """The public dimensions (what config.json and the model card hold)."""
        return {k: getattr(self, k) for k in DIM_FIELDS}

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def norm_eps(self, name: str) -> float:
        """The eps of LayerNorm ``name``: the embedding LayerNorm's input is scaled by
        EMBEDDING_SCALE, so its eps by EMBEDDING_SCALE^2, which keeps it exact (MPNet's 1e-5
        would otherwise move the states by ~1e-4)."""
        return self.eps * EMBEDDING_SCALE**2 if name == "emb.ln" else self.eps

    def layernorm_range(self, name: str) -> LayerNormConfig:
        """The variance range of LayerNorm ``name``'s rsqrt."""
        octaves = self.rsqrt == "octaves"
        if name not in self.layernorm_ranges:
            return replace(RSQRT_RANGE, octaves=octaves)
        low, high = self.layernorm_ranges[name]
        return LayerNormConfig(var_low=float(low), var_high=float(high), octaves=octaves)

    def relative_bias(self) -> RelativePositionBias | None:
        """MPNet's relative position bias (None for BERT)."""
        if not self.relative_max_distance:
            return None
        return RelativePositionBias(self.tensors[RELATIVE_BIAS], self.relative_max_distance)

    @classmethod
    def from_hf(cls, bert: HFModel, head: torch.nn.Linear) -> BertClassifierWeights:
        """From a ``transformers`` ``BertModel`` or ``MPNetModel`` and a linear head on [CLS]."""
        cfg = bert.config
        enc = read_encoder(bert)  # raises UnsupportedModelError unless BERT/MPNet, exact GELU
        # LayerNorm is scale invariant, so scaling every embedding table by EMBEDDING_SCALE leaves
        # the model's function unchanged (its eps is scaled too: ``norm_eps``) and lifts the
        # embedding LayerNorm's variance into the range of the rsqrt approximation
        # (docs/cipherprune.md).
        t: dict[str, torch.Tensor] = {
            "emb.word": enc.embeddings.word * EMBEDDING_SCALE,
            "emb.pos": enc.embeddings.position * EMBEDDING_SCALE,
            "emb.type0": enc.embeddings.token_type0 * EMBEDDING_SCALE,
            "emb.ln.g": enc.embeddings.norm[0],
            "emb.ln.b": enc.embeddings.norm[1],
            "head.w": head.weight.detach().to(torch.float64).T.contiguous(),
            "head.b": head.bias.detach().to(torch.float64),
        }
        for i, layer in enumerate(enc.layers):
            lin, norms = layer.linear, layer.norms
            t[f"l{i}.qkv.w"] = torch.cat([lin[k][0] for k in "qkv"], dim=1).contiguous()
            t[f"l{i}.qkv.b"] = torch.cat([lin[k][1] for k in "qkv"])
            for key in ("o", "ffn1", "ffn2"):
                t[f"l{i}.{key}.w"], t[f"l{i}.{key}.b"] = lin[key]
            for key in ("ln1", "ln2"):
                t[f"l{i}.{key}.g"], t[f"l{i}.{key}.b"] = norms[key]
        if enc.relative_bias is not None:
            t[RELATIVE_BIAS] = enc.relative_bias.table
        return cls(
            t,
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.intermediate_size,
            cfg.vocab_size,
            enc.embeddings.position.shape[0],
            float(cfg.layer_norm_eps),
            int(head.out_features),
            enc.relative_bias.max_distance if enc.relative_bias is not None else 0,
        )

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def encoder(self) -> EncoderTensors:
        """The encoder as ``models.encoder`` reads it from ``transformers`` (the inverse of
        ``from_hf``'s packing: embedding tables unscaled, Q, K and V split), for other
        protocols to run the same fine-tuned model."""
        t = self.tensors
        tables = EmbeddingTables(
            word=t["emb.word"] / EMBEDDING_SCALE,
            position=t["emb.pos"] / EMBEDDING_SCALE,
            token_type0=t["emb.type0"] / EMBEDDING_SCALE,
            norm=(t["emb.ln.g"], t["emb.ln.b"]),
            eps=self.eps,
        )
        layers = []
        for i in range(self.layers):
            q, k, v = t[f"l{i}.qkv.w"].split(self.hidden, dim=1)
            qb, kb, vb = t[f"l{i}.qkv.b"].split(self.hidden)
            linear = {"q": (q, qb), "k": (k, kb), "v": (v, vb)}
            for key in ("o", "ffn1", "ffn2"):
                linear[key] = (t[f"l{i}.{key}.w"], t[f"l{i}.{key}.b"])
            norms = {key: (t[f"l{i}.{key}.g"], t[f"l{i}.{key}.b"]) for key in ("ln1", "ln2")}
            layers.append(EncoderLayerTensors(linear, norms, self.eps))
        return EncoderTensors(tables, layers, self.heads, self.relative_bias())


class Ops(Protocol):
    """What ``forward`` needs from an executor. ``X`` is a float tensor or a secret share."""

    def embed(self, n: int) -> tuple[Any, Any, Any]: ...
    def rows(self, x: Any) -> int: ...
    def linear(self, x: Any, name: str) -> Any: ...
    def add(self, x: Any, y: Any) -> Any: ...
    def layernorm(self, x: Any, name: str) -> Any: ...
    def attention(self, qkv: Any, mask: Any, n_high: int) -> tuple[Any, Any]: ...
    def gelu(self, h: Any, n_high: int) -> Any: ...
    def prune(
        self,
        layer: int,
        probs: Any,
        rows: dict[str, Any],
        keep: float,
        high: float,
        min_keep: int = 0,
    ) -> tuple[dict[str, Any], int]: ...
    def classify(self, x: Any) -> torch.Tensor | None: ...


@dataclass
class PruneRecord:
    """What one pruning step saw (for tests and analysis). The float executor
    records it for free; the 2PC executor only with ``debug_reveal``, revealing it to the client."""

    layer: int
    positions: list[int]  # original positions of the rows entering the layer
    importance: torch.Tensor
    kept: list[int]  # original positions kept, in the new row order
    high: list[int]


@dataclass
class ForwardTrace:
    """Public facts of one run: tokens entering each layer and how many of them were high."""

    tokens_per_layer: list[int] = field(default_factory=list)
    high_per_layer: list[int] = field(default_factory=list)


def forward(
    ops: Ops, w: BertClassifierWeights, n: int, pruning: PruningConfig
) -> tuple[torch.Tensor | None, ForwardTrace]:
    """The classifier on n input tokens (the executor holds the tokens and the mask).

    Rows are tokens; row 0 is [CLS]. ``n_high`` counts the rows (from the top) that use the
    accurate approximations; the others use the reduced ones."""
    trace = ForwardTrace()
    x, mask, pos = ops.embed(n)
    n_high = n  # before the first pruning every token is high
    for i in range(w.layers):
        trace.tokens_per_layer.append(n)
        trace.high_per_layer.append(n_high)
        qkv = ops.linear(x, f"l{i}.qkv")
        ctx, probs = ops.attention(qkv, mask, n_high)
        keep, high = pruning.keep[i], pruning.high[i]
        if keep is not None and high is not None:  # both or neither (checked by PruningConfig)
            rows = {"x": x, "ctx": ctx, "mask": mask, "pos": pos}
            rows, n_high = ops.prune(i, probs, rows, keep, high, pruning.min_keep)
            x, ctx, mask, pos = rows["x"], rows["ctx"], rows["mask"], rows["pos"]
            n = ops.rows(x)
        x = ops.layernorm(ops.add(ops.linear(ctx, f"l{i}.o"), x), f"l{i}.ln1")
        h = ops.gelu(ops.linear(x, f"l{i}.ffn1"), n_high)
        x = ops.layernorm(ops.add(ops.linear(h, f"l{i}.ffn2"), x), f"l{i}.ln2")
    trace.tokens_per_layer.append(n)
    return ops.classify(x), trace

"""Read a Hugging Face BERT or MPNet encoder's weights once, in the form every executor uses.

Linear layers come out float64 in the ``x @ W + b`` convention (W is d_in x d_out), with
1/sqrt(d_head) folded into the query projection, so attention scores are plain Q K^T. Keys:
``q``, ``k``, ``v`` (self-attention), ``o`` (attention output), ``ffn1`` (intermediate),
``ffn2`` (output); norms ``ln1`` (after attention) and ``ln2`` (after the FFN), as (gamma, beta).

MPNet has BERT's layer with other names and two differences, both kept here: its position table
starts at row ``padding_idx + 1`` (the tables hold it from there, so row i is position i of an
unpadded sequence), it has no token types (type 0 is a zero row), and every layer adds one
relative position bias to its attention scores, ``RelativePositionBias``: a learned value per
head and bucket of the key's offset from the query, shared by all layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from privformer.errors import InputError, UnsupportedModelError
from privformer.models.registry import HFModel

#: transformers' BertLayer sub-module of each linear layer and norm.
LINEAR_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ffn1": "intermediate.dense",
    "ffn2": "output.dense",
}
NORM_NAMES = {"ln1": "attention.output.LayerNorm", "ln2": "output.LayerNorm"}
#: The same for MPNetLayer.
MPNET_LINEAR_NAMES = LINEAR_NAMES | {
    "q": "attention.attn.q",
    "k": "attention.attn.k",
    "v": "attention.attn.v",
    "o": "attention.attn.o",
}
MPNET_NORM_NAMES = {"ln1": "attention.LayerNorm", "ln2": "output.LayerNorm"}
LAYER_NAMES = {"bert": (LINEAR_NAMES, NORM_NAMES), "mpnet": (MPNET_LINEAR_NAMES, MPNET_NORM_NAMES)}


@dataclass
class EncoderLayerTensors:
    """One encoder layer: ``linear[key] = (W, b)``, ``norms[key] = (gamma, beta)``, float64."""

    linear: dict[str, tuple[torch.Tensor, torch.Tensor]]
    norms: dict[str, tuple[torch.Tensor, torch.Tensor]]
    eps: float


def read_layer(layer: HFModel, heads: int, model_type: str = "bert") -> EncoderLayerTensors:
    """The tensors of a ``transformers`` ``BertLayer`` or ``MPNetLayer`` (1/sqrt(d_head) folded
    into Q)."""
    linear_names, norm_names = LAYER_NAMES[model_type]
    try:
        for name in (*linear_names.values(), *norm_names.values()):
            layer.get_submodule(name)
    except AttributeError as exc:
        raise UnsupportedModelError(f"expected a transformers {model_type} layer: {exc}") from exc
    linear = {}
    for key, name in linear_names.items():
        module = layer.get_submodule(name)
        linear[key] = (
            module.weight.detach().to(torch.float64).T.contiguous(),
            module.bias.detach().to(torch.float64).clone(),
        )
    scale = 1.0 / math.sqrt(linear["q"][0].shape[1] // heads)
    linear["q"] = (linear["q"][0] * scale, linear["q"][1] * scale)
    norms = {}
    for key, name in norm_names.items():
        module = layer.get_submodule(name)
        norms[key] = (
            module.weight.detach().to(torch.float64).clone(),
            module.bias.detach().to(torch.float64).clone(),
        )
    return EncoderLayerTensors(linear, norms, float(layer.get_submodule(norm_names["ln1"]).eps))


@dataclass
class RelativePositionBias:
    """MPNet's (T5's) relative position bias: ``table[bucket(j - i), h]`` is added to head h's
    score of query i and key j. Offsets within ``buckets / 4`` get a bucket each, longer ones
    share log-spaced buckets up to ``max_distance``; the sign gets its own half."""

    table: torch.Tensor  # (buckets, heads), float64
    max_distance: int = 128

    @property
    def buckets(self) -> int:
        return self.table.shape[0]

    def bucket(self, offset: torch.Tensor) -> torch.Tensor:
        """The bucket of each key-minus-query offset (integer tensor)."""
        half = self.buckets // 2
        exact = half // 2
        distance = offset.abs()
        # float32 logs as transformers computes them, so a distance on a bucket edge lands in
        # the same bucket as there
        ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(
            self.max_distance / exact
        )
        far = (exact + (ratio * (half - exact)).to(torch.long)).clamp(max=half - 1)
        return torch.where(offset > 0, half, 0) + torch.where(distance < exact, distance, far)

    def matrix(self, positions: torch.Tensor) -> torch.Tensor:
        """(heads, n, n) bias of tokens at the given original positions (1-D, integers)."""
        positions = torch.as_tensor(positions).reshape(-1).long()
        offset = positions[None, :] - positions[:, None]  # [i, j] = key j - query i
        return self.table[self.bucket(offset)].permute(2, 0, 1).contiguous()


@dataclass
class EmbeddingTables:
    """BERT's input embeddings: word, position and type-0 tables and the LayerNorm after them."""

    word: torch.Tensor  # (vocab, hidden)
    position: torch.Tensor  # (max_positions, hidden)
    token_type0: torch.Tensor  # (hidden,)
    norm: tuple[torch.Tensor, torch.Tensor]
    eps: float

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(tokens, hidden) LayerNorm(word[ids] + position[:n] + type0) of 1-D ``ids``, exact."""
        ids = torch.as_tensor(ids).reshape(-1)
        if ids.numel() == 0 or ids.numel() > self.position.shape[0]:
            raise InputError(f"need 1 to {self.position.shape[0]} tokens, got {ids.numel()}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.word.shape[0]:
            raise InputError(f"token ids must lie in [0, {self.word.shape[0]})")
        x = self.word[ids] + self.position[: ids.numel()] + self.token_type0
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), *self.norm, self.eps)


@dataclass
class EncoderTensors:
    """A whole BERT or MPNet encoder: its embeddings, every layer and (MPNet) the relative
    position bias."""

    embeddings: EmbeddingTables
    layers: list[EncoderLayerTensors]
    heads: int
    relative_bias: RelativePositionBias | None = None


def read_encoder(model: HFModel) -> EncoderTensors:
    """The tensors of a ``transformers`` ``BertModel`` or ``MPNetModel`` with exact (erf) GELU."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "")
    if model_type not in LAYER_NAMES or cfg.hidden_act != "gelu":
        raise UnsupportedModelError(
            f"expected a BERT or MPNet encoder with exact GELU, got {model_type or 'unknown'} "
            f"with {getattr(cfg, 'hidden_act', '?')}"
        )
    emb = model.embeddings

    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.float64).clone()

    hidden = cfg.hidden_size
    if model_type == "mpnet":
        # transformers numbers an unpadded sequence's positions from padding_idx + 1
        position = f64(emb.position_embeddings.weight[emb.padding_idx + 1 :])
        type0 = torch.zeros(hidden, dtype=torch.float64)
        bias = RelativePositionBias(f64(model.encoder.relative_attention_bias.weight))
    else:
        position = f64(emb.position_embeddings.weight)
        type0 = f64(emb.token_type_embeddings.weight[0])
        bias = None
    tables = EmbeddingTables(
        word=f64(emb.word_embeddings.weight),
        position=position,
        token_type0=type0,
        norm=(f64(emb.LayerNorm.weight), f64(emb.LayerNorm.bias)),
        eps=float(cfg.layer_norm_eps),
    )
    return EncoderTensors(
        embeddings=tables,
        layers=[
            read_layer(layer, cfg.num_attention_heads, model_type) for layer in model.encoder.layer
        ],
        heads=cfg.num_attention_heads,
        relative_bias=bias,
    )

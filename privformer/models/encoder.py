"""Read a Hugging Face BERT encoder's weights once, in the form every executor uses.

Linear layers come out float64 in the ``x @ W + b`` convention (W is d_in x d_out), with
1/sqrt(d_head) folded into the query projection, so attention scores are plain Q K^T. Keys:
``q``, ``k``, ``v`` (self-attention), ``o`` (attention output), ``ffn1`` (intermediate),
``ffn2`` (output); norms ``ln1`` (after attention) and ``ln2`` (after the FFN), as (gamma, beta).
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


@dataclass
class EncoderLayerTensors:
    """One encoder layer: ``linear[key] = (W, b)``, ``norms[key] = (gamma, beta)``, float64."""

    linear: dict[str, tuple[torch.Tensor, torch.Tensor]]
    norms: dict[str, tuple[torch.Tensor, torch.Tensor]]
    eps: float


def read_layer(layer: HFModel, heads: int) -> EncoderLayerTensors:
    """The tensors of a ``transformers`` ``BertLayer`` (1/sqrt(d_head) folded into Q)."""
    if not hasattr(layer, "intermediate") or not hasattr(layer.attention, "self"):
        raise UnsupportedModelError("expected a transformers BertLayer")
    linear = {}
    for key, name in LINEAR_NAMES.items():
        module = layer.get_submodule(name)
        linear[key] = (
            module.weight.detach().to(torch.float64).T.contiguous(),
            module.bias.detach().to(torch.float64).clone(),
        )
    scale = 1.0 / math.sqrt(linear["q"][0].shape[1] // heads)
    linear["q"] = (linear["q"][0] * scale, linear["q"][1] * scale)
    norms = {}
    for key, name in NORM_NAMES.items():
        module = layer.get_submodule(name)
        norms[key] = (
            module.weight.detach().to(torch.float64).clone(),
            module.bias.detach().to(torch.float64).clone(),
        )
    return EncoderLayerTensors(linear, norms, float(layer.get_submodule(NORM_NAMES["ln1"]).eps))


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
    """A whole BERT encoder: its embeddings and every layer."""

    embeddings: EmbeddingTables
    layers: list[EncoderLayerTensors]
    heads: int


def read_encoder(bert: HFModel) -> EncoderTensors:
    """The tensors of a ``transformers`` ``BertModel`` with exact (erf) GELU."""
    cfg = bert.config
    if getattr(cfg, "model_type", "") != "bert" or cfg.hidden_act != "gelu":
        raise UnsupportedModelError("expected a BERT encoder with exact GELU")
    emb = bert.embeddings

    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.float64).clone()

    tables = EmbeddingTables(
        word=f64(emb.word_embeddings.weight),
        position=f64(emb.position_embeddings.weight),
        token_type0=f64(emb.token_type_embeddings.weight[0]),
        norm=(f64(emb.LayerNorm.weight), f64(emb.LayerNorm.bias)),
        eps=float(cfg.layer_norm_eps),
    )
    return EncoderTensors(
        embeddings=tables,
        layers=[read_layer(layer, cfg.num_attention_heads) for layer in bert.encoder.layer],
        heads=cfg.num_attention_heads,
    )

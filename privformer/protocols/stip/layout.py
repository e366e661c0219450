"""Which permutation space each parameter of a supported architecture reads and writes.

A parameter's role says how STIP transforms it:
- ``linear``: an ``nn.Linear`` weight of shape (out, in): rows follow ``out_space``, columns
  ``in_space``; its bias follows ``out_space``;
- ``conv1d``: GPT-2's ``Conv1D`` weight of shape (in, out), the transpose convention;
- ``vector``: a 1-D norm gain or shift over ``out_space`` (mean, variance and sum of squares are
  order-invariant, so a permuted norm of a permuted input is the permuted norm);
- ``user``: an embedding table the user runs; the cloud copy is zeroed.

Spaces: ``resid`` (the residual stream, pi), ``vocab`` (the output classes, pi_c) and per layer i
``q{i}``, ``k{i}``, ``v{i}``, ``o{i}`` (attention, see ``permutations.attention_permutation``),
``qkv{i}`` (GPT-2's fused projection: q, k, v side by side) and ``ffn{i}`` (the MLP hidden space,
shared by SwiGLU's gate and up projections). Unknown parameters make the layout fail closed, so no
weight reaches the cloud un-transformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from privformer.errors import UnsupportedModelError
from privformer.models.registry import HFModel


@dataclass(frozen=True)
class Role:
    """How one parameter is transformed: its kind and the spaces of its input and output axes."""

    kind: str  # "linear" | "conv1d" | "vector" | "user"
    in_space: str | None = None
    out_space: str | None = None


@dataclass
class Architecture:
    """A supported model's shape facts and the role of each state-dict entry."""

    family: str  # "bert" | "gpt2" | "llama"
    prefix: str  # state-dict prefix of the base model inside an LM-head model ("" for BertModel)
    base_class: str  # the transformers class of the body the v1 cloud serves
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope: bool
    has_lm_head: bool
    tied: bool
    roles: dict[str, Role] = field(default_factory=dict)
    # user-side embedding tables: name in user files -> state-dict key
    user_tables: dict[str, str] = field(default_factory=dict)


def _patterns(family: str) -> list[tuple[str, Role]]:
    r, L = "resid", r"(\d+)"  # noqa: N806 - L reads as "layer index"
    lin = lambda i, o: Role("linear", i, o)  # noqa: E731
    if family == "bert":
        return [
            (r"embeddings\.(word|position|token_type)_embeddings\.weight", Role("user")),
            (r"embeddings\.LayerNorm\.(weight|bias)", Role("vector", None, r)),
            (rf"encoder\.layer\.{L}\.attention\.self\.query\.(weight|bias)", lin(r, "q{0}")),
            (rf"encoder\.layer\.{L}\.attention\.self\.key\.(weight|bias)", lin(r, "k{0}")),
            (rf"encoder\.layer\.{L}\.attention\.self\.value\.(weight|bias)", lin(r, "v{0}")),
            (rf"encoder\.layer\.{L}\.attention\.output\.dense\.(weight|bias)", lin("o{0}", r)),
            (
                rf"encoder\.layer\.{L}\.(attention\.)?output\.LayerNorm\.(weight|bias)",
                Role("vector", None, r),
            ),
            (rf"encoder\.layer\.{L}\.intermediate\.dense\.(weight|bias)", lin(r, "ffn{0}")),
            (rf"encoder\.layer\.{L}\.output\.dense\.(weight|bias)", lin("ffn{0}", r)),
            # The pooler reads and writes the residual basis, so its output comes back under pi.
            (r"pooler\.dense\.(weight|bias)", lin(r, r)),
        ]
    if family == "gpt2":
        conv = lambda i, o: Role("conv1d", i, o)  # noqa: E731
        return [
            (r"transformer\.(wte|wpe)\.weight", Role("user")),
            (rf"transformer\.h\.{L}\.ln_[12]\.(weight|bias)", Role("vector", None, r)),
            (rf"transformer\.h\.{L}\.attn\.c_attn\.(weight|bias)", conv(r, "qkv{0}")),
            (rf"transformer\.h\.{L}\.attn\.c_proj\.(weight|bias)", conv("o{0}", r)),
            (rf"transformer\.h\.{L}\.mlp\.c_fc\.(weight|bias)", conv(r, "ffn{0}")),
            (rf"transformer\.h\.{L}\.mlp\.c_proj\.(weight|bias)", conv("ffn{0}", r)),
            (r"transformer\.ln_f\.(weight|bias)", Role("vector", None, r)),
            (r"lm_head\.weight", lin(r, "vocab")),
        ]
    if family == "llama":
        return [
            (r"model\.embed_tokens\.weight", Role("user")),
            (
                rf"model\.layers\.{L}\.(input|post_attention)_layernorm\.weight",
                Role("vector", None, r),
            ),
            (rf"model\.layers\.{L}\.self_attn\.q_proj\.(weight|bias)", lin(r, "q{0}")),
            (rf"model\.layers\.{L}\.self_attn\.k_proj\.(weight|bias)", lin(r, "k{0}")),
            (rf"model\.layers\.{L}\.self_attn\.v_proj\.(weight|bias)", lin(r, "v{0}")),
            (rf"model\.layers\.{L}\.self_attn\.o_proj\.(weight|bias)", lin("o{0}", r)),
            (rf"model\.layers\.{L}\.mlp\.(gate|up)_proj\.(weight|bias)", lin(r, "ffn{0}")),
            (rf"model\.layers\.{L}\.mlp\.down_proj\.(weight|bias)", lin("ffn{0}", r)),
            (r"model\.norm\.weight", Role("vector", None, r)),
            (r"lm_head\.weight", lin(r, "vocab")),
        ]
    raise UnsupportedModelError(family)


_FAMILIES = {
    # model_type -> (family, prefix of the body in the LM-head class, body class)
    "bert": ("bert", "", "BertModel"),
    "gpt2": ("gpt2", "transformer.", "GPT2Model"),
    "llama": ("llama", "model.", "LlamaModel"),
}

_USER_TABLES = {
    "bert": {
        "word_embeddings": "embeddings.word_embeddings.weight",
        "position_embeddings": "embeddings.position_embeddings.weight",
        "token_type_embeddings": "embeddings.token_type_embeddings.weight",
    },
    "gpt2": {
        "word_embeddings": "transformer.wte.weight",
        "position_embeddings": "transformer.wpe.weight",
    },
    "llama": {"word_embeddings": "model.embed_tokens.weight"},
}


def describe(model: HFModel) -> Architecture:
    """Read a model's architecture and assign a role to every state-dict entry (fail closed)."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(
            f"STIP supports model types {sorted(_FAMILIES)}; this model is {model_type!r}"
        )
    family, prefix, base_class = _FAMILIES[model_type]
    state = model.state_dict()
    has_lm_head = "lm_head.weight" in state
    if family == "bert" and any(k.startswith("bert.") for k in state):
        raise UnsupportedModelError("BERT with a task head: export the BertModel body instead")
    if family != "bert" and not has_lm_head:
        # a bare GPT2Model / LlamaModel: its keys lack the LM-class prefix
        raise UnsupportedModelError(f"load {model_type} with its LM head (AutoModelForCausalLM)")

    if family == "gpt2":
        heads = kv_heads = config.n_head
        hidden, layers = config.n_embd, config.n_layer
        inter = config.n_inner or 4 * hidden
    else:
        heads, hidden = config.num_attention_heads, config.hidden_size
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        layers, inter = config.num_hidden_layers, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads

    arch = Architecture(
        family=family,
        prefix=prefix,
        base_class=base_class,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=config.vocab_size,
        rope=(family == "llama"),
        has_lm_head=has_lm_head,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        user_tables=dict(_USER_TABLES[family]),
    )
    compiled = [(re.compile(p + "$"), role) for p, role in _patterns(family)]
    for key in state:
        for pattern, role in compiled:
            match = pattern.match(key)
            if match:
                layer = match.group(1) if match.groups() and match.group(1).isdigit() else ""
                arch.roles[key] = Role(
                    role.kind,
                    role.in_space.format(layer) if role.in_space else None,
                    role.out_space.format(layer) if role.out_space else None,
                )
                break
        else:
            raise UnsupportedModelError(f"STIP has no rule for parameter {key!r} of {model_type}")
    return arch

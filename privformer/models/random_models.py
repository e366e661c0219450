"""Seeded random-weight models from ``transformers`` configs, for shape coverage only.

They cover what the real models do not: GPT-2 (Conv1D weights, learned positions, biases), tied
and untied LM heads, Llama with GQA or MQA, RoPE, and biases on attention and MLP. Every parameter
is random, norms included (freshly initialised norms are gamma=1, beta=0, which hides a missing
norm permutation; that is the bug of STIP's public code). They use MiniLM's tokenizer so text
can be tokenised offline. The seed makes test fixtures reproducible; it is never used for keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from privformer.errors import ModelNotFoundError
from privformer.models.registry import HFModel

_VOCAB = 30522  # MiniLM's WordPiece vocabulary, whose tokenizer these models reuse


def _configs() -> dict:
    from transformers import BertConfig, GPT2Config, LlamaConfig

    gpt2: dict[str, Any] = dict(
        vocab_size=_VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=101,
        eos_token_id=102,
        architectures=["GPT2LMHeadModel"],
    )
    llama: dict[str, Any] = dict(
        vocab_size=_VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        max_position_embeddings=256,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
        architectures=["LlamaForCausalLM"],
    )
    return {
        "bert": BertConfig(
            vocab_size=_VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            architectures=["BertModel"],
        ),
        "gpt2": GPT2Config(**gpt2),
        "gpt2-untied": GPT2Config(**gpt2, tie_word_embeddings=False),
        "llama-gqa": LlamaConfig(
            **llama,
            intermediate_size=160,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=8,
            tie_word_embeddings=True,
        ),
        "llama-bias-untied": LlamaConfig(
            **llama,
            intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=1,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
        ),
    }


RANDOM_MODELS = ("bert", "gpt2", "gpt2-untied", "llama-gqa", "llama-bias-untied")


def build_random_model(name: str, seed: int = 0) -> HFModel:
    """Instantiate a random-config model with every parameter (norms included) drawn at random."""
    from transformers import AutoModel, AutoModelForCausalLM

    configs = _configs()
    if name not in configs:
        raise ModelNotFoundError(
            f"unknown random model {name!r}; known: {', '.join(RANDOM_MODELS)}"
        )
    config = configs[name]
    is_lm = config.architectures[0].endswith(("ForCausalLM", "LMHeadModel"))
    model = (AutoModelForCausalLM if is_lm else AutoModel).from_config(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if (
                param.ndim == 1
                and ("norm" in pname.lower() or "ln_" in pname)
                and "bias" not in pname
            ):
                param.copy_(1.0 + 0.5 * noise)  # norm gains around 1, far from the identity
            elif param.ndim == 1:
                param.copy_(0.1 * noise)  # biases and norm shifts
            else:
                param.copy_(0.08 * noise)
    return model


def materialize_random_model(name: str, seed: int = 0) -> Path:
    """Save a random model with MiniLM's tokenizer into the cache and return its folder."""
    from privformer.models.registry import atomic_materialize, cache_dir, load_tokenizer

    def build(out: Path) -> None:
        build_random_model(name, seed).save_pretrained(out)
        load_tokenizer("minilm").save_pretrained(out)

    if name not in _configs():
        raise ModelNotFoundError(
            f"unknown random model {name!r}; known: {', '.join(RANDOM_MODELS)}"
        )
    # The folder name carries a hash of the config: a changed definition never reuses a stale one.
    digest = hashlib.sha256(_configs()[name].to_json_string().encode()).hexdigest()[:10]
    return atomic_materialize(cache_dir() / "models" / f"random-{name}-seed{seed}-{digest}", build)

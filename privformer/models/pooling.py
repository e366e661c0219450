"""Sentence embeddings from token states: the sentence-transformers mean-pooling recipe."""

from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Mean of (b, n, d) token states over the tokens where the (b, n) mask is 1, L2-normalised."""
    weights = mask[..., None].to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def plain_sentence_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Reference sentence embeddings from the plain (unprotected) encoder."""
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    return mean_pool(hidden, enc["attention_mask"])

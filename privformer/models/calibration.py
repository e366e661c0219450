"""Record the inputs a real model feeds each nonlinear operator (to set and test their ranges).

``record_bert_activations`` runs a BERT encoder on real text and returns, over all layers and
non-padding tokens: GELU inputs, pre-softmax attention scores (one row per query and head),
LayerNorm inputs (one row per token) and the final hidden states.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def record_bert_activations(model, tokenizer, texts: list[str], max_length: int = 128) -> dict:
    """Operator inputs of a ``BertModel`` on ``texts`` (float64 numpy arrays)."""
    acts: dict[str, list[np.ndarray]] = {"gelu": [], "scores": [], "layernorm": []}
    keep: dict[str, torch.Tensor] = {}
    hooks = []
    heads = model.config.num_attention_heads

    def on_intermediate(_mod, _inp, out):  # intermediate.dense output = GELU input
        acts["gelu"].append(out[keep["mask"]].double().numpy().ravel())

    def on_query(_mod, _inp, out):
        keep["q"] = out

    def on_key(_mod, _inp, out):
        q, k, mask = keep["q"], out, keep["mask"]
        b, n, d = q.shape
        qh = q.view(b, n, heads, d // heads).transpose(1, 2)
        kh = k.view(b, n, heads, d // heads).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(d // heads)
        for i in range(b):
            m = int(mask[i].sum())
            acts["scores"].append(scores[i, :, :m, :m].double().reshape(-1, m).numpy())

    def on_layernorm(_mod, inp):
        acts["layernorm"].append(inp[0][keep["mask"]].double().numpy())

    for layer in model.encoder.layer:
        hooks.append(layer.intermediate.dense.register_forward_hook(on_intermediate))
        hooks.append(layer.attention.self.query.register_forward_hook(on_query))
        hooks.append(layer.attention.self.key.register_forward_hook(on_key))
        hooks.append(layer.attention.output.LayerNorm.register_forward_pre_hook(on_layernorm))
        hooks.append(layer.output.LayerNorm.register_forward_pre_hook(on_layernorm))
    try:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        keep["mask"] = enc["attention_mask"].bool()
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state[keep["mask"]].double().numpy()
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "gelu": np.concatenate(acts["gelu"]),
        "scores": acts["scores"],  # list of (rows, m) arrays, ragged in m
        "layernorm": np.concatenate(acts["layernorm"]),
        "hidden": hidden,
    }

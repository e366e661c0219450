"""Sentence classifiers privformer can build offline: a BERT encoder with a linear head on [CLS].

``minilm-rt-probe``: the embedded all-MiniLM-L6-v2 encoder (real weights, frozen) with a linear
probe on its [CLS] state fitted (L-BFGS, L2 1e-3) on 512 Rotten Tomatoes training sentences.
``minilm2-rt-probe``: the same with only MiniLM's first two layers (real weights, frozen) and
its own probe: small enough for encrypted end-to-end tests and many runs in the bench.
Fitting takes seconds, so tests, the demo and the README's example use it; it is cached in
privformer's cache. The fully fine-tuned classifier with learned pruning thresholds is
CipherPrune's (``privformer cipherprune train``, ``minilm-rt``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privformer.data import rotten_tomatoes_split
from privformer.errors import ModelNotFoundError
from privformer.models.registry import (
    HFModel,
    atomic_materialize,
    cache_dir,
    load_model,
    load_tokenizer,
)

PROBE = "minilm-rt-probe"
PROBE_2_LAYERS = "minilm2-rt-probe"
#: Encoder layers each built-in classifier keeps (None: all).
PROBE_LAYERS = {PROBE: None, PROBE_2_LAYERS: 2}
PROBE_TRAIN_SENTENCES = 512
PROBE_MAX_LENGTH = 64


def cls_states(encoder: HFModel, tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """(texts, hidden) final [CLS] states of the padded batch (gradients as the caller sets)."""
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return encoder(**enc).last_hidden_state[:, 0]


@dataclass
class EncoderClassifier:
    """A ``transformers`` ``BertModel``, a linear head on its [CLS] state, and its tokenizer."""

    name: str
    base: str  # the registry name of the encoder
    encoder: HFModel
    head: torch.nn.Linear
    tokenizer: Any


def _encoder(layers: int | None) -> HFModel:
    """The embedded MiniLM, cut to its first ``layers`` layers (None: all six)."""
    bert = load_model("minilm")
    if layers is not None:
        bert.encoder.layer = bert.encoder.layer[:layers]
        bert.config.num_hidden_layers = layers
    return bert


def _fit_probe(out: Path, layers: int | None = None) -> None:
    bert, tok = _encoder(layers), load_tokenizer("minilm")
    train = rotten_tomatoes_split()[0][:PROBE_TRAIN_SENTENCES]
    with torch.no_grad():
        feats = cls_states(bert, tok, [t for t, _ in train], PROBE_MAX_LENGTH)
    labels = torch.tensor([y for _, y in train])
    torch.manual_seed(0)
    head = torch.nn.Linear(feats.shape[1], 2)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), labels)
        loss = loss + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = float((head(feats).argmax(-1) == labels).double().mean())
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().contiguous() for k, v in head.state_dict().items()},
        str(out / "head.safetensors"),
    )
    meta = {
        "base": "minilm",
        "layers": layers or len(bert.encoder.layer),
        "train_sentences": len(train),
        "train_accuracy": accuracy,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=1))


def load_classifier(name: str = PROBE) -> EncoderClassifier:
    """An offline classifier by name (fitted into the cache on first use)."""
    if name not in PROBE_LAYERS:
        known = ", ".join(PROBE_LAYERS)
        raise ModelNotFoundError(f"unknown classifier {name!r}; built offline: {known}")
    from safetensors.torch import load_file

    layers = PROBE_LAYERS[name]
    folder = atomic_materialize(cache_dir() / "models" / name, lambda out: _fit_probe(out, layers))
    state = load_file(str(folder / "head.safetensors"))
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return EncoderClassifier(name, "minilm", _encoder(layers), head, load_tokenizer("minilm"))

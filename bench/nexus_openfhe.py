"""NEXUS operators with REAL bootstrapping: OpenFHE, ring 2^16, 128-bit, on real MiniLM inputs.

``bench/he_ops.py`` times the operators on SEAL with bootstrapping simulated (and not timed);
this one runs them on ``OpenFHEBackend`` (default parameters: sparse-secret encapsulation,
Meta-BTS x2, 8 levels after a bootstrap), so every bootstrap is real and inside the time.
Each operator runs in a fresh process (its own context and keys, its own peak memory).

    python bench/nexus_openfhe.py   # prints a table, writes bench/results/nexus_openfhe.json

A ring-2^16 ciphertext holds 32,768 slots, twice a SEAL ring-2^15 one: one GELU ciphertext is a
128 x 256 slice, so a BERT-base layer's GELU (128 x 3072) is 12 of them; softmax handles 256
rows of 128 keys (2 heads) at once. Paper figures (NEXUS, BERT-base, 128 tokens, CPU, ring
2^16): GELU 44 s, softmax 47 s, LayerNorm 32 s per layer. Threads: OpenFHE's OpenMP, every
core (2 here); needs CPython 3.10 (README, "OpenFHE backend") and ~15 GB.
"""

from __future__ import annotations

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
from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend  # noqa: E402
from privformer.data import load_movie_reviews  # noqa: E402
from privformer.models.calibration import record_bert_activations  # noqa: E402
from privformer.models.registry import load_model, load_tokenizer  # noqa: E402
from privformer.protocols.nexus import he_nonlinear as hn  # noqa: E402
from privformer.protocols.nexus.matmul import TokenInterleaved  # noqa: E402

TOKENS = 128
PAPER_S = {"GELU": 44.0, "softmax": 47.0, "LayerNorm": 32.0}


def _run(backend: OpenFHEBackend, fn) -> tuple[object, dict]:
    start, boots = time.perf_counter(), backend.bootstraps
    out = fn()
    return out, {"seconds": time.perf_counter() - start, "bootstraps": backend.bootstraps - boots}


def gelu_row(x: np.ndarray) -> dict:
    backend = OpenFHEBackend()
    out, stats = _run(backend, lambda: hn.gelu(backend, backend.encrypt(x)))
    got = backend.decrypt(out)
    backend.close()
    per_layer = TOKENS * 3072 // backend.slots
    return {
        "operator": "GELU",
        "shape": f"{x.size} real MiniLM GELU inputs (1 ciphertext)",
        **stats,
        "bert_base_layer_s": stats["seconds"] * per_layer,
        "paper_s": PAPER_S["GELU"],
        "max_err_vs_simulate": float(np.abs(got - approx.gelu.nexus(x)).max()),
        "mean_err_vs_exact": float(np.abs(got - approx.gelu.gelu_exact(x)).mean()),
        "note": f"x {per_layer} ciphertexts for BERT-base (128 x 3072)",
    }


def softmax_row(rows: list[np.ndarray]) -> dict:
    backend = OpenFHEBackend()
    width, stride = TOKENS, backend.slots // TOKENS  # 256 rows of 128 keys: 2 heads
    backend.generate_rotation_keys(he_ops.quick_sum_steps(width, stride))
    cfg = approx.softmax.SoftmaxConfig()
    scores = np.full((stride, width), -cfg.bound + 4.0)  # padding keys masked
    for i, r in enumerate(rows[:stride]):
        scores[i, : min(r.size, width)] = r[:width]
    ct = backend.encrypt(scores.T.reshape(-1))  # slot k * stride + row
    out, stats = _run(backend, lambda: hn.softmax(backend, ct, width, stride, cfg))
    got = backend.decrypt(out).reshape(width, stride).T
    backend.close()
    e = np.exp(scores - scores.max(1, keepdims=True))
    heads = stride // TOKENS
    return {
        "operator": "softmax",
        "shape": f"{stride} rows of {width} real MiniLM scores ({heads} heads)",
        **stats,
        "bert_base_layer_s": stats["seconds"] * 12 / heads,
        "paper_s": PAPER_S["softmax"],
        "max_err_vs_simulate": float(np.abs(got - approx.softmax.nexus(scores, cfg)).max()),
        "max_err_vs_exact": float(np.abs(got - e / e.sum(1, keepdims=True)).max()),
        "note": f"x {12 // heads} for BERT-base's 12 heads",
    }


def layernorm_row(x: np.ndarray) -> dict:
    backend = OpenFHEBackend()
    layout = TokenInterleaved(TOKENS, backend.slots)
    backend.generate_rotation_keys(he_ops.quick_sum_steps(layout.features, TOKENS))
    ln = load_model("minilm").encoder.layer[0].attention.output.LayerNorm
    gamma, beta = (t.detach().double().numpy() for t in (ln.weight, ln.bias))
    cts = [backend.encrypt(v) for v in layout.pack(x)]
    out, stats = _run(backend, lambda: hn.layernorm(backend, cts, layout, gamma, beta))
    got = layout.unpack([backend.decrypt(c) for c in out], x.shape[1])
    backend.close()
    exact = gamma * (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-12)
    exact += beta
    rel = np.linalg.norm(got - exact, axis=1) / np.linalg.norm(exact, axis=1)
    return {
        "operator": "LayerNorm",
        "shape": f"MiniLM {TOKENS} x {x.shape[1]} (real inputs, gamma, beta)",
        **stats,
        "paper_s": None,
        "max_err_vs_simulate": float(np.abs(got - approx.layernorm.nexus(x, gamma, beta)).max()),
        "max_rel_err_vs_exact": float(rel.max()),
        "note": "BERT-base's 768 wide: one more block, same bootstraps",
    }


def _job(job):
    fn, arg = job
    row = fn(arg)
    row["worker_peak_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    return row


def main() -> None:
    texts = [t for t, _ in load_movie_reviews("rotten_tomatoes")[:48]]
    acts = record_bert_activations(load_model("minilm"), load_tokenizer("minilm"), texts)
    rng = np.random.default_rng(3)
    jobs = [
        (gelu_row, rng.choice(acts["gelu"], 1 << 15, replace=False)),
        (layernorm_row, acts["layernorm"][rng.choice(len(acts["layernorm"]), TOKENS, False)]),
        (softmax_row, [r for block in acts["scores"] for r in block][::7]),
    ]
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for job in jobs:
        with ctx.Pool(1) as pool:
            row = pool.apply(_job, (job,))
        print(f"{row['operator']:10s} {row['seconds']:8.1f} s  {row['bootstraps']} bootstraps")
        rows.append(row)
    columns = ["operator", "shape", "seconds", "bootstraps", "bert_base_layer_s", "paper_s"]
    columns += ["max_err_vs_simulate", "worker_peak_gb", "note"]
    print_table(
        "NEXUS operators on OpenFHE, real bootstrapping (ring 2^16, 128-bit)", rows, columns
    )
    path = write_results(
        "nexus_openfhe", {"benchmark": "nexus_openfhe", "machine": machine(), "rows": rows}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""OpenFHE: MiniLM's projections at 16 positions, the plain BSGS matmul against the
replicated-input one (``protocols/nexus/matmul.py``), in one context with the server's chain.

At 16 positions a ring-2^16 ciphertext holds F = 2,048 features per token and MiniLM's hidden
state 384 of them. The plain path multiplies every diagonal of the zero-padded 2,048 x 2,048 block
that meets the weight (767 for 384 x 384, 1,919 for 384 x 1,536); the replicated path copies the
input along the features first (rotations composed from the power-of-two keys, no level) and
needs 384. This times both on the same encrypted input at the top level (where the layer's first
projections run), with the products counted and the error against numpy.

    python bench/openfhe_matmul.py [--weights minilm_q minilm_ffn_in]

Writes bench/results/openfhe_matmul.json. Needs the OpenFHE worker (CPython 3.10, README) and
~15 GB: run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

from privformer.crypto.ckks.circuits import power_of_two_steps  # noqa: E402
from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend  # noqa: E402
from privformer.models.registry import load_model  # noqa: E402
from privformer.protocols.nexus import matmul as mm  # noqa: E402

TOKENS = 16
WEIGHTS = {
    "minilm_q": lambda layer: layer.attention.self.query,
    "minilm_ffn_in": lambda layer: layer.intermediate.dense,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=list(WEIGHTS))
    args = ap.parse_args()
    layer = load_model("minilm").encoder.layer[0]
    start = time.perf_counter()
    backend = OpenFHEBackend()
    layout = mm.TokenInterleaved(TOKENS, backend.slots)
    steps = sorted(set(mm.rotation_steps(layout)) | set(power_of_two_steps(backend.slots)))
    backend.generate_rotation_keys(steps)
    setup_s = time.perf_counter() - start
    rows = []
    for name in args.weights:
        w = WEIGHTS[name](layer).weight.detach().double().numpy().T  # (d_in, d_out)
        x = np.random.default_rng(4).normal(size=(TOKENS, w.shape[0]))
        cts = mm.encrypt_activation(backend, x, layout)
        for path, zero_padded in (("plain", False), ("replicated", True)):
            products = 0
            plain_sum = backend.multiply_plain_sum

            def counted(terms, plain_sum=plain_sum):
                nonlocal products
                products += len(terms)
                return plain_sum(terms)

            backend.multiply_plain_sum = counted  # type: ignore[method-assign]
            t = time.perf_counter()
            out = mm.matmul_plain(backend, cts, w, layout, zero_padded)
            seconds = time.perf_counter() - t
            del backend.multiply_plain_sum
            got = mm.decrypt_activation(backend, out, layout, w.shape[1])
            rows.append(
                {
                    "weight": f"{name} {w.shape[0]}x{w.shape[1]}",
                    "path": path,
                    "products": products,
                    "seconds": seconds,
                    "max_error": float(np.abs(got - x @ w).max()),
                }
            )
            print(rows[-1], flush=True)
    for row in rows:
        plain = next(r for r in rows if r["weight"] == row["weight"] and r["path"] == "plain")
        row["speedup"] = plain["seconds"] / row["seconds"]
    print_table(
        f"OpenFHE matmul at {TOKENS} positions, top level (setup {setup_s:.0f} s)",
        rows,
        ["weight", "path", "products", "seconds", "speedup", "max_error"],
    )
    record = {"benchmark": "openfhe_matmul", "machine": machine(), "tokens": TOKENS}
    path = write_results("openfhe_matmul", record | {"setup_s": setup_s, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

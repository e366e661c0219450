"""NEXUS simulate mode against plain on the whole Rotten Tomatoes test split (1,066 sentences).

Simulate runs every layer with NEXUS's approximations in float64 (exactly the encrypted
operators' polynomials and iterations), the client's embeddings and the head exactly; plain runs
the same classifier with exact functions. For each GELU recipe (NEXUS's SGN-selected pieces,
and one degree-127 Chebyshev interpolant) it reports accuracy, agreement with plain, the
largest logit difference, and how many sentences fell outside an approximation's valid range
(an ``OutOfRangeError``: counted, never hidden).

    python bench/nexus_accuracy.py [--model minilm-rt-probe] [--limit N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, simulate_outputs, write_results  # noqa: E402

import privformer as pf  # noqa: E402
from privformer import approx  # noqa: E402
from privformer.data import rotten_tomatoes_split  # noqa: E402
from privformer.protocols.nexus.layer import DEFAULT_LAYER  # noqa: E402

RECIPES = {
    "NEXUS piecewise GELU (SGN)": DEFAULT_LAYER,
    "Chebyshev GELU, degree 127": dataclasses.replace(
        DEFAULT_LAYER, gelu_chebyshev=approx.gelu.DEFAULT_CHEBYSHEV_GELU
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm-rt-probe")
    ap.add_argument("--limit", type=int, help="first N test sentences only")
    args = ap.parse_args()
    # The paper's operators (one LayerConfig for every layer); bench/nexus_e2e.py measures the
    # depth-aware default.
    model = pf.load(args.model, protocol="nexus", operators="paper")
    test = rotten_tomatoes_split()[1][: args.limit]
    labels = np.array([y for _, y in test])
    texts = [t for t, _ in test]
    start = time.perf_counter()
    plain = model.predict(texts, mode="plain").outputs.numpy()
    rows = [
        {
            "recipe": "plain (exact functions)",
            "accuracy": float((plain.argmax(-1) == labels).mean()),
            "seconds": time.perf_counter() - start,
        }
    ]
    for name, config in RECIPES.items():
        model.classifier.config = config
        start = time.perf_counter()
        sim, failed = simulate_outputs(model, texts, plain.shape[1])
        ok = ~np.isnan(sim).any(axis=1)
        rows.append(
            {
                "recipe": name,
                "accuracy": float((sim.argmax(-1)[ok] == labels[ok]).mean()),
                "plain_accuracy_same_sentences": float((plain.argmax(-1)[ok] == labels[ok]).mean()),
                "agreement_with_plain": float((sim.argmax(-1)[ok] == plain.argmax(-1)[ok]).mean()),
                "max_logit_diff": float(np.abs(sim[ok] - plain[ok]).max()),
                "out_of_range": failed,
                "seconds": time.perf_counter() - start,
            }
        )
    columns = ["recipe", "accuracy", "plain_accuracy_same_sentences", "agreement_with_plain"]
    columns += ["max_logit_diff", "out_of_range", "seconds"]
    print_table(f"NEXUS simulate vs plain, {args.model}, {len(test)} sentences", rows, columns)
    payload = {
        "benchmark": "nexus_accuracy",
        "machine": machine(),
        "model": args.model,
        "sentences": len(test),
        "rows": rows,
    }
    print(f"\nwrote {write_results('nexus_accuracy', payload)}")


if __name__ == "__main__":
    main()

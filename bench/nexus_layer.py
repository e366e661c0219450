"""One real MiniLM encoder layer under CKKS, 128 real tokens, composed from the NEXUS operators.

    python bench/nexus_layer.py      # prints a table, writes bench/results/nexus_layer.json

SEAL ring 2^15 (``depth19``), one thread; bootstraps are simulated (``SecretKeyRefresh``)
and not timed: their count is reported. Checks the encrypted layer against its float64 twin and
against the exact ``transformers`` layer on the same input (the hidden states entering layer 1
for a real IMDB review truncated to 128 tokens, no padding).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer.crypto.ckks.refresh import SecretKeyRefresh
from privformer.crypto.ckks.seal_backend import SealBackend  # noqa: E402
from privformer.data import load_movie_reviews  # noqa: E402
from privformer.models.registry import load_model, load_tokenizer  # noqa: E402
from privformer.protocols.nexus import layer as nl  # noqa: E402
from privformer.protocols.nexus.matmul import TokenInterleaved  # noqa: E402

TOKENS = 128


def main() -> None:
    model, tok = load_model("minilm"), load_tokenizer("minilm")
    text = next(t for t, _ in load_movie_reviews("imdb") if len(tok(t)["input_ids"]) > TOKENS)
    enc = tok(text, truncation=True, max_length=TOKENS, return_tensors="pt")
    with torch.inference_mode():
        states = model(**enc, output_hidden_states=True).hidden_states
    x, exact = states[1][0].double().numpy(), states[2][0].double().numpy()
    weights = nl.EncoderLayerWeights.from_hf(
        model.encoder.layer[1], model.config.num_attention_heads, model.config.layer_norm_eps
    )
    twin = nl.simulate_layer(x, weights)
    backend = SealBackend("depth19", bootstrapper=SecretKeyRefresh())
    layout = TokenInterleaved(TOKENS, backend.slots)
    start = time.perf_counter()
    backend.generate_rotation_keys(nl.rotation_steps(layout, weights.head_dim))
    keygen_s = time.perf_counter() - start
    cts = [backend.encrypt(v) for v in layout.pack(x)]
    seconds: dict[str, float] = {}
    out = nl.encrypted_layer(backend, cts, weights, layout, seconds=seconds)
    got = layout.unpack([backend.decrypt(c) for c in out], x.shape[1])
    rows = [{"stage": k, "seconds": v} for k, v in seconds.items()]
    rows.append({"stage": "total (bootstraps not timed)", "seconds": sum(seconds.values())})
    summary = {
        "tokens": TOKENS,
        "preset": "depth19 (N=2^15), SEAL, 1 thread",
        "keygen_s": keygen_s,
        "bootstraps": backend.bootstraps,
        "max_err_vs_simulate": float(np.abs(got - twin).max()),
        "max_err_vs_exact": float(np.abs(got - exact).max()),
        "simulate_max_err_vs_exact": float(np.abs(twin - exact).max()),
        "output_max_abs": float(np.abs(exact).max()),
    }
    print_table("One MiniLM layer under CKKS, 128 tokens", rows, ["stage", "seconds"])
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_results(
        "nexus_layer",
        {"benchmark": "nexus_layer", "machine": machine(), "stages": rows, "summary": summary},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

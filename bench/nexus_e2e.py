"""NEXUS end to end, as far as it runs today: plans, bootstrap counts, accuracy, projections.

For each classifier (by default the fine-tuned 2-layer MiniLM, ``minilm2-rt``, and CipherPrune's
fine-tuned 6-layer one, ``minilm-rt``, built by ``privformer cipherprune train``; the probes
``minilm2-rt-probe`` and ``minilm-rt-probe`` on request), with the depth-aware operators
and per-layer ranges calibrated on Rotten Tomatoes training sentences:
- the encrypted circuit runs on ``FloatBackend`` (float64 with CKKS's levels, 7-level windows as
  OpenFHE's default chain leaves, 128 tokens) for a few test sentences, on 32,768 slots (all of
  ring 2^16: two heads per score ciphertext) and on 16,384 (one head, the SEAL ring 2^15
  layout): per layer and stage, the bootstraps a real backend would run, the planner's optimum
  for the layer's main chain, and the circuit's logits against the float twin (``simulate``);
- ``simulate`` against ``plain`` on the whole Rotten Tomatoes test split (1,066 sentences):
  accuracy, agreement, out-of-range inputs (counted, never hidden);
- the time the bootstraps alone would take at OpenFHE's measured speed
  (bench/results/openfhe_bootstrap.json): a lower bound on an encrypted run, which also spends
  time in matmuls and rotations;
- the encrypted queries ``bench/nexus_encrypted.py`` measured for the model, at the positions
  they ran with (client and server processes, OpenFHE;
  bench/results/nexus_encrypted_MODEL.json): seconds and real
  bootstraps per layer, seconds per query, bytes up and down, evaluation-key bytes, the server's
  peak memory, the class against plaintext, against the issue's targets.

    python bench/nexus_e2e.py [--models minilm2-rt minilm-rt] [--tokens 128] [--limit N]
    python bench/nexus_e2e.py --refresh-encrypted   # re-read the encrypted queries only

Rows of models not run this time are kept from the previous results file (each row carries the
date it was measured), so models can be measured one run at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    encrypted_results_name,
    machine,
    print_table,
    simulate_outputs,
    write_results,
)

import privformer as pf  # noqa: E402
from privformer.crypto.ckks import planner  # noqa: E402
from privformer.crypto.ckks.float_backend import FloatBackend  # noqa: E402
from privformer.data import rotten_tomatoes_split  # noqa: E402
from privformer.protocols.nexus.layer import layer_steps  # noqa: E402

SLOTS = 1 << 15  # ring 2^16, all slots (at 128 positions: two heads per score ciphertext)
WINDOW = 7  # OpenFHE's default chain: levels left after a bootstrap
PLAN_SENTENCES = 4
#: Today's NEXUS-paper operators on one MiniLM layer (bench/results/nexus_layer.json).
PAPER_BOOTSTRAPS_PER_LAYER = 322
TARGET_BOOTSTRAPS_PER_LAYER = 24
#: The issue's time targets for a whole encrypted query (2 cores, 128 tokens): minutes by layers.
TARGET_MINUTES = {2: 20.0, 6: 60.0}


def _openfhe_bootstrap_seconds() -> float:
    rows = json.loads((RESULTS / "openfhe_bootstrap.json").read_text())["rows"]
    return next(r["bootstrap_s"] for r in rows if "(default)" in r["set"])


def _plan(model, texts: list[str], slots: int = SLOTS, **backend_options) -> dict:
    """Bootstraps per layer and stage, and circuit vs twin, on ``texts`` (``backend_options``:
    FloatBackend's complex packing settings; default: OpenFHE's default chain)."""
    clf, tok = model.classifier, model.tokenizer
    per_layer: list[dict[str, int]] = []
    diffs, seconds = [], []
    for text in texts:
        ids = tok(text, truncation=True, max_length=clf.tokens)["input_ids"]
        backend = FloatBackend(slots, WINDOW, **backend_options)
        backend.generate_rotation_keys(clf.rotation_steps(slots))
        x, real = clf.embed(ids)
        layout = clf.layout(backend)
        stats: list[dict] = []
        start = time.perf_counter()
        out = clf.forward_circuit(
            backend, [backend.encrypt(v) for v in layout.pack(x)], real, stats=stats
        )
        seconds.append(time.perf_counter() - start)
        diffs.append(
            float(np.abs(clf.read_logits(backend.decrypt(out)) - clf.logits(ids, "simulate")).max())
        )
        per_layer = [s["bootstraps"] for s in stats]  # the same for every sentence
    # The planner's optimum for each layer's main chain (side chains excluded: a lower bound).
    layout = clf.layout(FloatBackend(slots, WINDOW))
    plans = [
        planner.plan(
            layer_steps(
                clf.layer_config(i),
                layout,
                w.weights["q"].shape[0],
                w.weights["ffn1"].shape[1],
                w.heads,
            ),
            WINDOW,
            WINDOW,
            1.0,
        )
        for i, w in enumerate(clf.layers)
    ]
    return {
        "planner_main_chain_per_layer": [p.bootstraps for p in plans],
        "planner_table_layer_1": plans[min(1, len(plans) - 1)].table(),
        "bootstraps_per_layer": [sum(s.values()) for s in per_layer],
        "bootstraps_per_stage": per_layer,
        "circuit_vs_simulate_max_logit_diff": max(diffs),
        "float_circuit_seconds": float(np.median(seconds)),
    }


def _accuracy(model, test: list[tuple[str, int]]) -> dict:
    labels = np.array([y for _, y in test])
    texts = [t for t, _ in test]
    start = time.perf_counter()
    plain = model.predict(texts, mode="plain").outputs.numpy()
    sim_arr, failed = simulate_outputs(model, texts, plain.shape[1])
    ok = ~np.isnan(sim_arr).any(axis=1)
    return {
        "sentences": len(texts),
        "plain_accuracy": float((plain.argmax(-1) == labels).mean()),
        "simulate_accuracy": float((sim_arr[ok].argmax(-1) == labels[ok]).mean()),
        "agreement": float((sim_arr[ok].argmax(-1) == plain[ok].argmax(-1)).mean()),
        "max_logit_diff": float(np.abs(sim_arr[ok] - plain[ok]).max()),
        "out_of_range": failed,
        "seconds": time.perf_counter() - start,
    }


def _encrypted(model: str) -> dict | None:
    """The encrypted queries ``bench/nexus_encrypted.py`` measured for ``model`` (its own results
    file; they may use fewer positions than this bench's plans: the row says how many)."""
    path = RESULTS / f"{encrypted_results_name(model)}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    queries = record["queries"]
    if not queries:
        return None
    layers = [q["layers_detail"] for q in queries]
    per_layer_s = [
        float(np.mean([sum(q[i]["seconds"].values()) for q in layers]))
        for i in range(len(layers[0]))
    ]
    minutes = float(np.mean([q["seconds"] for q in queries])) / 60
    target = TARGET_MINUTES.get(record["layers"])
    return {
        "machine": record["machine"]["cpu"],
        "backend": record["backend"],
        "positions": record["positions"],
        "queries": len(queries),
        "same_class_as_plain": sum(q["encrypted_class"] == q["plain_class"] for q in queries),
        "max_logit_diff_vs_simulate": max(
            (q["max_diff_vs_simulate"] for q in queries if q["max_diff_vs_simulate"] is not None),
            default=None,
        ),
        "minutes_per_query": minutes,
        "target_minutes": target,
        "over_target": None if target is None else minutes / target,
        "seconds_per_layer": per_layer_s,
        "bootstraps_per_layer": [sum(layer["bootstraps"].values()) for layer in layers[0]],
        "bytes_up": queries[0]["bytes_up"],
        "bytes_down": queries[0]["bytes_down"],
        "evaluation_key_bytes": sum(record["evaluation_key_bytes"].values()),
        "server_peak_gb": record.get("server_peak_rss_bytes", 0) / 1e9,
    }


def _report(rows: list[dict], boot_s: float, tokens: int) -> None:
    """Print the table and (re)write the JSON: called after each model, so a long run that is
    stopped keeps the models it finished."""
    print_table(
        f"NEXUS depth-aware operators: {tokens} positions, {SLOTS} slots, {WINDOW}-level windows "
        f"(OpenFHE bootstrap {boot_s:.1f} s)",
        rows,
        [
            "model",
            "layers",
            "bootstraps",
            "max_per_layer",
            "target_per_layer",
            "plan_planner_main_chain_per_layer",
            "bootstraps_no_complex_packing",
            "bootstraps_pair_level",
            "bootstraps_one_head_per_ciphertext",
            "bootstrap_minutes_at_openfhe_speed",
            "plan_circuit_vs_simulate_max_logit_diff",
            "accuracy_plain_accuracy",
            "accuracy_simulate_accuracy",
            "accuracy_agreement",
            "accuracy_out_of_range",
        ],
    )
    measured = [{"model": r["model"], **r["encrypted"]} for r in rows if r.get("encrypted")]
    if measured:
        print_table(
            "encrypted queries (bench/nexus_encrypted.py: client and server processes, OpenFHE)",
            measured,
            [
                "model",
                "positions",
                "queries",
                "same_class_as_plain",
                "max_logit_diff_vs_simulate",
                "minutes_per_query",
                "target_minutes",
                "over_target",
                "bootstraps_per_layer",
                "seconds_per_layer",
                "bytes_up",
                "bytes_down",
                "evaluation_key_bytes",
                "server_peak_gb",
            ],
        )
    for row in rows:
        print(f"\n{row['model']}: the planner's plan of layer 1's main chain")
        print(row["plan_planner_table_layer_1"])
        print(f"\n{row['model']}: bootstraps per layer and stage")
        for i, stages in enumerate(row["plan_bootstraps_per_stage"]):
            print(f"  layer {i}: " + ", ".join(f"{k} {v}" for k, v in stages.items() if v))
    path = write_results(
        "nexus_e2e",
        {
            "benchmark": "nexus_e2e",
            "machine": machine(),
            "tokens": tokens,
            "slots": SLOTS,
            "window_levels": WINDOW,
            "openfhe_bootstrap_s": boot_s,
            "complex_packing": "default chain: pairs where a step leaves a level spare",
            "encrypted": "each row's 'encrypted': bench/nexus_encrypted.py's last queries",
            "rows": rows,
        },
    )
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["minilm2-rt", "minilm-rt"])
    ap.add_argument("--limit", type=int, help="first N test sentences only (accuracy)")
    ap.add_argument("--tokens", type=int, default=128, help="positions of the layout")
    ap.add_argument(
        "--refresh-encrypted",
        action="store_true",
        help="only re-read the encrypted queries into the saved rows (seconds, not hours)",
    )
    args = ap.parse_args()
    train, test = rotten_tomatoes_split()
    boot_s = _openfhe_bootstrap_seconds()
    path = RESULTS / "nexus_e2e.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    if args.refresh_encrypted:
        if not previous:
            raise SystemExit(f"{path} does not exist: run the bench first")
        for row in previous["rows"]:
            row["encrypted"] = _encrypted(row["model"])
        _report(previous["rows"], previous["openfhe_bootstrap_s"], previous["tokens"])
        return
    rows = []
    if previous.get("tokens") == args.tokens:  # rows of another layout are not comparable
        rows = [r for r in previous["rows"] if r["model"] not in args.models]
    for name in args.models:
        model = pf.load(name, protocol="nexus", tokens=args.tokens)
        plan = _plan(model, [t for t, _ in test[:PLAN_SENTENCES]])
        one_head = _plan(model, [t for t, _ in test[:1]], SLOTS // 2)
        one = [t for t, _ in test[:1]]
        unpacked = _plan(model, one, complex_packing=False)
        whole_windows = _plan(model, one, pair_level_loss=0)
        acc = _accuracy(model, test[: args.limit])
        per_layer = plan["bootstraps_per_layer"]
        rows.append(
            {
                "model": name,
                "measured_at": time.strftime("%Y-%m-%d %H:%M"),
                "layers": len(per_layer),
                "bootstraps": sum(per_layer),
                "max_per_layer": max(per_layer),
                "target_per_layer": TARGET_BOOTSTRAPS_PER_LAYER,
                "paper_operators_per_layer": PAPER_BOOTSTRAPS_PER_LAYER,
                "bootstrap_minutes_at_openfhe_speed": sum(per_layer) * boot_s / 60,
                "bootstraps_one_head_per_ciphertext": one_head["bootstraps_per_layer"],
                "bootstraps_no_complex_packing": unpacked["bootstraps_per_layer"],
                "bootstraps_pair_level": whole_windows["bootstraps_per_layer"],
                **{f"plan_{k}": v for k, v in plan.items()},
                **{f"accuracy_{k}": v for k, v in acc.items()},
                "encrypted": _encrypted(name),
            }
        )
        _report(rows, boot_s, args.tokens)
    _report(rows, boot_s, args.tokens)


if __name__ == "__main__":
    main()

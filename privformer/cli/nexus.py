"""``privformer nexus ...``: NEXUS (CKKS) commands.

privformer nexus run TEXT... [--mode plain|simulate] [--model minilm-rt-probe]
                             [--operators depth-aware|paper] [--json]
privformer nexus plan TEXT [--model minilm-rt-probe] [--window 7] [--json]

``plan`` runs the encrypted circuit on ``FloatBackend`` (float64 with CKKS's levels) and prints,
per layer, the bootstraps each stage needs in windows of ``--window`` levels, and the planner's
plan of one layer's main chain. The encrypted client and server (keygen, serve, query) are the
next step of the NEXUS work; ``--mode private`` says so.
"""

from __future__ import annotations

import argparse
import json


def cmd_run(args: argparse.Namespace) -> int:
    import privformer as pf

    model = pf.load(args.model, protocol="nexus", operators=args.operators)
    result = model.predict(args.text, mode=args.mode)
    rows = [
        {"text": t, "label": label, "logits": logits}
        for t, label, logits in zip(args.text, result.labels, result.outputs.tolist(), strict=True)
    ]
    if args.json:
        print(json.dumps({"mode": result.mode.value, "seconds": result.seconds, "results": rows}))
    else:
        for row in rows:
            logits = ", ".join(f"{v:+.4f}" for v in row["logits"])
            print(f"{row['text']!r}: class {row['label']} (logits {logits})")
        print(f"NEXUS {result.mode.value}: {result.seconds:.2f} s")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    import privformer as pf
    from privformer.crypto.ckks import planner
    from privformer.crypto.ckks.float_backend import FloatBackend
    from privformer.protocols.nexus.layer import layer_steps

    model = pf.load(args.model, protocol="nexus")
    clf = model.classifier
    slots = args.slots or 2 * clf.tokens * clf.tokens  # ring 2^16's slots at 128 tokens
    backend = FloatBackend(slots, args.window, complex_packing=not args.no_complex_packing)
    backend.generate_rotation_keys(clf.rotation_steps(slots))
    ids = model.tokenizer(args.text, truncation=True, max_length=clf.tokens)["input_ids"]
    x, real = clf.embed(ids)
    layout = clf.layout(backend)
    stats: list[dict] = []
    with tqdm(total=len(clf.layers), desc="layers (float circuit)", unit="layer") as bar:
        out = clf.forward_circuit(
            backend,
            [backend.encrypt(v) for v in layout.pack(x)],
            real,
            progress=lambda i, stage: bar.update(1) if stage == "LayerNorm 2" else None,
            stats=stats,
        )
    logits = clf.read_logits(backend.decrypt(out))
    w = clf.layers[min(1, len(clf.layers) - 1)]
    chain = layer_steps(
        clf.layer_config(min(1, len(clf.layers) - 1)),
        layout,
        w.weights["q"].shape[0],
        w.weights["ffn1"].shape[1],
        w.heads,
    )
    pairs = 1 if args.no_complex_packing else 2
    best = planner.plan(chain, args.window, args.window, args.bootstrap_seconds, pairs)
    per_layer = [s["bootstraps"] for s in stats]
    if args.json:
        print(
            json.dumps(
                {
                    "bootstraps": per_layer,
                    "total": backend.bootstraps,
                    "logits": logits.tolist(),
                    "planner_bootstraps": best.bootstraps,
                }
            )
        )
        return 0
    print(
        f"{real} real tokens in {clf.tokens} positions, {slots} slots, {args.window}-level windows"
    )
    for i, stages in enumerate(per_layer):
        parts = ", ".join(f"{k} {v}" for k, v in stages.items() if v)
        print(f"layer {i}: {sum(stages.values())} bootstraps ({parts})")
    print(f"total: {backend.bootstraps} bootstraps; logits {np.round(logits, 4).tolist()}")
    print("\nthe planner's plan of one layer's main chain (side chains not included):")
    print(best.table())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    nexus = sub.add_parser("nexus", help="NEXUS: non-interactive CKKS inference")
    cmds = nexus.add_subparsers(dest="nexus_command", required=True)
    run = cmds.add_parser("run", help="classify texts in plain or simulate mode, in this process")
    run.add_argument("text", nargs="+")
    run.add_argument("--model", default="minilm-rt-probe")
    run.add_argument("--mode", default="simulate", choices=["plain", "simulate", "private"])
    run.add_argument("--operators", default="depth-aware", choices=["depth-aware", "paper"])
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=cmd_run)
    plan = cmds.add_parser("plan", help="bootstraps per layer and stage, and the planner's plan")
    plan.add_argument("text")
    plan.add_argument("--model", default="minilm-rt-probe")
    plan.add_argument("--window", type=int, default=7, help="levels a bootstrap leaves")
    plan.add_argument(
        "--bootstrap-seconds",
        type=float,
        default=78.0,
        help="one bootstrap's time for the plan's total (OpenFHE's default chain on 2 cores, "
        "measured: docs/nexus.md)",
    )
    plan.add_argument(
        "--slots", type=int, default=None, help="slots per ciphertext (default 2 x tokens^2)"
    )
    plan.add_argument(
        "--no-complex-packing",
        action="store_true",
        help="one ciphertext per bootstrap (default: two, packed as a + i b)",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)

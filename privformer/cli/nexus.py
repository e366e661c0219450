"""``privformer nexus ...``: NEXUS (CKKS) commands.

privformer nexus run TEXT... [--mode plain|simulate] [--model minilm-rt-probe] [--json]

The encrypted client and server (keygen, serve, query) are the next step of the NEXUS work;
``--mode private`` says so.
"""

from __future__ import annotations

import argparse
import json


def cmd_run(args: argparse.Namespace) -> int:
    import privformer as pf

    result = pf.load(args.model, protocol="nexus").predict(args.text, mode=args.mode)
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    nexus = sub.add_parser("nexus", help="NEXUS: non-interactive CKKS inference")
    cmds = nexus.add_subparsers(dest="nexus_command", required=True)
    run = cmds.add_parser("run", help="classify texts in plain or simulate mode, in this process")
    run.add_argument("text", nargs="+")
    run.add_argument("--model", default="minilm-rt-probe")
    run.add_argument("--mode", default="simulate", choices=["plain", "simulate", "private"])
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=cmd_run)

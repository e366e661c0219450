"""``privformer nexus ...``: NEXUS (CKKS) commands.

privformer nexus run TEXT... [--mode plain|simulate] [--model minilm-rt-probe]
                             [--operators depth-aware|paper] [--json]
privformer nexus plan TEXT [--model minilm-rt-probe] [--window 7] [--json]
privformer nexus serve MODEL [--backend openfhe|seal] [--tokens 128] [--keys-dir DIR] [--port 8000]
privformer nexus keygen --server URL --keys DIR [--no-upload]
privformer nexus query --server URL --keys DIR --model MODEL --text TEXT... [--return argmax|logits]

``plan`` runs the encrypted circuit on ``FloatBackend`` (float64 with CKKS's levels) and prints,
per layer, the bootstraps each stage needs in windows of ``--window`` levels, and the planner's
plan of one layer's main chain. ``serve`` runs the server (layers and head); ``keygen`` makes
the client's keys for the server's spec and uploads the evaluation keys once; ``query`` sends one
encrypted request per text and decrypts the reply. The client's ``--model`` is a built-in name or
the client folder of ``save_pretrained`` (embedding tables and tokenizer).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

MODEL_HELP = (
    "minilm-rt-probe, minilm2-rt, minilm2-rt-probe, or minilm-rt (CipherPrune's fine-tuned "
    "MiniLM, after `privformer cipherprune train`)"
)


def cmd_run(args: argparse.Namespace) -> int:
    import privformer as pf

    model = pf.load(args.model, protocol="nexus", operators=args.operators, tokens=args.tokens)
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

    model = pf.load(args.model, protocol="nexus", tokens=args.tokens)
    clf = model.classifier
    slots = args.slots
    backend = FloatBackend(
        slots,
        args.window,
        complex_packing=not args.no_complex_packing,
        pair_level_loss=0 if args.pair_level else 1,
        sparse_periods=(clf.tokens,) if args.sparse_bootstrap else (),
    )
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
                    "sparse": backend.sparse_bootstraps,
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
    sparse = f" ({backend.sparse_bootstraps} sparse-slot)" if args.sparse_bootstrap else ""
    print(f"total: {backend.bootstraps} bootstraps{sparse}; logits {np.round(logits, 4).tolist()}")
    print("\nthe planner's plan of one layer's main chain (side chains not included):")
    print(best.table())
    return 0


def _server_classifier(model: str, layers: int | None, tokens: int | None):
    import dataclasses
    from pathlib import Path

    import privformer as pf

    if Path(model).is_dir():
        if tokens is not None:
            raise SystemExit("--tokens is for built-in models; a saved folder keeps its own")
        loaded = pf.load(model, protocol="nexus")
    else:
        loaded = pf.load(model, protocol="nexus", tokens=tokens or 128)
    clf = loaded.classifier
    if layers is not None:
        if not 0 <= layers <= len(clf.layers):
            raise SystemExit(f"--layers must be 0..{len(clf.layers)}")
        clf = dataclasses.replace(clf, layers=clf.layers[:layers], configs=clf.configs[:layers])
    return loaded.name, clf


def stage_printer(stages: int) -> Callable[[int, str, int, float], None]:
    """The server's progress: a bar per query (``stages`` long) and one line per stage with
    its seconds and the bootstraps so far, so a long run leaves its timings in the log."""
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def progress(layer: int, stage: str, bootstraps: int, seconds: float) -> None:
        if "bar" not in bar or bar["bar"].n >= stages:
            bar["bar"] = tqdm(total=stages, desc="encrypted query", unit="stage")
            bar["last"] = 0.0
        bar["bar"].write(
            f"layer {layer} {stage}: {seconds - bar['last']:.1f} s, {bootstraps} bootstraps so far"
        )
        bar["last"] = seconds
        bar["bar"].set_postfix_str(f"layer {layer}: {stage}, {bootstraps} bootstraps")
        bar["bar"].update(1)

    return progress


def cmd_serve(args: argparse.Namespace) -> int:
    from privformer.models.registry import cache_dir
    from privformer.protocols.nexus.service import BackendChoice, NexusServer
    from privformer.transport.http_server import ServerLimits
    from privformer.transport.nexus_http import run_nexus_server

    name, clf = _server_classifier(args.model, args.layers, args.tokens)
    chain = (("sparse_periods", [clf.tokens]),) if args.sparse_bootstrap else ()
    choice = BackendChoice(args.backend, preset=args.preset, chain=chain)
    keys_dir = args.keys_dir or cache_dir() / "nexus-server-keys"
    server = NexusServer(clf, keys_dir, choice, name=name, max_loaded=args.max_loaded)
    stages = 10 * len(clf.layers)  # a layer's stages (layer.encrypted_layer's clock)
    progress = stage_printer(stages)
    run_nexus_server(
        server,
        host=args.host,
        port=args.port,
        ready_file=args.ready_file,
        limits=ServerLimits(request_timeout_s=args.request_timeout),
        progress=progress if stages else None,
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from privformer.protocols.nexus.service import NexusClient, choice_from_spec
    from privformer.transport.nexus_http import NexusHttpClient

    keys = Path(args.keys)
    with NexusHttpClient(args.server) as http:
        spec = http.spec()
        choice = choice_from_spec(spec)
        print(f"making {choice.kind} keys for {spec['model']} ({spec['slots']} slots) in {keys}")
        sizes = NexusClient.make_keys(spec, keys)
        total = sum(sizes.values())
        print(f"evaluation keys: {total / 1e6:.1f} MB ({', '.join(sizes)}); secret key stays here")
        if args.no_upload:
            return 0
        with tqdm(total=total, unit="B", unit_scale=True, desc="uploading keys") as bar:
            key_id = http.upload_keys(keys / NexusClient.EVAL_DIR, bar.update)
    print(f"key id {key_id}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from privformer.protocols.nexus.service import NexusClient
    from privformer.transport.nexus_http import NexusHttpClient

    with NexusHttpClient(args.server) as http:
        spec = http.spec()
        if Path(args.model).is_dir():
            client = NexusClient.from_folder(Path(args.model), spec)
        else:
            import privformer as pf

            loaded = pf.load(args.model, protocol="nexus", tokens=int(spec["tokens"]))
            c = loaded.classifier
            client = NexusClient(c.tables, loaded.tokenizer, spec, c.tokens, c.pad_id)
        client.open_keys(args.keys)
        rows = []
        for text in args.text:
            start = time.perf_counter()
            request = client.request(text, output=args.output)
            reply = client.read_reply(http.classify(request))
            rows.append(
                {
                    "text": text,
                    "label": reply.label,
                    "scores": reply.scores.tolist(),
                    "output": reply.output,
                    "seconds": time.perf_counter() - start,
                    "server_seconds": reply.server_seconds,
                    "bootstraps": reply.bootstraps,
                    "bytes_up": len(request),
                }
            )
    if args.json:
        print(json.dumps({"results": rows}))
        return 0
    for row in rows:
        scores = ", ".join(f"{v:+.4f}" for v in row["scores"])
        print(
            f"{row['text']!r}: class {row['label']} ({row['output']} {scores}; "
            f"{row['seconds']:.1f} s, {row['bootstraps']} bootstraps)"
        )
    return 0


TOKENS_HELP = (
    "positions of the encrypted layout, a power of two (longer texts are truncated): fewer "
    "positions, fewer ciphertexts"
)


SPARSE_HELP = (
    "bootstrap per-token ciphertexts (LayerNorm's) as sparse-packed ones of `tokens` slots, "
    "with their own bootstrapping keys (OpenFHE; docs/nexus.md)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    nexus = sub.add_parser("nexus", help="NEXUS: non-interactive CKKS inference")
    cmds = nexus.add_subparsers(dest="nexus_command", required=True)
    run = cmds.add_parser("run", help="classify texts in plain or simulate mode, in this process")
    run.add_argument("text", nargs="+")
    run.add_argument(
        "--model",
        default="minilm-rt-probe",
        help=MODEL_HELP,
    )
    run.add_argument("--mode", default="simulate", choices=["plain", "simulate", "private"])
    run.add_argument("--operators", default="depth-aware", choices=["depth-aware", "paper"])
    run.add_argument("--tokens", type=int, default=128, help=TOKENS_HELP)
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=cmd_run)
    plan = cmds.add_parser("plan", help="bootstraps per layer and stage, and the planner's plan")
    plan.add_argument("text")
    plan.add_argument(
        "--model",
        default="minilm-rt-probe",
        help=MODEL_HELP,
    )
    plan.add_argument("--window", type=int, default=7, help="levels a bootstrap leaves")
    plan.add_argument(
        "--bootstrap-seconds",
        type=float,
        default=78.0,
        help="one bootstrap's time for the plan's total (OpenFHE's default chain on 2 cores, "
        "measured: docs/nexus.md)",
    )
    plan.add_argument(
        "--slots", type=int, default=32768, help="slots per ciphertext (ring 2^16: 32768)"
    )
    plan.add_argument("--tokens", type=int, default=128, help=TOKENS_HELP)
    plan.add_argument(
        "--no-complex-packing",
        action="store_true",
        help="one ciphertext per bootstrap (default: two, packed as a + i b)",
    )
    plan.add_argument(
        "--pair-level",
        action="store_true",
        help="both halves of a pair keep whole windows (OpenFHE's pair_level chain)",
    )
    plan.add_argument("--sparse-bootstrap", action="store_true", help=SPARSE_HELP)
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)

    serve = cmds.add_parser("serve", help="run the NEXUS server (encoder layers and head)")
    serve.add_argument("model", help="a built-in NEXUS model or a save_pretrained folder")
    serve.add_argument("--backend", default="openfhe", choices=["openfhe", "seal"])
    serve.add_argument(
        "--preset", default="test-small", help="SEAL preset (--backend seal: no bootstrapping)"
    )
    serve.add_argument(
        "--layers",
        type=int,
        default=None,
        help="serve only the first N encoder layers (transport tests; accuracy is not kept)",
    )
    serve.add_argument("--tokens", type=int, default=None, help=TOKENS_HELP + " (default 128)")
    serve.add_argument("--sparse-bootstrap", action="store_true", help=SPARSE_HELP)
    serve.add_argument("--keys-dir", default=None, help="where uploaded key sets are kept")
    serve.add_argument("--max-loaded", type=int, default=1, help="key sets kept in memory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds to receive a request"
    )
    serve.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    keygen = cmds.add_parser("keygen", help="make keys for a server and upload its evaluation keys")
    keygen.add_argument("--server", required=True, help="the server's URL")
    keygen.add_argument("--keys", required=True, help="folder for the keys (secret key included)")
    keygen.add_argument("--no-upload", action="store_true", help="make the keys only")
    keygen.set_defaults(func=cmd_keygen)

    query = cmds.add_parser("query", help="classify texts through a NEXUS server, encrypted")
    query.add_argument("--server", required=True, help="the server's URL")
    query.add_argument("--keys", required=True, help="keygen's folder")
    query.add_argument(
        "--model", required=True, help="a built-in name or save_pretrained's client folder"
    )
    query.add_argument("--text", nargs="+", required=True)
    query.add_argument(
        "--return",
        dest="output",
        default="argmax",
        choices=["argmax", "logits"],
        help="the encrypted one-hot argmax (NEXUS's reply) or [CLS]'s logits",
    )
    query.add_argument("--json", action="store_true", help="print one JSON object")
    query.set_defaults(func=cmd_query)

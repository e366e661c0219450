"""``privformer stip ...``: the STIP commands, one per role.

privformer stip export MODEL --out DIR [--scheme v1|v2] [--force]   (model developer)
privformer stip serve DIR [--host H] [--port P] [limits]            (cloud)
privformer stip query USER_DIR --server URL (--text T ... | --prompt P)  (user)
privformer stip audit EXPORT_DIR [--reference MODEL] [--texts FILE]     (auditor)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privformer.errors import InputError


def cmd_export(args: argparse.Namespace) -> int:
    from privformer.protocols.stip.export import export

    result = export(
        args.model, args.out, scheme=args.scheme, overwrite=args.force, tokenizer=args.tokenizer
    )
    print(f"cloud checkpoint: {result.cloud_dir}  (give this folder to the cloud)")
    print(f"user bundle:      {result.user_dir}  (give this folder to users; it holds the key)")
    print(f"model fingerprint {result.fingerprint}  scheme {result.scheme}  {result.seconds:.1f} s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from privformer.protocols.stip.cloud import CloudLimits
    from privformer.transport.stip_server import ServerLimits, run_stip_server

    run_stip_server(
        args.dir,
        host=args.host,
        port=args.port,
        ready_file=args.ready_file,
        limits=ServerLimits(
            max_body_bytes=args.max_body_bytes,
            max_connections=args.max_connections,
            request_timeout_s=args.request_timeout,
            idle_timeout_s=args.idle_timeout,
        ),
        cloud_limits=CloudLimits(
            max_batch_tokens=args.max_batch_tokens,
            max_reply_bytes=args.max_reply_bytes,
            max_sessions=args.max_sessions,
            max_sessions_per_client=args.max_sessions_per_client,
            session_ttl_s=args.session_ttl,
            max_cache_bytes=args.max_cache_bytes,
        ),
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from privformer.transport.stip_client import StipClient

    if args.timeout <= 0:
        raise InputError(f"--timeout must be positive, got {args.timeout}")
    with StipClient(args.user_dir, args.server, timeout_s=args.timeout) as client:
        if client.user.is_decoder:
            if args.prompt is None:
                raise InputError("this model is a decoder: pass --prompt")
            gen = client.generate(
                args.prompt, args.max_new_tokens, chat=args.chat, stop_at_eos=not args.no_eos_stop
            )
            result = {"prompt": args.prompt, "token_ids": gen.token_ids, "text": gen.text}
        else:
            if not args.text:
                raise InputError("this model is an encoder: pass --text (one or more)")
            emb = client.sentence_embeddings(args.text)
            result = {"texts": args.text, "embeddings": emb.tolist()}
        result["wire"] = vars(client.stats)
    if args.json:
        print(json.dumps(result))
    elif "text" in result:
        print(result["text"])
    else:
        for text, vec in zip(result["texts"], result["embeddings"], strict=True):
            print(f"{text!r}: [{', '.join(f'{v:+.4f}' for v in vec[:6])}, ...] ({len(vec)} dims)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from privformer.cli.stip_audit import format_report, run_audit

    texts = None
    if args.texts:
        lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
        texts = [line.strip() for line in lines if line.strip()]
    result = run_audit(args.export_dir, args.reference, texts)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("dir", help="the export's cloud/ folder (or the export folder)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--ready-file", help="write the bound port here once listening")
    from privformer.protocols.stip.cloud import CloudLimits
    from privformer.transport.stip_server import ServerLimits

    http, cloud = ServerLimits(), CloudLimits()
    limits = [
        ("--max-body-bytes", int, http.max_body_bytes, "request body size (413 beyond)"),
        ("--max-connections", int, http.max_connections, "connections and tasks (503 beyond)"),
        ("--request-timeout", float, http.request_timeout_s, "seconds to send a request"),
        ("--idle-timeout", int, http.idle_timeout_s, "seconds a kept-alive idle connection lives"),
        ("--max-batch-tokens", int, cloud.max_batch_tokens, "batch x tokens per forward (422)"),
        ("--max-reply-bytes", int, cloud.max_reply_bytes, "reply size (413 beyond)"),
        ("--max-sessions", int, cloud.max_sessions, "open decoder sessions in total (429)"),
        ("--max-sessions-per-client", int, cloud.max_sessions_per_client, "per address (429)"),
        ("--session-ttl", float, cloud.session_ttl_s, "seconds an unused session lives (404)"),
        ("--max-cache-bytes", int, cloud.max_cache_bytes, "KV cache of all sessions (429)"),
    ]
    for flag, kind, default, text in limits:
        serve.add_argument(flag, type=kind, default=default, help=f"{text}; default {default}")


def add_query_arguments(query: argparse.ArgumentParser) -> None:
    query.add_argument("user_dir", help="the export's user/ folder")
    query.add_argument("--server", default="http://127.0.0.1:8000")
    query.add_argument("--text", nargs="+", help="sentences to embed (encoder models)")
    query.add_argument("--prompt", help="prompt to continue (decoder models)")
    query.add_argument("--max-new-tokens", type=int, default=20)
    query.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each reply (default 120)"
    )
    query.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    query.add_argument("--no-eos-stop", action="store_true", help="generate past end-of-sequence")
    query.add_argument("--json", action="store_true", help="print one JSON object")


def add_parser(sub: argparse._SubParsersAction) -> None:
    stip = sub.add_parser("stip", help="STIP: permutation-obfuscated inference (3 roles)")
    cmds = stip.add_subparsers(dest="stip_command", required=True)
    exp = cmds.add_parser(
        "export", help="developer: write the permuted cloud checkpoint and user bundle"
    )
    exp.add_argument("model", help="embedded model name, random:NAME, or a local HF model folder")
    exp.add_argument("--out", required=True, help="output folder (gets cloud/ and user/)")
    exp.add_argument("--scheme", default="v2", choices=["v1", "v2"])
    exp.add_argument("--force", action="store_true", help="replace an existing export")
    exp.add_argument(
        "--tokenizer", help="folder of the tokenizer to ship (default: the model folder's own)"
    )
    exp.set_defaults(func=cmd_export)
    serve = cmds.add_parser("serve", help="cloud: serve a permuted checkpoint over HTTP")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    aud = cmds.add_parser("audit", help="measure what the cloud learns from an export")
    aud.add_argument("export_dir", help="the export folder (cloud/ and user/)")
    aud.add_argument("--reference", help="a public model the cloud may hold (name or folder)")
    aud.add_argument("--texts", help="a file of texts, one per line (default: 40 RT sentences)")
    aud.add_argument("--json", action="store_true", help="print one JSON object")
    aud.set_defaults(func=cmd_audit)
    query = cmds.add_parser("query", help="user: query a STIP server with your key")
    add_query_arguments(query)
    query.set_defaults(func=cmd_query)

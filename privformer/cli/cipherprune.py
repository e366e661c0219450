"""``privformer cipherprune ...``: the CipherPrune (2PC) commands.

privformer cipherprune train [--out DIR]                         (model owner, once: ~10 min CPU)
privformer cipherprune dealer --port P                           (dealer)
privformer cipherprune serve --dealer H:P [--model DIR] --port P (server: weights, thresholds)
privformer cipherprune classify TEXT --server H:P --dealer H:P   (client: the text)
privformer cipherprune run TEXT [--mode plain|simulate|encrypted] (all in one process)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privformer.errors import InputError, ModelNotFoundError
from privformer.protocols.cipherprune.format import BASES
from privformer.protocols.cipherprune.train import DEFAULT_LAMBDA


def _addr(text: str) -> tuple[str, int]:
    from privformer.transport.cipherprune import parse_address

    try:
        return parse_address(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_dir(arg: str | None) -> Path:
    from privformer.protocols.cipherprune.train import default_classifier_dir

    path = Path(arg) if arg else default_classifier_dir()
    if not (path / "weights.safetensors").is_file():
        raise ModelNotFoundError(
            f"no CipherPrune classifier in {path}: run `privformer cipherprune train` first"
        )
    return path


def _network(name: str | None, emulation: str = "sleep"):
    import dataclasses

    from privformer.crypto.mpc.channel import LAN, WAN

    model = {"lan": LAN, "wan": WAN, None: None}[name]
    return None if model is None else dataclasses.replace(model, emulation=emulation)


EMULATION = (
    "sleep: stretch each round to the link's time; delay: the link's rate is real (a shaped "
    "veth, transport.netns), add only its propagation delay"
)


def _cmd_train(args) -> int:
    from privformer.protocols.cipherprune.train import (
        build_classifier,
        default_classifier_dir,
        relearn_thresholds,
    )

    if args.thresholds_only:
        folder = args.out or str(default_classifier_dir(args.base))
        path = relearn_thresholds(_model_dir(folder), lam=args.lam, threshold_steps=args.steps)
    else:
        path = build_classifier(
            args.out, epochs=args.epochs, threshold_steps=args.steps, lam=args.lam, base=args.base
        )
    print(f"classifier with learned thresholds: {path}")
    print((path / "pruning.json").read_text())
    return 0


def _cmd_dealer(args) -> int:
    from privformer.transport.cipherprune import run_dealer

    run_dealer(
        args.host,
        args.port,
        args.ready_file,
        model_dir=_model_dir(args.model) if args.model else None,
        max_connections=args.max_connections,
        pair_timeout_s=args.pair_timeout,
    )
    return 0


def _cmd_serve(args) -> int:
    from privformer.transport.cipherprune import run_cipherprune_server

    run_cipherprune_server(
        _model_dir(args.model),
        args.dealer,
        args.host,
        args.port,
        args.ready_file,
        args.max_sessions,
        _network(args.network, args.emulation),
        max_concurrent=args.max_concurrent,
    )
    return 0


def _print_result(text: str, result, as_json: bool) -> None:
    total = result.stats.get("total", {})
    out = {
        "text": text,
        "label": result.label,
        "logits": result.logits.tolist(),
        "tokens_per_layer": result.trace.tokens_per_layer,
        "seconds": round(result.seconds, 3),
        "bytes_sent": total.get("bytes_sent"),
        "bytes_recv": total.get("bytes_recv"),
        "rounds": total.get("rounds"),
        "flight_bytes": total.get("flight_bytes"),
    }
    if as_json:
        print(json.dumps(out))
        return
    print(
        f"{text!r}: class {out['label']} (logits {', '.join(f'{v:+.3f}' for v in out['logits'])})"
    )
    print(f"tokens entering each layer: {out['tokens_per_layer']}  ({out['seconds']} s)")
    if total:
        setup = result.stats["per_op"].get("setup", {})
        session = setup.get("bytes_sent", 0) + setup.get("bytes_recv", 0)
        print(
            f"sent {total['bytes_sent']:,} B, received {total['bytes_recv']:,} B, "
            f"{total['rounds']} rounds ({session:,} B of it the once-per-session weight masks)"
        )


def _cmd_classify(args) -> int:
    from privformer.models.registry import load_tokenizer
    from privformer.protocols.cipherprune.session import encode_text
    from privformer.transport.cipherprune import classify_remote

    tokenizer = load_tokenizer(args.tokenizer)
    ids, mask = encode_text(args.text, args.max_length, tokenizer)
    network = _network(args.network, args.emulation)
    result = classify_remote(ids, mask, args.server, args.dealer, network, len(tokenizer))
    _print_result(args.text, result, args.json)
    return 0


def _cmd_run(args) -> int:
    from privformer.protocols.cipherprune.session import CipherPruneClassifier

    clf = CipherPruneClassifier.load(_model_dir(args.model))
    ids, mask = clf.encode(args.text, args.max_length)
    result = clf.run(
        ids,
        mask,
        args.mode,
        prune=not args.no_prune,
        network=_network(args.network, args.emulation),
    )
    _print_result(args.text, result, args.json)
    return 0


def add_parser(sub) -> None:
    cp = sub.add_parser("cipherprune", help="CipherPrune: 2PC BERT with token pruning")
    cmds = cp.add_subparsers(dest="cipherprune_command", required=True)

    train = cmds.add_parser(
        "train", help="fine-tune an encoder on Rotten Tomatoes, learn thresholds"
    )
    train.add_argument("--out", help="output folder (default: privformer's cache)")
    train.add_argument(
        "--base",
        default="minilm",
        choices=["minilm", "mpnet"],
        help="the encoder: MiniLM (6 layers, ~15 min on 2 cores) or MPNet (12 layers, BERT-base)",
    )
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--steps", type=int, default=150, help="threshold-learning steps")
    train.add_argument(
        "--lam", type=float, default=DEFAULT_LAMBDA, help="weight of the cost penalty"
    )
    train.add_argument(
        "--thresholds-only",
        action="store_true",
        help="keep the fine-tuned weights of an existing classifier, learn new thresholds",
    )
    train.set_defaults(func=_cmd_train)

    dealer = cmds.add_parser("dealer", help="serve correlated randomness to sessions")
    dealer.add_argument("--host", default="127.0.0.1")
    dealer.add_argument("--port", type=int, default=7100, help="0 picks a free port")
    dealer.add_argument("--ready-file", help="write the bound port here once listening")
    dealer.add_argument(
        "--model",
        help="classifier folder whose shapes cap each request (default cap: BERT-base at 512)",
    )
    dealer.add_argument(
        "--max-connections", type=int, default=256, help="open connections at once (default 256)"
    )
    dealer.add_argument(
        "--pair-timeout",
        type=float,
        default=30.0,
        help="seconds a party waits for the other party of its session (default 30)",
    )
    dealer.set_defaults(func=_cmd_dealer)

    serve = cmds.add_parser("serve", help="server: hold the model and answer sessions")
    serve.add_argument("--model", help="classifier folder (default: the trained one in the cache)")
    serve.add_argument("--dealer", type=_addr, required=True, help="dealer HOST:PORT")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7200, help="0 picks a free port")
    serve.add_argument("--ready-file", help="write the bound port here once listening")
    serve.add_argument("--max-sessions", type=int, help="exit after this many sessions")
    serve.add_argument(
        "--max-concurrent",
        type=int,
        default=2,
        help="sessions run at once; more get a 'busy' error (default 2)",
    )
    serve.add_argument("--network", choices=["lan", "wan"], help="simulate a link (sleeps)")
    serve.add_argument("--emulation", choices=["sleep", "delay"], default="sleep", help=EMULATION)
    serve.set_defaults(func=_cmd_serve)

    for name, helptext, func in (
        ("classify", "client: classify a text against a server and dealer", _cmd_classify),
        ("run", "run one text in plain, simulate or encrypted mode in this process", _cmd_run),
    ):
        p = cmds.add_parser(name, help=helptext)
        p.add_argument("text")
        p.add_argument("--max-length", type=int, default=128, help="public padded length")
        p.add_argument("--network", choices=["lan", "wan"], help="simulate a link (sleeps)")
        p.add_argument("--emulation", choices=["sleep", "delay"], default="sleep", help=EMULATION)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "classify":
            p.add_argument("--server", type=_addr, required=True, help="server HOST:PORT")
            p.add_argument("--dealer", type=_addr, required=True, help="dealer HOST:PORT")
            p.add_argument(
                "--tokenizer",
                default="minilm",
                choices=sorted(BASES),
                help="the server's encoder, whose tokenizer the client uses",
            )
        else:
            p.add_argument("--model", help="classifier folder (default: the trained one)")
            p.add_argument(
                "--mode", default="encrypted", choices=["plain", "simulate", "encrypted"]
            )
            p.add_argument("--no-prune", action="store_true", help="run without pruning")
        p.set_defaults(func=func)

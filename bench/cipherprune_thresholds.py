"""How much CipherPrune prunes at a padded length, and what it costs in accuracy, as a function
of the threshold-learning budget (lambda, steps).

For each (lambda, steps) it learns fresh thresholds for the saved fine-tuned classifier (the
classifier's folder is not touched), then reports, on the first ``--eval-size`` IMDB test
reviews that fill the length, in simulate mode (the executor 2PC mirrors): accuracy against
plain mode and mean tokens entering each layer, pruned and pruned + reduced. With
``--secure``, one 2PC run of the pruned + reduced configuration on the first such review (in
process, over localhost) gives bytes, rounds and the LAN/WAN model, and a speedup against the
unpruned row of ``--baseline`` (a results file of ``bench/cipherprune.py`` with the unpruned
run at that length).

    python bench/cipherprune_thresholds.py --model mpnet --grid 0.1:50,1.0:150 --secure \
        --baseline bench/results/cipherprune_mpnet_512.json

Prints a table and writes ``bench/results/cipherprune_thresholds_<model>_<n>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cipherprune import PADDED, long_reviews, no_reduction, secure_row  # noqa: E402
from common import machine, print_table, write_results  # noqa: E402

from privformer import data  # noqa: E402
from privformer.models.registry import load_tokenizer  # noqa: E402
from privformer.protocols.cipherprune import train as tr  # noqa: E402
from privformer.protocols.cipherprune.format import load_classifier  # noqa: E402
from privformer.protocols.cipherprune.session import CipherPruneClassifier  # noqa: E402
from privformer.protocols.cipherprune.train import LONG_N  # noqa: E402


def parse_grid(text: str) -> list[tuple[float, int]]:
    """``"0.1:50,1.0:150"`` -> [(0.1, 50), (1.0, 150)]."""
    out = []
    for item in text.split(","):
        lam, steps = item.split(":")
        out.append((float(lam), int(steps)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mpnet", choices=["minilm", "mpnet"])
    ap.add_argument("--tokens", type=int, default=LONG_N)
    ap.add_argument("--grid", default="0.1:50,1.0:150", help="lambda:steps,...")
    ap.add_argument("--eval-size", type=int, default=200, help="IMDB test reviews that fill n")
    ap.add_argument("--secure", action="store_true", help="one 2PC pruned+reduced run each")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="results of bench/cipherprune.py holding the unpruned run at --tokens",
    )
    args = ap.parse_args()
    n = args.tokens
    start = time.time()
    model_dir = tr.build_classifier(base=args.model)
    w, _saved = load_classifier(model_dir)
    tok = load_tokenizer(args.model)
    train, test = data.imdb_split()
    long = long_reviews(test, n, args.eval_size, tok)
    base = None
    if args.baseline is not None:
        runs = json.loads(args.baseline.read_text())["runs"]
        base = next(r for r in runs if r["tokens"] == n and r["config"] == PADDED)
    plain = tr.evaluate(w, tok, long, None, "plain", n=n, desc="plain")
    results = []
    for lam, steps in parse_grid(args.grid):
        learn_start = time.perf_counter()
        pruning = tr.learn_thresholds(w, tok, train, n=n, lam=lam, steps=steps, batch=2)
        row: dict = {"lambda": lam, "steps": steps, "pruning": pruning.__dict__}
        row["learn_s"] = time.perf_counter() - learn_start
        row["accuracy"], row["out_of_range"], row["tokens_per_layer"] = {}, {}, {}
        for name, config in (("pruned", no_reduction(pruning)), ("pruned+reduced", pruning)):
            ev = tr.evaluate(w, tok, long, config, "simulate", n=n, desc=f"simulate {name}")
            row["accuracy"][name] = ev.accuracy
            row["out_of_range"][name] = ev.out_of_range
            row["tokens_per_layer"][name] = ev.tokens_per_layer
        if args.secure:
            clf = CipherPruneClassifier(w, pruning, tok)
            secure = secure_row(clf, "pruned+reduced", [long[0][0]], n, pruning)
            row["secure"] = secure
            if base is not None:
                row["speedup_LAN_model"] = base["LAN_s"] / secure["LAN_s"]
                row["speedup_WAN_model"] = base["WAN_s"] / secure["WAN_s"]
                row["speedup_bytes"] = base["online_MB"] / secure["online_MB"]
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "pruning"}, default=str)[:2000])
    table = []
    for r in results:
        pr = r["tokens_per_layer"]["pruned+reduced"]
        table.append(
            {
                "lambda": r["lambda"],
                "steps": r["steps"],
                "learn s": r["learn_s"],
                "acc plain": plain.accuracy,
                "acc pruned": r["accuracy"]["pruned"],
                "acc pruned+reduced": r["accuracy"]["pruned+reduced"],
                "tokens per layer": "-".join(f"{t:.0f}" for t in pr),
                "LAN speedup (model)": r.get("speedup_LAN_model", ""),
            }
        )
    print_table(f"{args.model} thresholds at {n} tokens", table, list(table[0]))
    write_results(
        f"cipherprune_thresholds_{args.model}_{n}",
        {
            "benchmark": "cipherprune_thresholds",
            "machine": machine(),
            "model": args.model,
            "classifier": str(model_dir),
            "tokens": n,
            "eval_reviews": len(long),
            "plain_accuracy": plain.accuracy,
            "baseline": base and {k: base[k] for k in ("LAN_s", "WAN_s", "online_MB", "rounds")},
            "rows": results,
            "seconds": time.time() - start,
        },
    )


if __name__ == "__main__":
    main()

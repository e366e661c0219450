"""CipherPrune benchmark: 2PC BERT inference unpruned vs pruned vs pruned + reduced.

Uses the MiniLM classifier fine-tuned on Rotten Tomatoes with learned thresholds (built by
``privformer cipherprune train`` if missing, ~10 minutes). For 128 tokens (Rotten Tomatoes test
sentences padded to 128) and 512 tokens (IMDB test reviews, truncated to 512) it measures:

- time, bytes and rounds of the 2PC run, unpruned / pruned (every kept token accurate) /
  pruned + reduced (learned high threshold), and the two compactions (shuffle vs swap);
- tokens entering each layer;
- test accuracy in plain mode and in simulate mode with and without pruning (the whole 1,066-
  sentence test split at 128 tokens; the first IMDB test reviews at 512);
- modelled time on the paper's LAN (3 Gbps, 0.8 ms) and WAN (200 Mbps, 40 ms): the measured
  localhost wall time plus one RTT per round plus the bytes at the bandwidth cap;
- BERT-base shapes (random weights) at 128 tokens, unpruned and pruned.

Both parties and the dealer run as threads of this process over localhost TCP, sharing the
machine's cores; the weight-mask setup (once per session) is reported apart from the online
phase, as CrypTen and SPU report their offline phase apart.

    python bench/cipherprune.py [--texts K] [--eval-size N] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer import data  # noqa: E402
from privformer.crypto.mpc.channel import LAN, WAN  # noqa: E402
from privformer.models.registry import load_tokenizer  # noqa: E402
from privformer.protocols.cipherprune import train as tr  # noqa: E402
from privformer.protocols.cipherprune.format import load_classifier  # noqa: E402
from privformer.protocols.cipherprune.model import (  # noqa: E402
    BertClassifierWeights,
    PruningConfig,
)
from privformer.protocols.cipherprune.session import CipherPruneClassifier, encode_text  # noqa: E402

PAPER = {"speedup_128": 6.1, "speedup_512": 10.6, "accuracy_drop_points": 0.35}


def online(stats: dict) -> dict:
    """Totals minus the once-per-session weight-mask setup."""
    tot, setup = stats["total"], stats["per_op"].get("setup", {})
    return {k: tot[k] - setup.get(k, 0) for k in tot}


def secure_row(
    clf: CipherPruneClassifier, name: str, texts: list[str], n: int, pruning: PruningConfig
) -> dict:
    clf.pruning = pruning
    runs, agree = [], []
    for text in texts:
        ids, mask = encode_text(text, n, clf.tokenizer)
        runs.append(clf.run(ids, mask, "encrypted", prune=True))
        sim = clf.run(ids, mask, "simulate", prune=True)
        # the 2PC run must keep as many tokens per layer and predict the same class as simulate
        agree.append(
            sim.label == runs[-1].label
            and sim.trace.tokens_per_layer == runs[-1].trace.tokens_per_layer
            and sim.trace.high_per_layer == runs[-1].trace.high_per_layer
        )
    k = len(runs)
    on = [online(r.stats) for r in runs]
    wall = sum(r.seconds for r in runs) / k
    mb = sum(o["bytes_sent"] + o["bytes_recv"] for o in on) / k / 1e6
    rounds = sum(o["rounds"] for o in on) / k
    lan = wall + sum(LAN.time(o) for o in on) / k
    wan = wall + sum(WAN.time(o) for o in on) / k
    setup = runs[0].stats["per_op"].get("setup", {})
    return {
        "config": name,
        "tokens": n,
        "wall_s": wall,
        "online_MB": mb,
        "rounds": rounds,
        "LAN_s": lan,
        "WAN_s": wan,
        "setup_MB": (setup.get("bytes_sent", 0) + setup.get("bytes_recv", 0)) / 1e6,
        "tokens_per_layer": [
            sum(c) / k for c in zip(*(r.trace.tokens_per_layer for r in runs), strict=True)
        ],
        "high_per_layer": [
            sum(c) / k for c in zip(*(r.trace.high_per_layer for r in runs), strict=True)
        ],
        "per_op_MB": {
            op: sum(
                (
                    r.stats["per_op"].get(op, {}).get("bytes_sent", 0)
                    + r.stats["per_op"].get(op, {}).get("bytes_recv", 0)
                )
                for r in runs
            )
            / k
            / 1e6
            for op in sorted({op for r in runs for op in r.stats["per_op"]})
        },
        "per_op_rounds": {
            op: sum(r.stats["per_op"].get(op, {}).get("rounds", 0) for r in runs) / k
            for op in sorted({op for r in runs for op in r.stats["per_op"]})
        },
        "per_op_s": {
            op: sum(r.stats["seconds"].get(op, 0.0) for r in runs) / k
            for op in sorted({op for r in runs for op in r.stats["seconds"]})
        },
        "labels": [r.label for r in runs],
        "agrees_with_simulate": all(agree),
    }


def no_reduction(p: PruningConfig) -> PruningConfig:
    """Same keep thresholds, every kept token accurate (high threshold = keep threshold)."""
    return PruningConfig(list(p.keep), list(p.keep), p.compaction)


def with_compaction(p: PruningConfig, method: str) -> PruningConfig:
    return PruningConfig(list(p.keep), list(p.high), method)


def speedups(rows: list[dict]) -> dict:
    base = {r["tokens"]: r for r in rows if r["config"] == "unpruned"}
    out = {}
    for r in rows:
        b = base[r["tokens"]]
        if r is b:
            continue
        out[f"{r['config']}@{r['tokens']}"] = {
            "LAN": b["LAN_s"] / r["LAN_s"],
            "WAN": b["WAN_s"] / r["WAN_s"],
            "bytes": b["online_MB"] / r["online_MB"],
            "wall": b["wall_s"] / r["wall_s"],
        }
    return out


def accuracy_rows(w, tok, data, n, pruning, label) -> list[dict]:
    rows = []
    for name, mode, prune in (
        ("plain", "plain", None),
        ("simulate", "simulate", None),
        ("simulate pruned", "simulate", no_reduction(pruning)),
        ("simulate pruned+reduced", "simulate", pruning),
    ):
        ev = tr.evaluate(w, tok, data, prune, mode, n=n, desc=f"{label} {name}")
        rows.append(
            {
                "data": label,
                "tokens": n,
                "mode": name,
                "accuracy": ev.accuracy,
                "examples": len(data),
                "mean_tokens_per_layer": ev.tokens_per_layer,
            }
        )
    return rows


def bert_base_rows(n: int, texts: list[str], tok) -> list[dict]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig()).eval()  # BERT-base shapes, random weights
    w = BertClassifierWeights.from_hf(bert, torch.nn.Linear(768, 2))
    clf = CipherPruneClassifier(w, PruningConfig.none(12), tok)
    rows = [secure_row(clf, "unpruned", texts, n, PruningConfig.none(12))]
    keep = [0.5 / n] * 12  # random attention is near uniform: this drops padding, little else
    rows.append(secure_row(clf, "pruned", texts, n, PruningConfig(keep, keep)))
    for r in rows:
        r["model"] = "BERT-base shapes (random)"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2, help="2PC runs per configuration")
    ap.add_argument(
        "--eval-size", type=int, default=data.TEST_SIZE, help="accuracy examples at 128"
    )
    ap.add_argument("--imdb-eval-size", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="skip 512 tokens and BERT-base")
    args = ap.parse_args()

    start = time.time()
    model_dir = tr.build_classifier()
    w, pruning128 = load_classifier(model_dir)
    pruning512 = PruningConfig.from_json((model_dir / "pruning-512.json").read_text())
    tok = load_tokenizer("minilm")
    clf = CipherPruneClassifier(w, pruning128, tok)
    _train, test = data.rotten_tomatoes_split()
    imdb_test = data.imdb_split()[1]

    rows = []
    texts128 = [t for t, _ in test[: args.texts]]
    for name, p in (
        ("unpruned", PruningConfig.none(w.layers)),
        ("pruned", no_reduction(pruning128)),
        ("pruned+reduced", pruning128),
        ("pruned+reduced, swap", with_compaction(pruning128, "swap")),
    ):
        rows.append(secure_row(clf, name, texts128 if "swap" not in name else texts128[:1], 128, p))
    if not args.quick:
        texts512 = [t for t, _ in imdb_test[: max(1, args.texts // 2)]]
        for name, p in (
            ("unpruned", PruningConfig.none(w.layers)),
            ("pruned", no_reduction(pruning512)),
            ("pruned+reduced", pruning512),
            ("pruned+reduced, swap", with_compaction(pruning512, "swap")),
        ):
            rows.append(secure_row(clf, name, texts512[:1] if "swap" in name else texts512, 512, p))
    for r in rows:
        r["model"] = "MiniLM (fine-tuned)"
    base_rows = [] if args.quick else bert_base_rows(128, texts128[:1], tok)

    acc = accuracy_rows(w, tok, test[: args.eval_size], 128, pruning128, "rotten_tomatoes")
    if not args.quick:
        acc += accuracy_rows(w, tok, imdb_test[: args.imdb_eval_size], 512, pruning512, "imdb")

    cols = [
        "model",
        "config",
        "tokens",
        "wall_s",
        "online_MB",
        "rounds",
        "LAN_s",
        "WAN_s",
        "setup_MB",
        "agrees_with_simulate",
    ]
    print_table("2PC runs (per input; LAN/WAN = wall + modelled network)", rows + base_rows, cols)
    print_table(
        "tokens entering each layer",
        rows + base_rows,
        ["model", "config", "tokens", "tokens_per_layer"],
    )
    prune_rows = [
        {
            "config": r["config"],
            "tokens": r["tokens"],
            "prune_rounds": r["per_op_rounds"].get("prune"),
            "prune_MB": r["per_op_MB"].get("prune"),
            "prune_s": r["per_op_s"].get("prune"),
        }
        for r in rows
        if "prune" in r["per_op_rounds"]
    ]
    print_table(
        "token removal (importance, comparisons, compaction)",
        prune_rows,
        ["config", "tokens", "prune_rounds", "prune_MB", "prune_s"],
    )
    print_table("accuracy", acc, ["data", "tokens", "mode", "examples", "accuracy"])
    sp = speedups(rows)
    print_table(
        "speedup over unpruned 2PC",
        [{"run": k, **v} for k, v in sp.items()],
        ["run", "LAN", "WAN", "bytes", "wall"],
    )
    payload = {
        "machine": machine(),
        "paper": PAPER,
        "classifier": w.meta,
        "pruning_128": pruning128.__dict__,
        "pruning_512": pruning512.__dict__,
        "networks": {
            m.name: {"rtt_s": m.rtt_s, "bandwidth_bps": m.bandwidth_bps} for m in (LAN, WAN)
        },
        "runs": rows,
        "bert_base_random": base_rows,
        "accuracy": acc,
        "speedups": sp,
        "seconds": time.time() - start,
    }
    print(f"\nwrote {write_results('cipherprune', payload)}")


if __name__ == "__main__":
    main()

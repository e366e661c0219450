"""CipherPrune benchmark: 2PC BERT inference against honest baselines, MiniLM and MPNet.

For each classifier (``--models``: the 6-layer MiniLM and the 12-layer MPNet, BERT-base shapes,
each fine-tuned on Rotten Tomatoes with learned thresholds; built by ``privformer cipherprune
train [--base mpnet]`` if missing) and each length (128 tokens: Rotten Tomatoes test sentences;
512 tokens: IMDB test reviews long enough to fill 512 tokens, so padding is not what is pruned):

- time, bytes and rounds of the 2PC run in six configurations: unpruned at the padded length (the
  paper's baseline); unpruned at the true length (it reveals the length, as pruning's counts
  do); pruned (every kept token accurate); pruned + reduced (learned high thresholds); pruned +
  reduced with a minimum kept count (``MIN_KEEP``: hides the length up to that count); and, for
  MiniLM, the paper's swap compaction;
- tokens entering each layer, and test accuracy (plain, simulate, simulate pruned, simulate
  pruned + reduced) on the whole Rotten Tomatoes test split and on long IMDB reviews;
- the paper's LAN (3 Gbps, 0.8 ms) and WAN (200 Mbps, 40 ms) by the analytic model (the
  localhost wall time plus RTT/2 per round plus the bytes at the cap) and, with ``--netns``,
  measured through network namespaces (``bench/cipherprune_netns.py``'s runner: client, server
  and dealer as processes, the link rate-capped by tc). A shaped run the model puts above
  ``--max-shaped-s`` is not run; its time comes from the model scaled by the measured/model ratio
  of the runs that were, and the row says so.

In the in-process runs both parties and the dealer are threads of this process over localhost
TCP; the weight-mask setup (once per session) is reported apart from the online phase, as CrypTen
and SPU report their offline phase apart.

    python bench/cipherprune.py [--models minilm,mpnet] [--lengths 128,512] [--texts K]
                                [--eval-size N] [--quick] [--netns] [--max-shaped-s 1800]
    python bench/cipherprune.py --combine PART.json [PART.json ...]
    python bench/cipherprune.py --markdown RESULTS.json    # the README's tables, runs nothing

A whole run writes bench/results/cipherprune.json; a partial one (``--models`` or ``--lengths`` a
subset) writes bench/results/cipherprune_<models>_<lengths>.json, and ``--combine`` merges such
parts (each keeps its machine and duration under ``parts``) into cipherprune.json, so the hours of
a whole run can be spread over several sittings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, scratch_dir, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer import data  # noqa: E402
from privformer.crypto.mpc.channel import LAN, WAN  # noqa: E402
from privformer.models.registry import load_tokenizer  # noqa: E402
from privformer.protocols.cipherprune import train as tr  # noqa: E402
from privformer.protocols.cipherprune.format import load_classifier  # noqa: E402
from privformer.protocols.cipherprune.model import (  # noqa: E402
    RSQRT_FORMS,
    PruningConfig,
)
from privformer.protocols.cipherprune.session import CipherPruneClassifier, encode_text  # noqa: E402
from privformer.protocols.cipherprune.train import LONG_N  # noqa: E402

PAPER = {"speedup_128": 6.1, "speedup_512": 10.6, "accuracy_drop_points": 0.35}
LABELS = {"minilm": "MiniLM-L6 (fine-tuned)", "mpnet": "MPNet-base (fine-tuned)"}
#: The minimum kept count per padded length: a quarter of the positions (70.6% of Rotten
#: Tomatoes test sentences are shorter than 32 tokens, so their counts reveal only "< 32").
MIN_KEEP = {128: 32, 512: 128}
PADDED, TRUE_LENGTH = "unpruned", "unpruned, true length"


def online(stats: dict) -> dict:
    """Totals minus the once-per-session weight-mask setup."""
    tot, setup = stats["total"], stats["per_op"].get("setup", {})
    return {k: tot[k] - setup.get(k, 0) for k in tot}


def true_length(text: str, n: int, tok) -> int:
    return len(tok(text, truncation=True, max_length=n)["input_ids"])


def long_reviews(reviews: list[tuple[str, int]], n: int, k: int, tok) -> list[tuple[str, int]]:
    """The first ``k`` reviews of at least ``n`` tokens."""
    out = []
    for text, label in reviews:
        if len(tok(text)["input_ids"]) >= n:
            out.append((text, label))
            if len(out) == k:
                break
    return out


def secure_row(
    clf: CipherPruneClassifier,
    name: str,
    texts: list[str],
    n: int,
    pruning: PruningConfig,
    at_true_length: bool = False,
) -> dict:
    """Mean cost of the 2PC run over ``texts`` padded to ``n`` (or cut to their true length)."""
    clf.pruning = pruning
    runs, agree, lengths = [], [], []
    for text in texts:
        lengths.append(true_length(text, n, clf.tokenizer) if at_true_length else n)
        ids, mask = encode_text(text, lengths[-1], clf.tokenizer)
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
    # the once-per-session weight masks are left out of the time as of the bytes
    setup_s = sum(r.stats["seconds"].get("setup", 0.0) for r in runs) / k
    wall = sum(r.seconds for r in runs) / k - setup_s
    mb = sum(o["bytes_sent"] + o["bytes_recv"] for o in on) / k / 1e6
    rounds = sum(o["rounds"] for o in on) / k
    lan = wall + sum(LAN.time(o) for o in on) / k
    wan = wall + sum(WAN.time(o) for o in on) / k
    setup = runs[0].stats["per_op"].get("setup", {})
    ops = sorted({op for r in runs for op in r.stats["per_op"]})
    return {
        "config": name,
        "tokens": n,
        "mean_length": sum(lengths) / k,
        "min_keep": pruning.min_keep,
        "wall_s": wall,
        "online_MB": mb,
        "rounds": rounds,
        "LAN_s": lan,
        "WAN_s": wan,
        "setup_MB": (setup.get("bytes_sent", 0) + setup.get("bytes_recv", 0)) / 1e6,
        "setup_s": setup_s,
        "tokens_per_layer": [
            sum(c) / k for c in zip(*(r.trace.tokens_per_layer for r in runs), strict=True)
        ],
        "high_per_layer": [
            sum(c) / k for c in zip(*(r.trace.high_per_layer for r in runs), strict=True)
        ],
        "per_op_MB": {
            op: sum(
                r.stats["per_op"].get(op, {}).get("bytes_sent", 0)
                + r.stats["per_op"].get(op, {}).get("bytes_recv", 0)
                for r in runs
            )
            / k
            / 1e6
            for op in ops
        },
        "per_op_rounds": {
            op: sum(r.stats["per_op"].get(op, {}).get("rounds", 0) for r in runs) / k for op in ops
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


def variant(p: PruningConfig, **change) -> PruningConfig:
    return PruningConfig(**{**p.__dict__, **change})


def configurations(model: str, pruning: PruningConfig, n: int) -> list[tuple[str, PruningConfig]]:
    """(name, pruning) of each 2PC run at padded length ``n`` (``TRUE_LENGTH`` cuts instead)."""
    layers = len(pruning.keep)
    rows = [
        (PADDED, PruningConfig.none(layers)),
        (TRUE_LENGTH, PruningConfig.none(layers)),
        ("pruned", no_reduction(pruning)),
        ("pruned+reduced", pruning),
        (f"pruned+reduced, min_keep={MIN_KEEP[n]}", variant(pruning, min_keep=MIN_KEEP[n])),
    ]
    if model == "minilm":  # the paper's compaction: one configuration shows its rounds' cost
        rows.append(("pruned+reduced, swap", variant(pruning, compaction="swap")))
    return rows


def speedups(rows: list[dict]) -> dict:
    """Each run against the padded unpruned run (the paper's baseline) and the true-length one."""
    out = {}
    for r in rows:
        key = (r["model"], r["tokens"])
        base = next(b for b in rows if (b["model"], b["tokens"]) == key and b["config"] == PADDED)
        true = next(
            b for b in rows if (b["model"], b["tokens"]) == key and b["config"] == TRUE_LENGTH
        )
        if r["config"] in (PADDED, TRUE_LENGTH):
            continue
        out[f"{r['model']}: {r['config']}@{r['tokens']}"] = {
            "LAN": base["LAN_s"] / r["LAN_s"],
            "WAN": base["WAN_s"] / r["WAN_s"],
            "bytes": base["online_MB"] / r["online_MB"],
            "wall": base["wall_s"] / r["wall_s"],
            "LAN_vs_true_length": true["LAN_s"] / r["LAN_s"],
            "WAN_vs_true_length": true["WAN_s"] / r["WAN_s"],
            **{
                f"{link}_measured": base[f"{link}_measured_s"] / r[f"{link}_measured_s"]
                for link in ("LAN", "WAN")
                if r.get(f"{link}_measured_s") and base.get(f"{link}_measured_s")
            },
        }
    return out


def accuracy_rows(w, tok, data, n, pruning, model, label) -> list[dict]:
    rows = []
    for name, mode, prune in (
        ("plain", "plain", None),
        ("simulate", "simulate", None),
        ("simulate pruned", "simulate", no_reduction(pruning)),
        ("simulate pruned+reduced", "simulate", pruning),
    ):
        ev = tr.evaluate(w, tok, data, prune, mode, n=n, desc=f"{model} {label} {name}")
        rows.append(
            {
                "model": LABELS[model],
                "data": label,
                "tokens": n,
                "mode": name,
                "accuracy": ev.accuracy,
                "examples": len(data),
                "out_of_range": ev.out_of_range,
                "mean_tokens_per_layer": ev.tokens_per_layer,
            }
        )
    return rows


def measure_shaped(
    model: str,
    model_dir: Path,
    rows: list[dict],
    texts: dict[int, list[str]],
    tok,
    max_shaped_s: float,
    rsqrt: str | None = None,
) -> list[dict]:
    """Run ``rows``' configurations through network namespaces (unshaped, LAN, WAN) and set
    ``{link}_measured_s`` on each row: measured where the analytic model puts the run under
    ``max_shaped_s``, else the model's time scaled by the mean measured/model ratio of that link
    (``{link}_source`` says which). Times are the client's whole session, weight masks included,
    since a shaped run cannot leave them out; speedups compare like with like."""
    import cipherprune_netns as cn

    work = scratch_dir(f"cipherprune-{model}-")
    folders: dict[str, Path] = {}
    jobs: dict[str, list] = {"none": [], "LAN": [], "WAN": []}
    for r in rows:
        if "same_run_as" in r:  # measured once, under the run it duplicates
            continue
        key = f"{r['config']}@{r['tokens']}"
        folders[key] = cn.server_folder(
            model_dir, r["pruning"], work / f"server-{len(folders)}", rsqrt
        )
        for text in texts[r["tokens"]]:
            n = true_length(text, r["tokens"], tok) if r["config"] == TRUE_LENGTH else r["tokens"]
            for link in jobs:
                if link == "none" or r[f"{link}_s"] <= max_shaped_s:
                    jobs[link].append((key, key, text, n))
    shaped = []
    for link, link_jobs in jobs.items():
        shaped += cn.run_link(link, folders, link_jobs, model)
    cn.add_model(shaped)
    for link in ("none", "LAN", "WAN"):
        ratios = [x["measured_over_model"] for x in shaped if x["link"] == link and "model_s" in x]
        ratio = sum(ratios) / len(ratios) if ratios else 1.0
        for r in rows:
            key = f"{r.get('same_run_as', r['config'])}@{r['tokens']}"
            got = [x for x in shaped if x["link"] == link and x["config"] == key]
            if got:
                r[f"{link}_measured_s"] = sum(x["seconds"] for x in got) / len(got)
                r[f"{link}_source"] = "measured"
            else:  # over max_shaped_s: the model, corrected by this link's measured runs
                base = [x for x in shaped if x["link"] == "none" and x["config"] == key]
                model_s = sum(x["seconds"] + cn.MODELS[link].time(x) for x in base) / len(base)
                r[f"{link}_measured_s"] = model_s * ratio
                r[f"{link}_source"] = (
                    f"model x {ratio:.2f} (measured/model of {len(ratios)} {link} runs)"
                    if ratios
                    else f"model (no {link} run measured to calibrate it)"
                )
    return shaped


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm,mpnet", help="comma-separated: minilm, mpnet")
    ap.add_argument(
        "--lengths", default=f"128,{LONG_N}", help=f"comma-separated padded lengths: 128, {LONG_N}"
    )
    ap.add_argument("--texts", type=int, default=2, help="2PC runs per configuration at 128")
    ap.add_argument(
        "--eval-size", type=int, default=data.TEST_SIZE, help="accuracy examples at 128"
    )
    ap.add_argument("--imdb-eval-size", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="128 tokens only (--lengths 128)")
    ap.add_argument("--netns", action="store_true", help="also run through network namespaces")
    ap.add_argument("--max-shaped-s", type=float, default=1800.0)
    ap.add_argument(
        "--rsqrt",
        choices=RSQRT_FORMS,
        help="LayerNorm's 2PC 1/sqrt (default: the classifier's own, saved with it)",
    )
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="PART",
        help="merge the results of partial runs (JSON files) into cipherprune.json; runs nothing",
    )
    ap.add_argument(
        "--markdown",
        metavar="RESULTS",
        help="print a results file as the README's Markdown tables; runs nothing",
    )
    args = ap.parse_args()
    args.models = args.models.split(",")
    args.lengths = [128] if args.quick else [int(n) for n in args.lengths.split(",")]
    for model in args.models:
        if model not in LABELS:
            ap.error(f"unknown model {model!r}: choose from {sorted(LABELS)}")
    for n in args.lengths:
        if n not in MIN_KEEP:
            ap.error(f"unknown length {n}: choose from {sorted(MIN_KEEP)}")
    return args


def measure(args: argparse.Namespace) -> dict:
    """The 2PC configurations, shaped runs and accuracy of ``args.models`` x ``args.lengths``."""
    start = time.time()
    _train, test = data.rotten_tomatoes_split()
    imdb_test = data.imdb_split()[1]
    rows, acc, shaped, classifiers = [], [], [], {}
    for model in args.models:
        model_dir = tr.build_classifier(base=model)
        w, pruning128 = load_classifier(model_dir)
        if args.rsqrt is not None:
            w.rsqrt = args.rsqrt
        pruning = {
            n: pruning128
            if n == 128
            else PruningConfig.from_json((model_dir / f"pruning-{n}.json").read_text())
            for n in args.lengths
        }
        tok = load_tokenizer(model)
        clf = CipherPruneClassifier(w, pruning128, tok)
        long = long_reviews(imdb_test, LONG_N, max(args.imdb_eval_size, 1), tok)
        texts = {
            128: [t for t, _ in test[: args.texts]],
            LONG_N: [t for t, _ in long[: max(1, args.texts // 2)]],
        }
        model_rows = []
        for n, p in pruning.items():
            for name, config in configurations(model, p, n):
                few = texts[n][:1] if "swap" in name else texts[n]
                if name == TRUE_LENGTH and all(true_length(t, n, tok) == n for t in few):
                    # the texts fill the padded length: the padded run is the true-length run
                    padded = next(
                        r for r in model_rows if r["tokens"] == n and r["config"] == PADDED
                    )
                    model_rows.append({**padded, "config": name, "same_run_as": PADDED})
                    continue
                row = secure_row(clf, name, few, n, config, at_true_length=name == TRUE_LENGTH)
                model_rows.append({"model": LABELS[model], **row, "pruning": config})
        if args.netns:
            shaped += measure_shaped(
                model, model_dir, model_rows, texts, tok, args.max_shaped_s, args.rsqrt
            )
        for r in model_rows:
            r["pruning"] = r["pruning"].__dict__
        rows += model_rows
        if 128 in pruning:
            acc += accuracy_rows(w, tok, test[: args.eval_size], 128, pruning128, model, "rotten")
        if LONG_N in pruning:
            acc += accuracy_rows(
                w, tok, long[: args.imdb_eval_size], LONG_N, pruning[LONG_N], model, "imdb long"
            )
        classifiers[model] = {"dir": str(model_dir), "meta": w.meta, "rsqrt": w.rsqrt}
        classifiers[model]["pruning"] = {n: p.__dict__ for n, p in pruning.items()}
    seconds, this_machine = time.time() - start, machine()
    return {
        "machine": this_machine,
        "paper": PAPER,
        "classifiers": classifiers,
        "min_keep": MIN_KEEP,
        "networks": {
            m.name: {"rtt_s": m.rtt_s, "bandwidth_bps": m.bandwidth_bps} for m in (LAN, WAN)
        },
        "runs": rows,
        "shaped_runs": shaped,
        "accuracy": acc,
        "speedups": speedups(rows),
        "seconds": seconds,
        "parts": [
            {
                "models": args.models,
                "lengths": args.lengths,
                "netns": args.netns,
                "machine": this_machine,
                "seconds": seconds,
            }
        ],
    }


def combine(paths: list[str]) -> dict:
    """One payload from the payloads of partial runs (each keeps its machine in ``parts``)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    out = {**parts[0], "classifiers": {}, "runs": [], "shaped_runs": [], "accuracy": []}
    out["parts"] = []
    for part in parts:
        for model, c in part["classifiers"].items():
            known = out["classifiers"].setdefault(model, {**c, "pruning": {}})
            known["pruning"].update(c["pruning"])
        for key in ("runs", "shaped_runs", "accuracy", "parts"):
            out[key] += part.get(key, [])
    forms = {c.get("rsqrt", "newton") for part in parts for c in part["classifiers"].values()}
    if len(forms) > 1:  # one table, one LayerNorm: rows of two rsqrt forms do not compare
        raise SystemExit(f"the parts ran different rsqrt forms {sorted(forms)}")
    covered = {(m, n) for p in out["parts"] for m in p["models"] for n in p["lengths"]}
    missing = sorted({(m, n) for m in LABELS for n in MIN_KEEP} - covered)
    if missing:  # cipherprune.json is the whole benchmark; a subset stays in its part files
        raise SystemExit(f"the parts lack (model, tokens) {missing}; run those first")
    out["speedups"] = speedups(out["runs"])
    out["seconds"] = sum(p["seconds"] for p in parts)
    out["machine"] = sorted({p["machine"]["cpu"] for p in out["parts"]})
    return out


def report(payload: dict, netns: bool) -> None:
    rows, acc = payload["runs"], payload["accuracy"]
    cols = ["model", "config", "tokens", "mean_length", "wall_s", "online_MB", "rounds"]
    cols += ["LAN_s", "WAN_s", "setup_MB", "setup_s", "agrees_with_simulate"]
    print_table("2PC runs (online, per input; LAN/WAN = wall + modelled network)", rows, cols)
    if netns:
        print_table(
            "through network namespaces (client's session, weight masks included)",
            rows,
            [
                "model",
                "config",
                "tokens",
                "none_measured_s",
                "LAN_measured_s",
                "WAN_measured_s",
                "WAN_source",
            ],  # fmt: skip
        )
    layer_cols = ["model", "config", "tokens", "tokens_per_layer"]
    print_table("tokens entering each layer", rows, layer_cols)
    prune_rows = [
        {
            "model": r["model"],
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
        ["model", "config", "tokens", "prune_rounds", "prune_MB", "prune_s"],
    )
    acc_cols = ["model", "data", "tokens", "mode", "examples", "accuracy", "out_of_range"]
    print_table("accuracy (inputs out of an approximation's range count as wrong)", acc, acc_cols)
    print_table(
        "speedup over unpruned 2PC (padded; and over the true-length run)",
        [{"run": k, **v} for k, v in payload["speedups"].items()],
        ["run", "LAN", "WAN", "LAN_vs_true_length", "WAN_vs_true_length", "bytes", "LAN_measured"],
    )


def _layers(counts: list[float]) -> str:
    """Tokens entering each layer, runs of one count written once: 128-30 x 11."""
    out: list[str] = []
    for count, run in itertools.groupby(counts):
        k, v = len(list(run)), f"{count:g}"
        out.append(f"{v} x {k}" if k >= 3 else "-".join([v] * k))
    return "-".join(out)


def markdown(payload: dict) -> str:
    """One table of runs per (model, length) and one of accuracy per model, in Markdown.

    Measured times are the client's whole session through the namespaces (weight masks
    included); a time the bench estimated (model x the link's measured/model ratio) is marked *.
    Speedups use the measured times, against the padded unpruned run and the true-length one."""
    runs = payload["runs"]
    lines: list[str] = []

    def cell(r: dict, link: str) -> str:
        value = r.get(f"{link}_measured_s")
        if value is None:
            return "-"
        mark = "" if r.get(f"{link}_source", "measured") == "measured" else "*"
        return f"{value:,.1f}{mark}"

    def ratio(base: dict, r: dict, link: str) -> str:
        a, b = base.get(f"{link}_measured_s"), r.get(f"{link}_measured_s")
        return f"{a / b:.2f}x" if a and b else "-"

    for model, n in dict.fromkeys((r["model"], r["tokens"]) for r in runs):
        group = [r for r in runs if (r["model"], r["tokens"]) == (model, n)]
        padded = next(r for r in group if r["config"] == PADDED)
        true = next(r for r in group if r["config"] == TRUE_LENGTH)
        lines += [
            f"\n{model}, {n} tokens:\n",
            "| run | tokens entering each layer | online MB | rounds | none s | LAN s "
            "| WAN s | speedup LAN / WAN, padded | vs true length |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            same = r.get("same_run_as")
            speed = (
                "1x"
                if r is padded or same
                else f"{ratio(padded, r, 'LAN')} / {ratio(padded, r, 'WAN')}"
            )
            vs_true = "1x" if r is true else f"{ratio(true, r, 'LAN')} / {ratio(true, r, 'WAN')}"
            config = f"{r['config']} (= {same})" if same else r["config"]
            layers = _layers(r["tokens_per_layer"][: len(r["high_per_layer"])])  # not the head's
            lines.append(
                f"| {config} | {layers} | {r['online_MB']:,.0f} "
                f"| {r['rounds']:,.0f} | {cell(r, 'none')} | {cell(r, 'LAN')} | {cell(r, 'WAN')} "
                f"| {speed} | {vs_true} |"
            )
    models = dict.fromkeys(a["model"] for a in payload["accuracy"])
    for model in models:
        acc = [a for a in payload["accuracy"] if a["model"] == model]
        lines += [
            f"\n{model}, accuracy (an input out of an approximation's range counts as wrong):\n",
            "| data | tokens | examples | mode | accuracy | out of range |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['data']} | {a['tokens']} | {a['examples']:,} | {a['mode']} "
            f"| {100 * a['accuracy']:.2f}% | {a.get('out_of_range', 0)} |"
            for a in acc
        ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    if args.combine:
        payload = combine(args.combine)
        report(payload, any(p["netns"] for p in payload["parts"]))
        print(f"\nwrote {write_results('cipherprune', payload)}")
        return
    payload = measure(args)
    report(payload, args.netns)
    # A partial run (some models, or some lengths) gets its own file, so it never replaces the
    # results of a whole one; --combine merges partial files.
    name = "cipherprune"
    if sorted(args.models) != sorted(LABELS) or sorted(args.lengths) != [128, LONG_N]:
        name += "_" + "_".join(args.models) + "_" + "_".join(map(str, args.lengths))
    if args.rsqrt is not None:  # a form chosen here, not the classifiers' own: kept apart
        name += f"_rsqrt_{args.rsqrt}"
    print(f"\nwrote {write_results(name, payload)}")


if __name__ == "__main__":
    main()

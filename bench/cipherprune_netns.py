"""CipherPrune through an emulated network: client, server and dealer as processes in their own
network namespaces (``privformer.transport.netns``), the client-server link rate-capped in the
kernel and its propagation delay added by the parties (this kernel has no netem), next to the
analytic model the main bench uses (unshaped wall time + RTT/2 per round + bytes at the cap).

For each Rotten Tomatoes test sentence and each link (none, LAN, WAN) it runs the session three
ways: unpruned at the padded length (the paper's baseline), unpruned at the true length (which
reveals the length, as pruning does), and pruned + reduced (learned thresholds). The client's
session time includes the once-per-session weight-mask setup; the model gets the same bytes.

    python bench/cipherprune_netns.py [--texts 1] [--links none,LAN,WAN] [--model DIR]

Writes bench/results/cipherprune_netns.json. Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, scratch_dir, write_results  # noqa: E402

from privformer import data  # noqa: E402
from privformer.crypto.mpc.channel import LAN as LAN_MODEL  # noqa: E402
from privformer.crypto.mpc.channel import WAN as WAN_MODEL  # noqa: E402
from privformer.models.registry import load_tokenizer  # noqa: E402
from privformer.protocols.cipherprune import train as tr  # noqa: E402
from privformer.protocols.cipherprune.format import CONFIG, PRUNING  # noqa: E402
from privformer.protocols.cipherprune.model import PruningConfig  # noqa: E402
from privformer.transport import netns  # noqa: E402
from privformer.transport.processes import ChildProcess  # noqa: E402

LINKS = {"none": None, "LAN": netns.LAN, "WAN": netns.WAN}
MODELS = {"LAN": LAN_MODEL, "WAN": WAN_MODEL}


def server_folder(
    model_dir: Path, pruning: PruningConfig, out: Path, rsqrt: str | None = None
) -> Path:
    """A server folder serving ``model_dir``'s weights (linked, not copied) with ``pruning``
    and, if given, the LayerNorm ``rsqrt`` form (``BertClassifierWeights.rsqrt``)."""
    out.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name == CONFIG and rsqrt is not None:
            cfg = json.loads(item.read_text())
            (out / CONFIG).write_text(json.dumps({**cfg, "rsqrt": rsqrt}, indent=1))
        elif item.name != PRUNING:
            (out / item.name).symlink_to(item.resolve())
    (out / PRUNING).write_text(pruning.to_json())
    return out


def network_flags(link: str) -> list[str]:
    return [] if link == "none" else ["--network", link.lower(), "--emulation", "delay"]


def run_link(
    link: str,
    servers: dict[str, Path],
    jobs: list[tuple[str, str, str, int]],
    tokenizer: str = "minilm",
) -> list:
    """Start the dealer and one server per folder in their namespaces, then run each client
    job (config, server key, text, length) in the client's namespace; returns its JSON rows."""
    profile = LINKS[link] or netns.LinkProfile("none", 0.0, 0.0)
    rows = []
    with netns.EmulatedNetwork(profile, shaped=LINKS[link] is not None) as net:
        dealer_args = ["cipherprune", "dealer", "--host", "0.0.0.0", "--port", "0"]
        with ChildProcess(dealer_args, wrapper=net.wrap("dealer", [])) as dealer:
            started = {}
            try:
                for key, folder in servers.items():
                    if not any(job[1] == key for job in jobs):
                        continue
                    args = ["cipherprune", "serve", "--model", str(folder), "--host", "0.0.0.0"]
                    args += ["--port", "0", "--dealer", f"{net.address('dealer', 'server')}:"
                             f"{dealer.port}", *network_flags(link)]  # fmt: skip
                    started[key] = ChildProcess(args, wrapper=net.wrap("server", []))
                    started[key].__enter__()
                for config, key, text, length in jobs:
                    argv = [sys.executable, "-m", "privformer.cli.main", "cipherprune", "classify"]
                    argv += [text, "--json", "--max-length", str(length)]
                    argv += ["--server", f"{net.address('server', 'client')}:{started[key].port}"]
                    argv += ["--dealer", f"{net.address('dealer', 'client')}:{dealer.port}"]
                    argv += ["--tokenizer", tokenizer, *network_flags(link)]
                    done = subprocess.run(
                        net.wrap("client", argv), capture_output=True, text=True, check=True
                    )
                    out = json.loads(done.stdout.strip().splitlines()[-1])
                    rows.append({"link": link, "config": config, "length": length, **out})
                    print(f"{link:4} {config:28} {out['seconds']:8.2f} s  {out['rounds']} rounds")
            finally:
                for child in started.values():
                    child.__exit__()
    return rows


def add_model(rows: list[dict]) -> None:
    """Next to each shaped row, the analytic model's time (``NetworkModel.time``): the unshaped
    run's time plus RTT/2 per round plus, per round, the larger direction's bytes at the cap."""
    base = {(r["config"], r["text"]): r for r in rows if r["link"] == "none"}
    for r in rows:
        ref = base.get((r["config"], r["text"]))
        if r["link"] in MODELS and ref is not None:
            r["model_s"] = ref["seconds"] + MODELS[r["link"]].time(ref)
            r["measured_over_model"] = r["seconds"] / r["model_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=1, help="Rotten Tomatoes test sentences")
    ap.add_argument("--links", default="none,LAN,WAN")
    ap.add_argument("--model", help="classifier folder (default: the trained MiniLM)")
    ap.add_argument("--tokenizer", default="minilm", help="the classifier's encoder")
    args = ap.parse_args()
    netns.remove_stale()
    model_dir = Path(args.model) if args.model else tr.build_classifier()
    tok = load_tokenizer(args.tokenizer)
    _, test = data.rotten_tomatoes_split()
    texts = [t for t, _ in test[: args.texts]]
    work = scratch_dir("cipherprune-netns-")
    layers = len(PruningConfig.from_json((model_dir / PRUNING).read_text()).keep)
    servers = {
        "pruned": model_dir,
        "unpruned": server_folder(model_dir, PruningConfig.none(layers), work / "unpruned"),
    }
    jobs = []
    for text in texts:
        true_length = len(tok(text, truncation=True, max_length=128)["input_ids"])
        jobs += [
            ("unpruned, padded to 128", "unpruned", text, 128),
            ("unpruned, true length", "unpruned", text, true_length),
            ("pruned + reduced, 128", "pruned", text, 128),
        ]
    rows = []
    for link in args.links.split(","):
        rows += run_link(link, servers, jobs, args.tokenizer)
    add_model(rows)
    record = {
        "benchmark": "cipherprune_netns",
        "machine": machine(),
        "classifier": str(model_dir),
        "links": {k: vars(v) if v else None for k, v in LINKS.items()},
        "delay": "added by the parties (no sch_netem in this kernel); rate by tbf on the veth",
        "rows": rows,
    }
    path = write_results("cipherprune_netns", record)
    print_table(
        "CipherPrune through network namespaces (MiniLM, 2 cores)",
        [{k: v for k, v in r.items() if k not in ("logits", "tokens_per_layer")} for r in rows],
        ["link", "config", "length", "seconds", "model_s", "rounds", "bytes_sent", "bytes_recv"],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

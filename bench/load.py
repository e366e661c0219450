"""Load benchmark: N concurrent clients against the STIP and CipherPrune servers on loopback.

Scenarios, each at 1, 4 and 16 concurrent clients for a fixed window:
- ``stip-minilm``: one Rotten Tomatoes sentence per request (sentence embedding);
- ``stip-smollm2``: greedy generation of 8 tokens from a short prompt (a session per request);
- ``cipherprune``: one secure classification per request (MiniLM, 32 tokens), against a server
  with ``--max-concurrent 2``: clients refused as busy wait 0.5 s and retry (counted).
Each STIP scenario runs the permuted export and a "plain" one (the same server and client code
with identity permutations, i.e. the unprotected model behind the same HTTP stack), alternating
in short windows so drift hits both alike; the ratio is permuted over plain throughput.

Reported per row: completed requests per second, p50 and p99 latency, errors (by kind), peak
server RSS. The servers run with their default limits except sessions per client (all clients
share 127.0.0.1 here, so the per-client cap is raised to 32 for the 16-client generation run).

    python bench/load.py [--window S] [--clients 1,4,16] [--only stip-minilm,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer.data import rotten_tomatoes_split  # noqa: E402
from privformer.protocols.stip import export as export_module  # noqa: E402
from privformer.protocols.stip.transform import StipSecret  # noqa: E402
from privformer.transport.processes import ChildProcess  # noqa: E402
from privformer.transport.stip_client import StipClient  # noqa: E402
from privformer.transport.stip_server import ServerProcess  # noqa: E402

PROMPT = "The three most useful things to know about private inference are"
NEW_TOKENS = 8
CP_TOKENS = 32


def _identity_export(model: str, out: Path, scheme: str):
    """An export whose every permutation is the identity: the plain model, same code path."""
    real = export_module.draw_secret

    def identity(arch, scheme_: str) -> StipSecret:
        secret = real(arch, scheme_)
        return StipSecret(scheme_, {k: torch.arange(v.numel()) for k, v in secret.spaces.items()})

    export_module.draw_secret = identity
    try:
        return export_module.export(model, out, scheme=scheme, progress=False)
    finally:
        export_module.draw_secret = real


class _Peak:
    """Polls a process's RSS in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                rss += sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def drive(
    make_worker: Callable[[int], Callable[[], None]], clients: int, window_s: float
) -> tuple[list[float], Counter, float]:
    """``clients`` threads call their worker until the window closes (requests under way then
    finish); latencies (s), errors, and the wall seconds until the last one finished."""
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + window_s

    def loop(i: int) -> None:
        try:
            work = make_worker(i)
        except Exception as exc:  # noqa: BLE001  (a client that cannot start is an error row)
            with lock:
                errors[f"setup {type(exc).__name__}"] += 1
            return
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                work()
            except Exception as exc:  # noqa: BLE001  (counted, not raised: this is a load test)
                with lock:
                    errors[type(exc).__name__] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.monotonic() - start


def _row(
    scenario: str,
    variant: str,
    clients: int,
    lat: list[float],
    errors: Counter,
    seconds: float,
    rss: int,
) -> dict:
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {
        "scenario": scenario,
        "variant": variant,
        "clients": clients,
        "requests": len(lat),
        "per_s": round(len(lat) / seconds, 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": dict(errors),
        "server_peak_mib": round(rss / 2**20),
    }


def bench_stip(model: str, clients_list: list[int], window_s: float, rounds: int) -> list[dict]:
    texts = [t for t, _ in rotten_tomatoes_split()[1][:64]]
    scenario = f"stip-{model}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exports = {
            "permuted": export_module.export(model, Path(tmp) / "p", scheme="v2", progress=False),
            "plain": _identity_export(model, Path(tmp) / "i", "v2"),
        }
        options = ["--max-sessions-per-client", "32"]
        servers = {k: ServerProcess(e.cloud_dir, options=options) for k, e in exports.items()}
        for s in servers.values():
            s.__enter__()
        try:
            for clients in clients_list:
                totals = {k: ([], Counter(), 0, 0.0) for k in exports}
                for _ in range(rounds):
                    for variant, result in exports.items():
                        url = servers[variant].url

                        def make(i: int, user=result.user_dir, url=url) -> Callable[[], None]:
                            client = StipClient(user, url, timeout_s=300)
                            if model == "minilm":
                                return lambda: client.sentence_embeddings([texts[i % len(texts)]])
                            return lambda: client.generate(PROMPT, NEW_TOKENS, stop_at_eos=False)

                        peak = _Peak(servers[variant].proc.pid)
                        lat, err, wall = drive(make, clients, window_s)
                        rss = peak.stop()
                        old = totals[variant]
                        totals[variant] = (
                            old[0] + lat,
                            old[1] + err,
                            max(old[2], rss),
                            old[3] + wall,
                        )
                for variant, (lat, err, rss, wall) in totals.items():
                    rows.append(_row(scenario, variant, clients, lat, err, wall, rss))
                    print(rows[-1], flush=True)
                perm, plain = rows[-2]["per_s"], rows[-1]["per_s"]
                rows[-2]["ratio_to_plain"] = round(perm / plain, 3) if plain else None
        finally:
            for s in servers.values():
                s.__exit__()
    return rows


def bench_cipherprune(clients_list: list[int], window_s: float) -> list[dict]:
    from privformer.errors import PeerError
    from privformer.models.registry import load_model, load_tokenizer
    from privformer.protocols.cipherprune.format import save_classifier
    from privformer.protocols.cipherprune.model import BertClassifierWeights, PruningConfig
    from privformer.protocols.cipherprune.session import encode_text
    from privformer.transport.cipherprune import classify_remote

    torch.manual_seed(0)
    w = BertClassifierWeights.from_hf(load_model("minilm"), torch.nn.Linear(384, 2))
    tok = load_tokenizer("minilm")
    texts = [t for t, _ in rotten_tomatoes_split()[1][:64]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_classifier(w, PruningConfig.none(w.layers), Path(tmp) / "m")
        with ChildProcess(["cipherprune", "dealer", "--port", "0"]) as dealer:
            serve = ["cipherprune", "serve", "--model", str(model_dir), "--port", "0"]
            serve += ["--dealer", f"127.0.0.1:{dealer.port}"]
            with ChildProcess(serve) as server:
                busy = Counter()
                for clients in clients_list:

                    def make(i: int, clients: int = clients) -> Callable[[], None]:
                        ids, mask = encode_text(texts[i % len(texts)], CP_TOKENS, tok)

                        def work() -> None:
                            while True:
                                try:
                                    classify_remote(
                                        ids,
                                        mask,
                                        ("127.0.0.1", server.port),
                                        ("127.0.0.1", dealer.port),
                                    )
                                    return
                                except PeerError as exc:
                                    if "busy" not in str(exc):
                                        raise
                                    busy[clients] += 1
                                    time.sleep(0.5)

                        return work

                    peak = _Peak(server.proc.pid)
                    lat, err, wall = drive(make, clients, window_s)
                    rss = peak.stop()
                    row = _row("cipherprune", "2pc", clients, lat, err, wall, rss)
                    row["busy_refusals"] = busy[clients]
                    rows.append(row)
                    print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=8.0, help="seconds per STIP window")
    parser.add_argument("--rounds", type=int, default=5, help="alternating windows per variant")
    parser.add_argument("--cp-window", type=float, default=40.0, help="CipherPrune seconds")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--only", default="stip-minilm,stip-smollm2,cipherprune")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    only = args.only.split(",")
    rows: list[dict] = []
    if "stip-minilm" in only:
        rows += bench_stip("minilm", clients, args.window, args.rounds)
    if "stip-smollm2" in only:
        rows += bench_stip("smollm2", clients, args.window, args.rounds)
    if "cipherprune" in only:
        rows += bench_cipherprune(clients, args.cp_window)
    # keep the rows of scenarios not run this time (``--only`` reruns one scenario)
    previous = RESULTS / "load.json"
    if previous.is_file():
        done = {r["scenario"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["scenario"] not in done]
        rows = kept + rows
    columns = [
        "scenario",
        "variant",
        "clients",
        "requests",
        "per_s",
        "ratio_to_plain",
        "p50_ms",
        "p99_ms",
        "errors",
        "server_peak_mib",
        "busy_refusals",
    ]
    print_table("Load on loopback (2 cores shared by the server and the clients)", rows, columns)
    ratios = {
        (r["scenario"], r["clients"]): r["ratio_to_plain"] for r in rows if r.get("ratio_to_plain")
    }
    pooled = {}
    for scenario in sorted({s for s, _ in ratios}):
        values = [v for (s, _), v in ratios.items() if s == scenario]
        pooled[scenario] = round(float(np.exp(np.mean(np.log(values)))), 3)
    summary = {
        "min_stip_ratio": min(ratios.values()) if ratios else None,
        "geomean_ratio_per_scenario": pooled,
        "target_ratio": 0.95,
    }
    print(
        f"\nSTIP permuted/plain throughput: lowest row {summary['min_stip_ratio']}, "
        f"geometric mean per scenario {pooled} (target >= 0.95)"
    )
    path = write_results(
        "load",
        {
            "machine": machine(),
            "settings": vars(args) | {"new_tokens": NEW_TOKENS, "cipherprune_tokens": CP_TOKENS},
            "summary": summary,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

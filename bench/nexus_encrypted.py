"""NEXUS encrypted end to end: client and server processes, OpenFHE, real sentences.

The server (``privformer nexus serve MODEL --backend openfhe``) runs in a child process; this
process is the client: it fetches the spec, makes the keys, uploads the evaluation keys once,
then for each Rotten Tomatoes test sentence sends one encrypted request and decrypts one reply.
Per query it records the server's seconds and bootstraps per layer and stage, bytes up and down,
the class against plaintext and the logits against ``simulate`` (the float twin); once, the key
generation, upload and evaluation-key bytes; throughout, the peak resident memory of the server
process tree (its OpenFHE worker included) and of this client's.

    python bench/nexus_encrypted.py [--model minilm2-rt] [--sentences 1] [--skip 0]
                                    [--output logits] [--tokens 128] [--fit]
                                    [--sparse-bootstrap] [--append]

Results go to bench/results/nexus_encrypted_MODEL.json (one file per model) after every query,
so a long run that is stopped keeps what it finished. ``--skip N`` starts at the (N+1)-th chosen
sentence and ``--append`` keeps the queries of earlier runs of the same model, layout, backend
and output (each query says when it ran and whether its bootstraps were sparse; the keys, upload
and peak memory are this run's), so sentences can be measured one run at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    encrypted_results_name,
    machine,
    print_table,
    scratch_dir,
    write_results,
)

import privformer as pf  # noqa: E402
from privformer.data import rotten_tomatoes_split  # noqa: E402
from privformer.protocols.nexus import service as svc  # noqa: E402
from privformer.transport.nexus_http import NexusHttpClient, NexusServerProcess  # noqa: E402


class PeakMemory:
    """Polls the resident memory of a process tree (the process and its children) each second."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm2-rt")
    ap.add_argument("--sentences", type=int, default=1, help="Rotten Tomatoes test sentences")
    ap.add_argument("--skip", type=int, default=0, help="skip the first N chosen sentences")
    ap.add_argument(
        "--append", action="store_true", help="keep earlier runs' queries of the same setup"
    )
    ap.add_argument("--output", default="logits", choices=svc.OUTPUTS)
    ap.add_argument("--backend", default="openfhe", choices=["openfhe", "seal"])
    ap.add_argument("--layers", type=int, help="serve the first N layers only (a smoke run)")
    ap.add_argument("--tokens", type=int, default=128, help="positions of the encrypted layout")
    ap.add_argument(
        "--fit",
        action="store_true",
        help="take the first test sentences that fill more than half the positions without "
        "truncation (default: the first sentences, truncated to the positions)",
    )
    ap.add_argument(
        "--sparse-bootstrap",
        action="store_true",
        help="per-token ciphertexts take sparse-slot bootstraps (serve --sparse-bootstrap)",
    )
    args = ap.parse_args()
    _, test = rotten_tomatoes_split()
    model = pf.load(args.model, protocol="nexus", tokens=args.tokens)
    c, tok = model.classifier, model.tokenizer
    if args.layers is not None:
        c = dataclasses.replace(c, layers=c.layers[: args.layers], configs=c.configs[: args.layers])
    work = scratch_dir("nexus-bench-")
    options = ["--backend", args.backend, "--keys-dir", str(work / "registry")]
    options += ["--tokens", str(args.tokens)]
    if args.layers is not None:
        options += ["--layers", str(args.layers)]
    if args.sparse_bootstrap:
        options.append("--sparse-bootstrap")
    record: dict = {"benchmark": "nexus_encrypted", "machine": machine(), "model": args.model}
    record["backend"] = args.backend
    record |= {"output": args.output, "layers": len(c.layers), "positions": c.tokens}
    record["sentences"] = "fitting" if args.fit else "truncated"
    record["sparse_bootstrap"] = args.sparse_bootstrap
    record["queries"] = []
    name = encrypted_results_name(args.model)
    previous = RESULTS / f"{name}.json"
    if args.append and previous.is_file():
        earlier = json.loads(previous.read_text())
        same = ("model", "backend", "output", "layers", "positions")
        if all(earlier.get(k) == record[k] for k in same):
            for query in earlier["queries"]:
                query.setdefault("sparse_bootstrap", earlier.get("sparse_bootstrap", False))
            record["queries"] = earlier["queries"]
    client_memory = PeakMemory(os.getpid())
    with NexusServerProcess(args.model, options=options, log_file=work / "server.log") as server:
        assert server.proc is not None
        server_memory = PeakMemory(server.proc.pid)
        with NexusHttpClient(server.url) as http:
            spec = http.spec()
            start = time.perf_counter()
            sizes = svc.NexusClient.make_keys(spec, work / "keys")
            record["keygen_s"] = time.perf_counter() - start
            record["evaluation_key_bytes"] = sizes
            start = time.perf_counter()
            key_id = http.upload_keys(work / "keys" / svc.NexusClient.EVAL_DIR)
            record["upload_and_load_s"] = time.perf_counter() - start
            client = svc.NexusClient(c.tables, tok, spec, c.tokens, c.pad_id)
            assert client.open_keys(work / "keys") == key_id
            chosen = test
            if args.fit:
                lengths = [len(tok(t)["input_ids"]) for t, _ in test]
                chosen = [
                    row
                    for row, k in zip(test, lengths, strict=True)
                    if c.tokens // 2 < k <= c.tokens
                ]
            for index, (text, label) in enumerate(chosen[args.skip : args.skip + args.sentences]):
                ids = tok(text, truncation=True, max_length=c.tokens)["input_ids"]
                start = time.perf_counter()
                request = client.request(text, output=args.output)
                reply_bytes = http.classify(request)
                reply = client.read_reply(reply_bytes)
                seconds = time.perf_counter() - start
                plain, simulate = c.logits(ids, "plain"), c.logits(ids, "simulate")
                row = {
                    "text": text,
                    "sentence_index": args.skip + index,  # among the chosen test sentences
                    "tokens": len(ids),
                    "label": label,
                    "encrypted_class": reply.label,
                    "plain_class": int(np.argmax(plain)),
                    "simulate_class": int(np.argmax(simulate)),
                    "encrypted_scores": reply.scores.tolist(),
                    "simulate_logits": simulate.tolist(),
                    "plain_logits": plain.tolist(),
                    "max_diff_vs_simulate": (
                        float(np.abs(reply.scores - simulate).max())
                        if args.output == "logits"
                        else None
                    ),
                    "seconds": seconds,
                    "server_seconds": reply.server_seconds,
                    "bootstraps": reply.bootstraps,
                    "bytes_up": len(request),
                    "bytes_down": len(reply_bytes),
                    "sparse_bootstrap": args.sparse_bootstrap,
                    "measured_at": time.strftime("%Y-%m-%d %H:%M"),
                }
                row["layers_detail"] = svc.decode_message(reply_bytes, svc.REPLY_MAGIC, 1)[0][
                    "layers"
                ]
                record["queries"].append(row)
                record["server_peak_rss_bytes"] = server_memory.peak
                record["client_peak_rss_bytes"] = client_memory.peak
                write_results(name, record)
                print_table(
                    f"NEXUS encrypted, {args.model}, {args.backend} (2 cores)",
                    [{k: v for k, v in row.items() if not isinstance(v, list | dict)}],
                    [
                        "tokens",
                        "label",
                        "encrypted_class",
                        "plain_class",
                        "max_diff_vs_simulate",
                        "seconds",
                        "bootstraps",
                        "bytes_up",
                        "bytes_down",
                    ],
                )
        record["server_peak_rss_bytes"] = server_memory.stop()
    record["client_peak_rss_bytes"] = client_memory.stop()
    path = write_results(name, record)
    print(f"keygen {record['keygen_s']:.0f} s, upload and load {record['upload_and_load_s']:.0f} s")
    print(f"evaluation keys {sum(record['evaluation_key_bytes'].values()) / 1e9:.2f} GB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

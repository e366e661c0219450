"""``privformer demo``: one protocol end to end on an embedded model, offline.

- ``stip`` (default): the developer exports the model (in this process), the cloud serves it (a
  separate OS process, over HTTP on localhost), the user queries it;
- ``cipherprune``: the model owner saves the probe classifier; the dealer and the server run as
  separate OS processes and the client classifies over TCP with 2PC;
- ``nexus``: the classifier in plain and simulate modes (``--encrypted`` says what is missing).

Each checks the private result against the plain model, which only a demo can do, since it
holds every party's secrets.
"""

from __future__ import annotations

import tempfile
import time

import torch

from privformer.models.pooling import plain_sentence_embeddings
from privformer.models.registry import load_model, load_tokenizer
from privformer.protocols.stip.export import export
from privformer.transport.stip_client import StipClient
from privformer.transport.stip_server import ServerProcess

SENTENCES = [
    "The movie was a delight from start to finish.",
    "I loved every minute of this film.",
    "The service at the restaurant was painfully slow.",
    "Quarterly revenue grew by twelve percent.",
]
PROMPT = "What is the capital of France?"


def _plain_greedy(model_name: str, prompt_ids: list[int], n: int) -> list[int]:
    """Plain ``transformers`` greedy decoding (stops at end-of-sequence, like the client)."""
    model = load_model(model_name)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=n,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.int64),
        )
    return out[0, len(prompt_ids) :].tolist()


def run_demo(
    protocol: str = "stip",
    model: str | None = None,
    scheme: str = "v2",
    encrypted: bool = False,
) -> int:
    """Run one protocol's demo and print what each party did; returns a process exit code."""
    if protocol == "cipherprune":
        return _cipherprune_demo()
    if protocol == "nexus":
        return _nexus_demo(encrypted)
    return _stip_demo(model or "minilm", scheme)


def _stip_demo(model: str, scheme: str) -> int:
    with tempfile.TemporaryDirectory(prefix="privformer-demo-") as tmp:
        print(f"[developer] exporting {model} with STIP {scheme} (permutations from the OS CSPRNG)")
        result = export(model, tmp, scheme=scheme)
        print(
            f"[developer] cloud checkpoint -> {result.cloud_dir}, "
            f"user key -> {result.user_dir / 'user.key'}"
            f" ({result.seconds:.1f} s)"
        )
        with ServerProcess(result.cloud_dir) as server:
            pid = server.proc.pid if server.proc else "?"
            print(f"[cloud]     serving the permuted model at {server.url} (pid {pid})")
            with StipClient(result.user_dir, server.url) as client:
                start = time.perf_counter()
                if client.user.is_decoder:
                    gen = client.generate(PROMPT, 32, chat=True)
                    elapsed = time.perf_counter() - start
                    print(f"[user]      prompt: {PROMPT!r}")
                    print(f"[user]      private generation: {gen.text!r}")
                    ok = _plain_greedy(model, gen.prompt_ids, 32) == gen.token_ids
                    print(f"[check]     plain greedy tokens identical: {ok}")
                else:
                    private = client.sentence_embeddings(SENTENCES)
                    elapsed = time.perf_counter() - start
                    plain = plain_sentence_embeddings(
                        load_model(model), load_tokenizer(model), SENTENCES
                    )
                    diff = (private - plain).abs().max().item()
                    sims = private @ private.T
                    print("[user]      cosine similarities from the private embeddings:")
                    for i, text in enumerate(SENTENCES):
                        row = " ".join(f"{sims[i, j]:+.3f}" for j in range(len(SENTENCES)))
                        print(f"              {row}  {text}")
                    ok = diff < 1e-4
                    print(
                        f"[check]     max |private - plain| = {diff:.2e} (fp32; tolerance 1e-4): "
                        f"{'OK' if ok else 'MISMATCH'}"
                    )
                stats = client.stats
                print(
                    f"[wire]      {stats.requests} requests, {stats.bytes_sent:,} B sent, "
                    f"{stats.bytes_received:,} B received, {elapsed * 1000:.0f} ms"
                )
    print(
        "STIP is obfuscation, not encryption: a cloud holding the public model recovers every\n"
        "token and permutation (`privformer stip audit` measures 100% on MiniLM); see README\n"
        "'What each party learns'."
    )
    return 0 if ok else 1


def _cipherprune_demo() -> int:
    import privformer as pf
    from privformer.transport.processes import ChildProcess

    with tempfile.TemporaryDirectory(prefix="privformer-demo-") as tmp:
        model = pf.load("minilm-rt-probe", protocol="cipherprune", max_length=32)
        out = model.save_pretrained(tmp)
        print(f"[owner]     saved the classifier: {out / 'server'} (weights, thresholds)")
        with ChildProcess(["cipherprune", "dealer", "--port", "0"]) as dealer:
            print(f"[dealer]    correlated randomness on 127.0.0.1:{dealer.port}")
            server_args = ["cipherprune", "serve", "--model", str(out / "server")]
            server_args += ["--dealer", f"127.0.0.1:{dealer.port}", "--port", "0"]
            with ChildProcess(server_args) as server:
                print(f"[server]    2PC classifier on 127.0.0.1:{server.port}")
                client = pf.Client.from_pretrained(
                    out / "client",
                    server=f"127.0.0.1:{server.port}",
                    dealer=f"127.0.0.1:{dealer.port}",
                )
                private = client.predict(SENTENCES[:2])
        plain = model.predict(SENTENCES[:2], mode="plain")
        simulate = model.predict(SENTENCES[:2], mode="simulate")
    for i, text in enumerate(SENTENCES[:2]):
        kept = private.revealed["tokens_per_layer"][i]
        print(f"[client]    {text!r}: class {private.labels[i]}, tokens per layer {kept}")
    diff = (private.outputs - simulate.outputs).abs().max().item()
    ok = private.labels == simulate.labels and diff < 5e-3
    print(
        f"[check]     private vs simulate logits: max diff {diff:.2e} (fixed point; tolerance "
        f"5e-3), labels {private.labels} vs simulate {simulate.labels} vs plain {plain.labels}: "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    print(
        f"[wire]      client sent {private.bytes_sent:,} B, received {private.bytes_received:,} B,"
        f" {private.rounds} rounds, {private.seconds:.1f} s"
    )
    print("CipherPrune reveals the number of tokens kept per layer to both parties.")
    return 0 if ok else 1


def _nexus_demo(encrypted: bool) -> int:
    import privformer as pf

    model = pf.load("minilm-rt-probe", protocol="nexus")
    if encrypted:
        model.predict(SENTENCES[:1], mode="private")  # raises UnsupportedModeError, by name
    plain = model.predict(SENTENCES, mode="plain")
    simulate = model.predict(SENTENCES, mode="simulate")
    for i, text in enumerate(SENTENCES):
        print(f"[nexus]     {text!r}: plain class {plain.labels[i]}, simulate {simulate.labels[i]}")
    diff = (plain.outputs - simulate.outputs).abs().max().item()
    ok = plain.labels == simulate.labels
    print(
        f"[check]     simulate (NEXUS's approximations in float64) vs plain logits: max diff "
        f"{diff:.2e}; same classes: {'OK' if ok else 'MISMATCH'} ({simulate.seconds:.1f} s)"
    )
    print("The encrypted NEXUS run (one request, one reply under CKKS) is the next step.")
    return 0 if ok else 1

"""``privformer demo``: the three STIP roles end to end on an embedded model, offline.

The developer exports the model (in this process), the cloud serves it (a separate OS process,
over HTTP on localhost), and the user queries it; the demo then checks the private result
against the plain model, which only a demo can do, since it holds every party's secrets.
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


def run_demo(model: str = "minilm", scheme: str = "v2") -> int:
    """Run the demo and print what each party did; returns a process exit code."""
    with tempfile.TemporaryDirectory(prefix="privformer-demo-") as tmp:
        print(f"[developer] exporting {model} with STIP {scheme} (permutations from the OS CSPRNG)")
        result = export(model, tmp, scheme=scheme)
        print(
            f"[developer] cloud checkpoint -> {result.cloud_dir}, "
            f"user key -> {result.user_dir / 'user.key'}"
            f" ({result.seconds:.1f} s)"
        )
        with ServerProcess(result.cloud_dir) as server:
            print(f"[cloud]     serving the permuted model at {server.url} (pid {server.proc.pid})")
            with StipClient(result.user_dir, server.url) as client:
                start = time.perf_counter()
                if client.user.is_decoder:
                    gen = client.generate(PROMPT, 32, chat=True)
                    elapsed = time.perf_counter() - start
                    print(f"[user]      prompt: {PROMPT!r}")
                    print(f"[user]      private generation: {gen.text!r}")
                    plain = _plain_greedy(model, gen.prompt_ids, 32)
                    ok = plain == gen.token_ids
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
        "STIP hides the model's weights behind permutations and the user's text from the cloud's\n"
        "direct view; it is obfuscation, not encryption: see README 'What each party learns'."
    )
    return 0 if ok else 1

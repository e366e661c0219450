"""A BERT classifier as NEXUS runs it: the client embeds, the server runs the encoder and head.

As in NEXUS and THOR, the client holds the embedding tables: it tokenises, looks up word,
position and token-type embeddings and applies the embedding LayerNorm in plaintext, then
encrypts the (tokens x hidden) activation. The server holds the encoder layers and the linear
head on [CLS]. ``NexusClassifier.logits(ids, mode)`` runs the whole model in float64, ``plain``
(exact functions) or ``simulate`` (NEXUS's approximations, the encrypted run's twin); the
encrypted run through a client and a server is the next step of the NEXUS work.

The forward runs at the true sequence length (no padding): attention has no padding mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privformer.artifacts import read_manifest, write_manifest
from privformer.errors import InputError
from privformer.models.encoder import read_encoder
from privformer.protocols.nexus.layer import (
    DEFAULT_LAYER,
    EncoderLayerWeights,
    FloatOps,
    LayerConfig,
    float_layer,
)

PROTOCOL = "nexus"
FORMAT_VERSION = 1


@dataclass
class ClientTables:
    """What the client needs to embed: the tables and the embedding LayerNorm (float64)."""

    word: np.ndarray  # (vocab, hidden)
    position: np.ndarray  # (max_positions, hidden)
    token_type0: np.ndarray  # (hidden,)
    norm: tuple[np.ndarray, np.ndarray]
    eps: float

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """(tokens x hidden) LayerNorm(word[ids] + position[:n] + type0), exact, in plaintext."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size == 0 or ids.size > self.position.shape[0]:
            raise InputError(f"need 1 to {self.position.shape[0]} tokens, got {ids.size}")
        if ids.min() < 0 or ids.max() >= self.word.shape[0]:
            raise InputError(f"token ids must lie in [0, {self.word.shape[0]})")
        x = self.word[ids] + self.position[: ids.size] + self.token_type0  # (n, hidden)
        z = x - x.mean(axis=-1, keepdims=True)
        return (
            self.norm[0] * z / np.sqrt((z * z).mean(axis=-1, keepdims=True) + self.eps)
            + (self.norm[1])
        )


@dataclass
class NexusClassifier:
    """Client tables, server layers and head; ``logits(ids, mode)`` in float64."""

    tables: ClientTables
    layers: list[EncoderLayerWeights]
    head_w: np.ndarray  # (hidden, classes)
    head_b: np.ndarray  # (classes,)
    config: LayerConfig = DEFAULT_LAYER

    @classmethod
    def from_hf(cls, bert: torch.nn.Module, head: torch.nn.Linear) -> NexusClassifier:
        """From a ``transformers`` ``BertModel`` and a linear head on [CLS]."""
        enc = read_encoder(bert)
        eps = float(bert.config.layer_norm_eps)
        tables = ClientTables(
            enc.word.numpy(),
            enc.position.numpy(),
            enc.token_type0.numpy(),
            (enc.embedding_norm[0].numpy(), enc.embedding_norm[1].numpy()),
            eps,
        )
        layers = [
            EncoderLayerWeights(
                {key: w.numpy() for key, (w, _b) in t.linear.items()},
                {key: b.numpy() for key, (_w, b) in t.linear.items()},
                (t.norms["ln1"][0].numpy(), t.norms["ln1"][1].numpy()),
                (t.norms["ln2"][0].numpy(), t.norms["ln2"][1].numpy()),
                enc.heads,
                t.eps,
            )
            for t in enc.layers
        ]
        w = head.weight.detach().to(torch.float64).T.contiguous().numpy()
        b = head.bias.detach().to(torch.float64).numpy()
        return cls(tables, layers, w, b)

    def logits(self, ids: np.ndarray, mode: str = "simulate") -> np.ndarray:
        """Class logits of one sequence (1-D ids, [CLS] first): ``plain`` or ``simulate``."""
        ops = FloatOps(mode, self.config)
        x = self.tables.embed(ids)  # the client's part
        for layer in self.layers:  # the server's part
            x = float_layer(x, layer, ops)
        return x[0] @ self.head_w + self.head_b  # (classes,)

    # --- artifacts ----------------------------------------------------------------------------
    def save(self, server_dir: str | Path, client_dir: str | Path) -> None:
        """Server folder: layers and head; client folder: the embedding tables."""
        from safetensors.numpy import save_file

        server_dir, client_dir = Path(server_dir), Path(client_dir)
        server_dir.mkdir(parents=True, exist_ok=True)
        client_dir.mkdir(parents=True, exist_ok=True)
        tensors = {"head.w": self.head_w, "head.b": self.head_b}
        for i, layer in enumerate(self.layers):
            for key in layer.weights:
                tensors[f"l{i}.{key}.w"] = layer.weights[key]
                tensors[f"l{i}.{key}.b"] = layer.biases[key]
            for key, (g, b) in (("ln1", layer.ln1), ("ln2", layer.ln2)):
                tensors[f"l{i}.{key}.g"], tensors[f"l{i}.{key}.b"] = g, b
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(server_dir / "weights.safetensors"),
        )
        dims = {
            "layers": len(self.layers),
            "heads": self.layers[0].heads,
            "eps": self.layers[0].eps,
        }
        write_manifest(server_dir, PROTOCOL, "server", FORMAT_VERSION, **dims)
        t = self.tables
        save_file(
            {
                "word": t.word,
                "position": t.position,
                "type0": t.token_type0,
                "ln.g": t.norm[0],
                "ln.b": t.norm[1],
            },
            str(client_dir / "tables.safetensors"),
        )
        write_manifest(client_dir, PROTOCOL, "client", FORMAT_VERSION, eps=t.eps)

    @classmethod
    def load(cls, server_dir: str | Path, client_dir: str | Path) -> NexusClassifier:
        from safetensors.numpy import load_file

        dims = read_manifest(server_dir, PROTOCOL, ("server",), FORMAT_VERSION)
        client = read_manifest(client_dir, PROTOCOL, ("client",), FORMAT_VERSION)
        t = load_file(str(Path(server_dir) / "weights.safetensors"))
        layers = []
        for i in range(int(dims["layers"])):
            keys = ("q", "k", "v", "o", "ffn1", "ffn2")
            layers.append(
                EncoderLayerWeights(
                    {k: t[f"l{i}.{k}.w"] for k in keys},
                    {k: t[f"l{i}.{k}.b"] for k in keys},
                    (t[f"l{i}.ln1.g"], t[f"l{i}.ln1.b"]),
                    (t[f"l{i}.ln2.g"], t[f"l{i}.ln2.b"]),
                    int(dims["heads"]),
                    float(dims["eps"]),
                )
            )
        c = load_file(str(Path(client_dir) / "tables.safetensors"))
        tables = ClientTables(
            c["word"], c["position"], c["type0"], (c["ln.g"], c["ln.b"]), float(client["eps"])
        )
        return cls(tables, layers, t["head.w"], t["head.b"])


__all__ = ["ClientTables", "NexusClassifier"]

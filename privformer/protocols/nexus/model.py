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
from privformer.models.encoder import EmbeddingTables, read_encoder
from privformer.models.registry import HFModel
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
class NexusClassifier:
    """Client tables, server layers and head; ``logits(ids, mode)`` in float64."""

    tables: EmbeddingTables  # the client's
    layers: list[EncoderLayerWeights]
    head_w: np.ndarray  # (hidden, classes)
    head_b: np.ndarray  # (classes,)
    config: LayerConfig = DEFAULT_LAYER

    @classmethod
    def from_hf(cls, bert: HFModel, head: torch.nn.Linear) -> NexusClassifier:
        """From a ``transformers`` ``BertModel`` and a linear head on [CLS]."""
        enc = read_encoder(bert)
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
        return cls(enc.embeddings, layers, w, b)

    def logits(self, ids: np.ndarray, mode: str = "simulate") -> np.ndarray:
        """Class logits of one sequence (1-D ids, [CLS] first): ``plain`` or ``simulate``."""
        ops = FloatOps(mode, self.config)
        x = self.tables.embed(torch.as_tensor(ids)).numpy()  # the client's part, (n, hidden)
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
        tables = {"word": t.word, "position": t.position, "type0": t.token_type0}
        tables |= {"ln.g": t.norm[0], "ln.b": t.norm[1]}
        save_file({k: v.numpy() for k, v in tables.items()}, str(client_dir / "tables.safetensors"))
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
        c64 = {k: torch.from_numpy(v) for k, v in c.items()}
        tables = EmbeddingTables(
            c64["word"],
            c64["position"],
            c64["type0"],
            (c64["ln.g"], c64["ln.b"]),
            float(client["eps"]),
        )
        return cls(tables, layers, t["head.w"], t["head.b"])


__all__ = ["NexusClassifier"]

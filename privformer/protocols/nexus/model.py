"""A BERT classifier as NEXUS runs it: the client embeds, the server runs the encoder and head.

As in NEXUS and THOR, the client holds the embedding tables: it tokenises, looks up word,
position and token-type embeddings and applies the embedding LayerNorm in plaintext, pads to the
layout's ``tokens`` positions with [PAD] embeddings and encrypts the (tokens x hidden)
activation. The server holds the encoder layers and the linear head on [CLS].

One forward, three executors:
- ``plain``: float64, exact functions (matches ``transformers`` to float rounding);
- ``simulate``: float64 with the encrypted operators' approximations (the float twin);
- ``forward_circuit(backend, ...)``: the encrypted circuit itself on any ``CKKSBackend``
  (OpenFHE for real; ``FloatBackend`` runs the very same circuit in float64 with CKKS's levels,
  which is how bootstrap counts and plans are measured and how twin and circuit are held equal).

The server learns the number of real tokens (the key mask of attention depends on it; THOR's
server does too); everything else it sees is encrypted.

Without per-layer ``configs`` (``calibrate``) the layers use NEXUS's own operators, which need
every position to be a real token (no padding) and no bootstrap window limit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privformer import approx
from privformer.artifacts import read_manifest, write_manifest
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.errors import InputError, UnsupportedModelError
from privformer.models.encoder import EmbeddingTables, EncoderTensors, read_encoder
from privformer.models.registry import HFModel
from privformer.protocols.nexus import calibrate as cal
from privformer.protocols.nexus import he_nonlinear as hn
from privformer.protocols.nexus import matmul as mm
from privformer.protocols.nexus.layer import (
    DEFAULT_LAYER,
    EncoderLayerWeights,
    FloatOps,
    LayerConfig,
    config_from_dict,
    config_to_dict,
    encrypted_layer,
    float_layer,
    rotation_steps,
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
    # Depth-aware per-layer configurations (``calibrate``); None: ``config`` for every layer.
    configs: list[LayerConfig] | None = None
    tokens: int = 128  # positions of the encrypted layout (tokens^2 = slots)
    pad_id: int = 0
    # The encrypted one-hot argmax of the logits (NEXUS's reply), its bound calibrated.
    argmax: approx.argmax.ArgmaxConfig = approx.argmax.DEFAULT_ARGMAX

    @classmethod
    def from_hf(cls, bert: HFModel, head: torch.nn.Linear) -> NexusClassifier:
        """From a ``transformers`` ``BertModel`` and a linear head on [CLS]."""
        w = head.weight.detach().to(torch.float64).T.contiguous().numpy()
        b = head.bias.detach().to(torch.float64).numpy()
        return cls.from_encoder(read_encoder(bert), w, b)

    @classmethod
    def from_encoder(
        cls, enc: EncoderTensors, head_w: np.ndarray, head_b: np.ndarray
    ) -> NexusClassifier:
        """From an encoder's tensors (``models.encoder``) and a head (hidden x classes, classes)
        on [CLS]."""
        if enc.relative_bias is not None:
            raise UnsupportedModelError(
                "NEXUS runs BERT encoders; this one adds a relative position bias (MPNet)"
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
        return cls(
            enc.embeddings,
            layers,
            np.asarray(head_w, dtype=np.float64),
            np.asarray(head_b, dtype=np.float64),
        )

    def layer_config(self, index: int) -> LayerConfig:
        return self.configs[index] if self.configs is not None else self.config

    def calibrate(self, sequences: Sequence[Sequence[int]], margin: float = cal.MARGIN) -> None:
        """Set depth-aware per-layer configurations from the plain model on ``sequences``."""
        states: list[np.ndarray] = []
        ranges = cal.record_ranges(
            self.tables, self.layers, sequences, self.tokens, self.pad_id, states
        )
        self.configs = cal.layer_configs(ranges, self.tokens, margin)
        logits = np.stack(states) @ self.head_w + self.head_b
        self.argmax = approx.argmax.ArgmaxConfig(bound=cal.logit_bound(logits, margin))

    def embed(self, ids: Sequence[int]) -> tuple[np.ndarray, int]:
        """The client's part: (tokens x hidden) embeddings of ``ids`` padded with [PAD] (when
        per-layer configs are set; else unpadded), and the number of real tokens."""
        if self.configs is None:
            return self.tables.embed(torch.as_tensor(np.asarray(ids))).numpy(), len(ids)
        return embed_padded(self.tables, ids, self.tokens, self.pad_id)

    def logits(self, ids: Sequence[int], mode: str = "simulate") -> np.ndarray:
        """Class logits of one sequence (1-D ids, [CLS] first): ``plain`` or ``simulate``."""
        x, real = self.embed(ids)  # the client's part, (n, hidden)
        for i, layer in enumerate(self.layers):  # the server's part
            x = float_layer(x, layer, FloatOps(mode, self.layer_config(i)), real)
        return x[0] @ self.head_w + self.head_b  # (classes,)

    # --- the encrypted circuit (server side) ----------------------------------------------------
    def layout(self, backend: CKKSBackend) -> mm.TokenInterleaved:
        return mm.TokenInterleaved(self.tokens, backend.slots)

    def rotation_steps(self, slots: int) -> list[int]:
        """Every rotation key ``forward_circuit`` needs."""
        layout = mm.TokenInterleaved(self.tokens, slots)
        classes = self.head_w.shape[1]
        gather = [c * (self.tokens - 1) for c in range(1, classes)]
        argmax = hn.argmax_rotations(classes, slots)
        layers = (
            rotation_steps(layout, self.layers[0].head_dim)
            if self.layers
            else mm.rotation_steps(layout)
        )
        return sorted(set(layers) | set(gather) | set(argmax))

    def argmax_onehot(self, logits: np.ndarray) -> np.ndarray:
        """The simulate twin of the encrypted reply: NEXUS's one-hot argmax of the logits."""
        return approx.argmax.argmax_onehot(logits, self.argmax)

    def forward_circuit(
        self,
        backend: CKKSBackend,
        x: list[Ciphertext],
        real: int,
        progress: Callable[[int, str], None] | None = None,
        stats: list[dict[str, Any]] | None = None,
        output: str = "logits",
    ) -> Ciphertext:
        """Every layer and the head on the encrypted, packed embeddings ``x``; returns one
        ciphertext: with ``output="logits"`` slot c * tokens holds logit c ([CLS]'s), every other
        slot 0; with ``output="argmax"`` slots 0 .. classes-1 hold NEXUS's one-hot argmax of
        the logits (``argmax_onehot``'s twin), and the client learns only the class.

        ``progress(layer, stage)`` is called after each stage; ``stats``, if given, gets one
        ``{"seconds": ..., "bootstraps": ..., "sparse": ...}`` per layer (per stage, then the
        layer's sparse-slot bootstraps among them)."""
        if self.configs is None:
            raise InputError("the encrypted forward needs per-layer configs: call calibrate()")
        layout = self.layout(backend)
        for i, layer in enumerate(self.layers):
            seconds: dict[str, float] = {}
            boots: dict[str, int] = {}
            sparse_before = backend.sparse_bootstraps
            x = encrypted_layer(
                backend,
                x,
                layer,
                layout,
                self.configs[i],
                seconds,
                real,
                boots,
                on_stage=None if progress is None else functools.partial(progress, i),
            )
            if stats is not None:
                sparse = backend.sparse_bootstraps - sparse_before
                stats.append({"seconds": seconds, "bootstraps": dict(boots), "sparse": sparse})
        # The head on every token at once, then only [CLS]'s logits are kept: the client must
        # not get the head applied to the other tokens' states.
        bound = (self.configs[-1] if self.configs else DEFAULT_LAYER).activation_bound
        x = he.ensure_levels(backend, x, 2, "head", bound)
        out = mm.matmul_plain(backend, x, self.head_w, layout)[0]
        classes = self.head_w.shape[1]
        if output == "logits":
            keep, bias = np.zeros(backend.slots), np.zeros(backend.slots)
            keep[:: self.tokens][:classes] = 1.0
            bias[:: self.tokens][:classes] = self.head_b
            return backend.add_plain(backend.multiply_plain(out, keep), bias)
        if output != "argmax":
            raise InputError(f"unknown output {output!r}: 'logits' or 'argmax'")
        # Logit c moves from slot c * tokens to slot c (its mask and the move share one level).
        out = he.ensure_level(backend, out, 2, "argmax", self.argmax.bound)
        gathered = None
        for c in range(classes):
            select = np.zeros(backend.slots)
            select[c * self.tokens] = 1.0
            term = backend.rotate(backend.multiply_plain(out, select), c * (self.tokens - 1))
            gathered = term if gathered is None else backend.add(gathered, term)
        assert gathered is not None  # classes >= 1
        gathered = backend.add_plain(gathered, np.pad(self.head_b, (0, backend.slots - classes)))
        return hn.argmax_onehot(backend, [gathered.prefix(classes)], classes, self.argmax)[0]

    def read_logits(self, values: np.ndarray) -> np.ndarray:
        """The client's part: the logits from the decrypted reply's slots."""
        return read_logits(values, self.tokens, self.head_w.shape[1])

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
            "tokens": self.tokens,
            "argmax_bound": self.argmax.bound,
        }
        if self.configs is not None:
            configs = [config_to_dict(c) for c in self.configs]
            (server_dir / "configs.json").write_text(json.dumps(configs, indent=1))
        write_manifest(server_dir, PROTOCOL, "server", FORMAT_VERSION, **dims)
        t = self.tables
        tables = {"word": t.word, "position": t.position, "type0": t.token_type0}
        tables |= {"ln.g": t.norm[0], "ln.b": t.norm[1]}
        save_file({k: v.numpy() for k, v in tables.items()}, str(client_dir / "tables.safetensors"))
        write_manifest(
            client_dir,
            PROTOCOL,
            "client",
            FORMAT_VERSION,
            eps=t.eps,
            tokens=self.tokens,
            pad_id=self.pad_id,
        )

    @classmethod
    def load(cls, server_dir: str | Path, client_dir: str | Path) -> NexusClassifier:
        from safetensors.numpy import load_file

        dims = read_manifest(server_dir, PROTOCOL, ("server",), FORMAT_VERSION)
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
        tables, _tokens, pad_id = load_client_part(client_dir)
        configs = None
        if (Path(server_dir) / "configs.json").is_file():
            raw = json.loads((Path(server_dir) / "configs.json").read_text())
            configs = [config_from_dict(c) for c in raw]
        return cls(
            tables,
            layers,
            t["head.w"],
            t["head.b"],
            configs=configs,
            tokens=int(dims.get("tokens", 128)),
            pad_id=pad_id,
            argmax=approx.argmax.ArgmaxConfig(
                bound=float(dims.get("argmax_bound", approx.argmax.DEFAULT_ARGMAX.bound))
            ),
        )


def read_logits(values: np.ndarray, tokens: int, classes: int) -> np.ndarray:
    """The logits in a decrypted ``output="logits"`` reply: logit c sits in slot c * tokens."""
    return np.asarray(values)[::tokens][:classes]


def embed_padded(
    tables: EmbeddingTables, ids: Sequence[int], tokens: int, pad_id: int
) -> tuple[np.ndarray, int]:
    """The client's embeddings: (tokens x hidden) of ``ids`` padded with [PAD], and the number
    of real tokens."""
    padded = cal.padded(ids, tokens, pad_id)
    return tables.embed(torch.as_tensor(padded)).numpy(), len(ids)


def load_client_part(client_dir: str | Path) -> tuple[EmbeddingTables, int, int]:
    """The client folder of ``NexusClassifier.save``: (embedding tables, tokens, pad id)."""
    from safetensors.numpy import load_file

    client = read_manifest(client_dir, PROTOCOL, ("client",), FORMAT_VERSION)
    c = load_file(str(Path(client_dir) / "tables.safetensors"))
    c64 = {k: torch.from_numpy(v) for k, v in c.items()}
    tables = EmbeddingTables(
        c64["word"],
        c64["position"],
        c64["type0"],
        (c64["ln.g"], c64["ln.b"]),
        float(client["eps"]),
    )
    return tables, int(client.get("tokens", 128)), int(client.get("pad_id", 0))


__all__ = ["NexusClassifier", "embed_padded", "load_client_part", "read_logits"]

"""NEXUS's two roles over any transport: one encrypted request, one encrypted reply.

``NexusServer`` holds the encoder layers and head (``NexusClassifier``) and the key sets clients
uploaded, by id; ``NexusClient`` holds the embedding tables, the tokenizer and its secret key.

1. The server publishes its ``spec()``: backend and parameters, slots, layout, the rotation
   steps its circuit needs.
2. The client makes keys for that spec (``NexusClient.keygen``) and uploads the evaluation keys
   once (``NexusServer.register``: checked against the spec, loaded, cached under the key id,
   the SHA-256 of the public key).
3. Per query the client tokenises, embeds, pads, packs and encrypts (``request``); the server runs
   every layer, the head and (by default) NEXUS's argmax on the ciphertexts (``classify``) and
   returns one ciphertext; the client decrypts it (``read_reply``).

What each party learns: the server learns the number of real tokens (the attention key mask
depends on it; THOR's server does too), the request's and reply's sizes and its own timings;
every activation and the result are encrypted under the client's key. The client learns the
class (``output="argmax"``) or [CLS]'s logits (``output="logits"``), never the layers' weights;
it holds the embedding tables and the tokenizer (as in NEXUS and THOR).

Messages: magic, a JSON header, then length-prefixed ciphertext envelopes (``CKKSBackend``'s
serialized form, checksummed and bound to one key set). Decoding checks every length before
reading, so a truncated or lying message is a ``WireFormatError``, not a crash.
"""

from __future__ import annotations

import json
import shutil
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privformer.crypto.ckks.backend import CKKSBackend
from privformer.crypto.ckks.keys import KEY_FILES, key_set_id, load_key_set, read_key_manifest
from privformer.errors import (
    InputError,
    KeyFormatError,
    KeyMismatchError,
    UnknownKeyError,
    WireFormatError,
)
from privformer.models.encoder import EmbeddingTables
from privformer.protocols.nexus import matmul as mm
from privformer.protocols.nexus.model import (
    NexusClassifier,
    embed_padded,
    load_client_part,
    read_logits,
)

REQUEST_MAGIC = b"PFNXQ1"
REPLY_MAGIC = b"PFNXR1"
OUTPUTS = ("argmax", "logits")
#: Largest JSON header accepted (it holds a few ids and counts).
MAX_HEADER_BYTES = 1 << 16


# --- messages ----------------------------------------------------------------------------------
def encode_message(magic: bytes, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    """magic | u32 header length | header JSON | u32 blob count | (u64 length | blob) ..."""
    head = json.dumps(header).encode()
    parts = [magic, struct.pack("<I", len(head)), head, struct.pack("<I", len(blobs))]
    for blob in blobs:
        parts += [struct.pack("<Q", len(blob)), blob]
    return b"".join(parts)


def decode_message(data: bytes, magic: bytes, max_blobs: int) -> tuple[dict[str, Any], list[bytes]]:
    """The header and blobs of ``encode_message``'s bytes, every length checked first."""
    if not data.startswith(magic):
        raise WireFormatError(f"not a NEXUS message (expected magic {magic!r})")
    pos = len(magic)

    def take(size: int, what: str) -> bytes:
        nonlocal pos
        if size < 0 or pos + size > len(data):
            raise WireFormatError(f"message truncated in {what}")
        out = data[pos : pos + size]
        pos += size
        return out

    (head_len,) = struct.unpack("<I", take(4, "the header length"))
    if head_len > MAX_HEADER_BYTES:
        raise WireFormatError(f"header of {head_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(take(head_len, "the header"))
    except ValueError as exc:
        raise WireFormatError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise WireFormatError("header is not a JSON object")
    (count,) = struct.unpack("<I", take(4, "the ciphertext count"))
    if count > max_blobs:
        raise WireFormatError(f"{count} ciphertexts; at most {max_blobs} expected")
    blobs = []
    for i in range(count):
        (size,) = struct.unpack("<Q", take(8, f"ciphertext {i}'s length"))
        blobs.append(take(size, f"ciphertext {i}"))
    if pos != len(data):
        raise WireFormatError(f"{len(data) - pos} trailing bytes after the last ciphertext")
    return header, blobs


# --- spec --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendChoice:
    """Which CKKS backend a server evaluates with, and its parameters."""

    kind: str = "openfhe"  # "openfhe" (bootstrapping) or "seal" (no bootstrapping: tests)
    preset: str = "test-medium"  # SEAL's preset
    levels: int = 7  # OpenFHE: levels after each bootstrap
    chain: tuple[tuple[str, Any], ...] = ()  # OpenFHE: overrides of DEFAULT_CHAIN

    def slots(self) -> int:
        if self.kind == "seal":
            from privformer.crypto.ckks.presets import get_preset

            return get_preset(self.preset).slots
        from privformer.crypto.ckks.openfhe_backend import chain_parameters

        chain = chain_parameters(**dict(self.chain))
        return int(chain["slots"] or (chain["ring_dim"] or 1 << 16) // 2)

    def parameters(self) -> dict[str, Any]:
        """What a key set's ``keys.json`` must state to fit this choice."""
        if self.kind == "seal":
            return {"backend": "seal", "preset": self.preset}
        return {"backend": "openfhe", "levels": self.levels, "chain": dict(self.chain)}

    def make_backend(self) -> CKKSBackend:
        """A fresh backend with new keys (the client's keygen)."""
        if self.kind == "seal":
            from privformer.crypto.ckks.seal_backend import SealBackend

            return SealBackend(self.preset)
        from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend

        return OpenFHEBackend(self.levels, **dict(self.chain))


def choice_from_spec(spec: dict[str, Any]) -> BackendChoice:
    params = spec.get("parameters")
    if not isinstance(params, dict) or params.get("backend") not in KEY_FILES:
        raise WireFormatError("the server's spec names no known backend")
    if params["backend"] == "seal":
        return BackendChoice("seal", preset=str(params["preset"]))
    return BackendChoice(
        "openfhe", levels=int(params["levels"]), chain=tuple(sorted(params["chain"].items()))
    )


# --- server ------------------------------------------------------------------------------------
def _is_key_id(key_id: str) -> bool:
    """A SHA-256 in hex (also what keeps a key id from naming any other path)."""
    return len(key_id) == 64 and all(c in "0123456789abcdef" for c in key_id)


class NexusServer:
    """The server's role: spec, key registry (on disk, loaded lazily, ``max_loaded`` kept
    in memory: an OpenFHE key set takes ~16 GB loaded), and ``classify``."""

    def __init__(
        self,
        classifier: NexusClassifier,
        keys_dir: str | Path,
        backend: BackendChoice | None = None,
        name: str = "",
        max_loaded: int = 1,
    ):
        if classifier.configs is None:
            raise InputError("the encrypted forward needs a calibrated classifier (configs)")
        self.classifier, self.name = classifier, name
        self.backend = backend or BackendChoice()
        self.keys_dir = Path(keys_dir)
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, CKKSBackend] = OrderedDict()
        self._lock = threading.Lock()
        self._slots = self.backend.slots()
        self._layout = mm.TokenInterleaved(classifier.tokens, self._slots)
        self._steps = classifier.rotation_steps(self._slots)

    def spec(self) -> dict[str, Any]:
        """What a client needs to make keys and requests (public: no weights)."""
        hidden = self.classifier.tables.word.shape[1]
        return {
            "protocol": "nexus",
            "model": self.name,
            "parameters": self.backend.parameters(),
            "slots": self._slots,
            "tokens": self.classifier.tokens,
            "hidden": int(hidden),
            "blocks": self._layout.blocks(hidden),
            "classes": int(self.classifier.head_w.shape[1]),
            "layers": len(self.classifier.layers),
            "outputs": list(OUTPUTS),
            "rotation_steps": self._steps,
        }

    # --- keys ---------------------------------------------------------------------------------
    def check_key_set(self, folder: str | Path) -> str:
        """The key set's id, after checking its files and that it fits this server's spec."""
        folder = Path(folder)
        manifest = read_key_manifest(folder)
        wanted = self.backend.parameters()
        got = {k: manifest.get(k) for k in wanted}
        if manifest["backend"] == "openfhe":
            got["chain"] = dict(manifest.get("chain") or {})
        if got != wanted:
            raise KeyMismatchError(f"keys for parameters {got}; this server uses {wanted}")
        have = {int(s) % self._slots for s in manifest.get("rotation_keys", [])}
        missing = sorted({s % self._slots for s in self._steps} - have - {0})
        if missing:
            raise KeyMismatchError(
                f"the keys lack {len(missing)} rotation steps this model needs (first: "
                f"{missing[:5]}): make them from this server's spec"
            )
        names = {p.name for p in folder.iterdir()}
        needed = set(KEY_FILES[manifest["backend"]]) - ({"galois_keys.bin"} if not have else set())
        if not needed <= names:
            raise KeyFormatError(f"the key set lacks {sorted(needed - names)}")
        return key_set_id(folder)

    def register(self, folder: str | Path) -> str:
        """Adopt an uploaded key set (``folder`` is moved into the registry); returns its id.
        It is loaded once here, so broken key files are refused now, not at the first query."""
        key_id = self.check_key_set(folder)
        target = self.keys_dir / key_id
        if target.exists():  # registered before: keep that copy
            shutil.rmtree(folder, ignore_errors=True)
            return key_id
        shutil.move(str(folder), str(target))
        try:
            self._backend(key_id)
        except Exception:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return key_id

    def has_key_set(self, key_id: str) -> bool:
        """Whether a key set of this id is registered (loaded or on disk)."""
        return _is_key_id(key_id) and (key_id in self._loaded or (self.keys_dir / key_id).is_dir())

    def _backend(self, key_id: str) -> CKKSBackend:
        with self._lock:
            if key_id in self._loaded:
                self._loaded.move_to_end(key_id)
                return self._loaded[key_id]
            folder = self.keys_dir / key_id
            if not _is_key_id(key_id):
                raise UnknownKeyError(f"{key_id[:80]!r} is not a key id (64 hex digits)")
            if not folder.is_dir():
                raise UnknownKeyError(f"no key set {key_id[:16]}..: upload the keys first")
            while len(self._loaded) >= self.max_loaded:  # free memory before loading
                _, old = self._loaded.popitem(last=False)
                getattr(old, "close", lambda: None)()
            backend = load_key_set(folder)
            self._loaded[key_id] = backend
            return backend

    # --- queries ------------------------------------------------------------------------------
    def classify(
        self, request: bytes, progress: Callable[[int, str, int, float], None] | None = None
    ) -> bytes:
        """One encrypted request to one encrypted reply (``REPLY_MAGIC`` message).
        ``progress(layer, stage, bootstraps so far, seconds so far)`` is called as each stage
        ends."""
        header, blobs = decode_message(request, REQUEST_MAGIC, self._layout.blocks(1 << 20))
        key_id, output = header.get("key_id"), header.get("output", "argmax")
        real = header.get("real_tokens")
        if not isinstance(key_id, str):
            raise WireFormatError("the request names no key_id")
        if output not in OUTPUTS:
            raise InputError(f"output {output!r}: one of {OUTPUTS}")
        if not isinstance(real, int) or not 1 <= real <= self.classifier.tokens:
            raise InputError(f"real_tokens must be 1..{self.classifier.tokens}, got {real!r}")
        hidden = self.classifier.tables.word.shape[1]
        if len(blobs) != self._layout.blocks(hidden):
            raise InputError(
                f"{len(blobs)} ciphertexts; this model takes {self._layout.blocks(hidden)}"
            )
        backend = self._backend(key_id)
        x = [backend.deserialize(blob) for blob in blobs]
        start, before = time.perf_counter(), backend.bootstraps
        stats: list[dict] = []

        def stage_done(layer: int, stage: str) -> None:
            if progress is not None:
                progress(layer, stage, backend.bootstraps - before, time.perf_counter() - start)

        out = self.classifier.forward_circuit(
            backend, x, real, progress=stage_done, stats=stats, output=output
        )
        reply = {
            "output": output,
            "classes": int(self.classifier.head_w.shape[1]),
            "seconds": time.perf_counter() - start,
            "bootstraps": backend.bootstraps - before,
            "layers": stats,
        }
        return encode_message(REPLY_MAGIC, reply, [backend.serialize(out)])


# --- client ------------------------------------------------------------------------------------
@dataclass
class Reply:
    """A decrypted reply: the class, and [CLS]'s logits when the server sent logits."""

    label: int
    scores: np.ndarray  # the one-hot argmax (output "argmax") or the logits
    output: str
    server_seconds: float
    bootstraps: int


class NexusClient:
    """The client's role: keys, encrypted requests, decrypted replies."""

    SECRET_FILE = "secret_key.bin"
    EVAL_DIR = "evaluation-keys"

    @classmethod
    def from_folder(
        cls, client_dir: str | Path, spec: dict[str, Any], tokenizer: Any = None
    ) -> NexusClient:
        """From ``save_pretrained``'s client folder (tables and tokenizer)."""
        from privformer.models.registry import load_tokenizer_folder

        tables, tokens, pad_id = load_client_part(client_dir)
        tokenizer = tokenizer or load_tokenizer_folder(Path(client_dir))
        return cls(tables, tokenizer, spec, tokens, pad_id)

    def __init__(
        self,
        tables: EmbeddingTables,
        tokenizer: Any,
        spec: dict[str, Any],
        tokens: int = 128,
        pad_id: int = 0,
    ):
        """``tables``, ``tokens``, ``pad_id``: the client folder's (``load_client_part``);
        ``spec``: the server's."""
        if int(spec.get("tokens", -1)) != tokens:
            raise KeyMismatchError(
                f"the server's layout has {spec.get('tokens')} positions, this client {tokens}"
            )
        if int(spec.get("hidden", -1)) != tables.word.shape[1]:
            raise KeyMismatchError(
                f"the server's model is {spec.get('hidden')} wide, these tables "
                f"{tables.word.shape[1]}: client and server folders of different models"
            )
        self.tables, self.tokenizer, self.spec = tables, tokenizer, spec
        self.tokens, self.pad_id = tokens, pad_id
        self.layout = mm.TokenInterleaved(tokens, int(spec["slots"]))
        self.backend: CKKSBackend | None = None
        self.key_id: str | None = None

    @classmethod
    def make_keys(cls, spec: dict[str, Any], folder: str | Path) -> dict[str, int]:
        """New keys for the server's ``spec``: ``folder/evaluation-keys`` (to upload) and
        ``folder/secret_key.bin`` (stays here). Returns the evaluation-key file sizes."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        backend = choice_from_spec(spec).make_backend()
        try:
            backend.generate_rotation_keys([int(s) for s in spec["rotation_steps"]])
            sizes = backend.export_keys(folder / cls.EVAL_DIR, folder / cls.SECRET_FILE)
        finally:
            getattr(backend, "close", lambda: None)()
        return sizes

    def open_keys(self, folder: str | Path) -> str:
        """Use the keys in ``folder`` (``keygen``'s): loads the small encrypt/decrypt context;
        returns the key id the server knows them by."""
        folder = Path(folder)
        self.backend = load_key_set(folder / self.EVAL_DIR, folder / self.SECRET_FILE)
        self.key_id = key_set_id(folder / self.EVAL_DIR)
        return self.key_id

    def request(self, text: str, output: str = "argmax") -> bytes:
        """The encrypted request for ``text`` (truncated to the layout's positions)."""
        if self.backend is None or self.key_id is None:
            raise KeyFormatError("no keys opened: call keygen and open_keys first")
        if output not in OUTPUTS:
            raise InputError(f"output {output!r}: one of {OUTPUTS}")
        ids = self.tokenizer(text, truncation=True, max_length=self.tokens)
        x, real = embed_padded(self.tables, ids["input_ids"], self.tokens, self.pad_id)
        cts = [self.backend.encrypt(v) for v in self.layout.pack(x)]
        header = {"key_id": self.key_id, "real_tokens": real, "output": output}
        return encode_message(REQUEST_MAGIC, header, [self.backend.serialize(c) for c in cts])

    def read_reply(self, data: bytes) -> Reply:
        """Decrypt the server's reply."""
        if self.backend is None:
            raise KeyFormatError("no keys opened: call open_keys first")
        header, blobs = decode_message(data, REPLY_MAGIC, 1)
        classes = int(self.spec["classes"])
        if len(blobs) != 1 or header.get("output") not in OUTPUTS:
            raise WireFormatError("a reply holds one ciphertext and names its output")
        values = self.backend.decrypt(self.backend.deserialize(blobs[0]))
        if header["output"] == "logits":
            scores = read_logits(values, self.tokens, classes)
        else:
            scores = np.asarray(values[:classes])
        if scores.shape != (classes,) or not np.isfinite(scores).all():
            raise WireFormatError(f"the reply does not decrypt to {classes} finite scores")
        return Reply(
            int(np.argmax(scores)),
            scores,
            str(header["output"]),
            float(header.get("seconds", 0.0)),
            int(header.get("bootstraps", 0)),
        )

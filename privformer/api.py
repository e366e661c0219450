"""One API for the three protocols, modelled on Concrete-ML's modes and transformers' folders.

    import privformer as pf
    model = pf.load("minilm-rt-probe", protocol="cipherprune")   # or "stip", "nexus"
    result = model.predict(["a delight"], mode="plain" | "simulate" | "private")
    model.save_pretrained("out/")          # out/server/ and out/client/ (+ out/dealer/)
    client = pf.Client.from_pretrained("out/client", server="127.0.0.1:7200", dealer=...)
    client.predict(["a delight"])

Modes: ``plain`` runs the exact model in float; ``simulate`` runs exactly the private run's
arithmetic in float (STIP: the permuted model; NEXUS and CipherPrune: their approximations and
pruning); ``private`` runs the protocol (STIP: an HTTP server in a child process; CipherPrune:
2PC with the dealer and server in threads, over localhost TCP; NEXUS: not yet, it raises).

``Result`` is the same for every protocol: outputs (logits, or sentence embeddings for a STIP
encoder), seconds, the client's bytes and rounds, and what the protocol revealed.

Model names: ``minilm-rt-probe`` (a sentence classifier, all three protocols), ``minilm-rt`` and
``mpnet-rt`` (CipherPrune's fine-tuned classifiers, after ``privformer cipherprune train
[--base mpnet]``; NEXUS runs ``minilm-rt`` too, and ``minilm2-rt`` / ``minilm2-rt-probe``, its
2-layer models), and for STIP any
name the model registry resolves (``minilm``, ``smollm2``, ``random:NAME``, a local folder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from privformer.artifacts import read_manifest, write_manifest
from privformer.errors import (
    ArtifactError,
    InputError,
    UnknownNameError,
    UnsupportedModelError,
)

PROTOCOLS = ("stip", "nexus", "cipherprune")
FORMAT_VERSION = 1


class Mode(StrEnum):
    """How ``predict`` runs; a plain string is accepted wherever a mode is."""

    PLAIN = "plain"
    SIMULATE = "simulate"
    PRIVATE = "private"

    @classmethod
    def parse(cls, value: Mode | str) -> Mode:
        if isinstance(value, Mode):
            return value
        text = str(value).lower()
        if text == "encrypted":  # CipherPrune's earlier name for the private mode
            return cls.PRIVATE
        try:
            return cls(text)
        except ValueError:
            raise UnknownNameError(
                f"unknown mode {value!r}; choose one of {[m.value for m in cls]}"
            ) from None


@dataclass
class Result:
    """What one ``predict`` call produced, in the same form for every protocol."""

    protocol: str
    mode: Mode
    outputs: torch.Tensor  # (texts, classes) logits, or (texts, hidden) STIP embeddings
    seconds: float
    bytes_sent: int = 0  # by the client, over the wire (0 in plain and simulate modes)
    bytes_received: int = 0
    rounds: int = 0
    revealed: dict[str, Any] = field(default_factory=dict)  # e.g. tokens kept per layer

    @property
    def labels(self) -> list[int]:
        """The argmax class of each text (classifiers)."""
        return self.outputs.argmax(dim=-1).tolist()


def _texts(texts: str | list[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items or not all(isinstance(t, str) for t in items):
        raise InputError("predict takes a non-empty list of strings")
    return items


class PrivateModel(ABC):
    """A model that one protocol can run in ``plain``, ``simulate`` and ``private`` modes."""

    protocol: str
    name: str

    def predict(self, texts: str | list[str], mode: Mode | str = Mode.SIMULATE) -> Result:
        """Run ``texts`` in ``mode``; returns one ``Result`` for all of them."""
        mode, items = Mode.parse(mode), _texts(texts)
        start = time.perf_counter()
        result = self._predict(items, mode)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _predict(self, texts: list[str], mode: Mode) -> Result: ...

    @abstractmethod
    def save_pretrained(self, out: str | Path) -> Path:
        """Write the deployment folders under ``out`` and ``out/privformer.json``."""

    def _write_root(self, out: Path, **fields: Any) -> None:
        write_manifest(out, self.protocol, "deployment", FORMAT_VERSION, model=self.name, **fields)


# --- STIP ------------------------------------------------------------------------------------
def _stip_outputs(hidden: list[torch.Tensor], head: torch.nn.Linear | None) -> torch.Tensor:
    """Per text (tokens, hidden) states to logits (the head on [CLS]) or, with no head,
    mean-pooled, normalised sentence embeddings."""
    from privformer.models.pooling import mean_pool

    with torch.inference_mode():
        if head is not None:
            return head(torch.stack([h[0] for h in hidden]))  # (texts, classes)
        return torch.stack([mean_pool(h[None], torch.ones(1, h.shape[0]))[0] for h in hidden])


def _unpad(states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """(texts, tokens, hidden) padded states to one (n_i, hidden) tensor per text."""
    return [states[i, : int(n)] for i, n in enumerate(mask.sum(dim=1).tolist())]


class StipModel(PrivateModel):
    """STIP on an encoder (sentence embeddings) or an encoder classifier (logits).

    For a classifier the encoder is permuted and served; the linear head on [CLS] runs on the
    user's side after un-permuting (like v1's LM head), so the user holds the head.
    """

    protocol = "stip"

    def __init__(self, name: str, scheme: str = "v2"):
        from privformer.models.classifiers import PROBE, load_classifier
        from privformer.models.registry import load_model, load_tokenizer

        self.name, self.scheme = name, scheme
        self.head: torch.nn.Linear | None
        if name == PROBE:
            clf = load_classifier(name)
            self.base, self.head = clf.base, clf.head
            self.encoder, self.tokenizer = clf.encoder, clf.tokenizer
        else:
            self.base, self.head = name, None  # an encoder: sentence embeddings
            self.encoder, self.tokenizer = load_model(name), load_tokenizer(name)
        if getattr(self.encoder.config, "is_decoder", False) or hasattr(self.encoder, "lm_head"):
            raise UnsupportedModelError(
                "pf.load(..., protocol='stip') runs encoders; for decoders use "
                "`privformer stip export` and `privformer stip query --prompt`"
            )
        self._export: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def _exported(self) -> Any:
        """The export (once per model), with its user and cloud loaded in this process."""
        if self._export is None:
            from privformer.protocols.stip.cloud import StipCloud
            from privformer.protocols.stip.export import export
            from privformer.protocols.stip.user import StipUser

            self._tmp = tempfile.TemporaryDirectory(prefix="privformer-stip-")
            self._export = export(self.base, self._tmp.name, scheme=self.scheme, progress=False)
            self._user = StipUser(self._export.user_dir)
            self._cloud = StipCloud(self._export.cloud_dir)
        return self._export

    def _predict(self, texts: list[str], mode: Mode) -> Result:
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        mask = enc["attention_mask"]
        if mode is Mode.PLAIN:
            with torch.inference_mode():
                hidden = _unpad(self.encoder(**enc).last_hidden_state, mask)
            return Result(self.protocol, mode, _stip_outputs(hidden, self.head), 0.0)
        export = self._exported()
        if mode is Mode.SIMULATE:  # the permuted model in this process: the cloud's arithmetic
            user, cloud = self._user, self._cloud
            embeds = user.embed(enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
            y = cloud.forward(user.permute(embeds), mask)["last_hidden_state"]
            hidden = _unpad(user.unpermute_hidden(y), mask)
            return Result(self.protocol, mode, _stip_outputs(hidden, self.head), 0.0)
        from privformer.transport.stip_client import StipClient
        from privformer.transport.stip_server import ServerProcess

        with (
            ServerProcess(export.cloud_dir) as server,
            StipClient(export.user_dir, server.url) as c,
        ):
            hidden = c.hidden_states(texts)
            stats = c.stats
        return Result(
            self.protocol,
            mode,
            _stip_outputs(hidden, self.head),
            0.0,
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            rounds=stats.requests,
            revealed={"tokens": [int(h.shape[0]) for h in hidden], "attention_maps": True},
        )

    def save_pretrained(self, out: str | Path) -> Path:
        """``out/cloud/`` (the server's permuted checkpoint) and ``out/user/`` (the key)."""
        from privformer.protocols.stip.export import export

        out = Path(out)
        result = export(self.base, out, scheme=self.scheme, progress=False)
        if self.head is not None:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
            save_file(state, str(result.user_dir / "head.safetensors"))
        self._write_root(out, server="cloud", client="user", scheme=self.scheme)
        return out


# --- CipherPrune -----------------------------------------------------------------------------
#: CipherPrune's fine-tuned classifiers (``privformer cipherprune train --base BASE``): name ->
#: base encoder.
CIPHERPRUNE_TRAINED = {"minilm-rt": "minilm", "mpnet-rt": "mpnet"}


class CipherPruneModel(PrivateModel):
    """CipherPrune's classifier: 2PC with encrypted token pruning."""

    protocol = "cipherprune"

    def __init__(self, name: str, max_length: int = 128):
        from privformer.models.classifiers import PROBE, load_classifier
        from privformer.protocols.cipherprune.model import BertClassifierWeights, PruningConfig
        from privformer.protocols.cipherprune.session import CipherPruneClassifier

        self.name, self.max_length = name, max_length
        if name == PROBE:
            clf = load_classifier(name)
            weights = BertClassifierWeights.from_hf(clf.encoder, clf.head)
            # A probe has no learned thresholds: the fixed rule of the tests (keep tokens that
            # receive more than 0.4/32 of the attention, accurate above 1/32).
            pruning = PruningConfig([0.4 / 32] * weights.layers, [1.0 / 32] * weights.layers)
            self.classifier = CipherPruneClassifier(weights, pruning, clf.tokenizer)
        elif name in CIPHERPRUNE_TRAINED:
            from privformer.protocols.cipherprune.train import default_classifier_dir

            folder = default_classifier_dir(CIPHERPRUNE_TRAINED[name])
            if not (folder / "config.json").is_file():
                raise UnknownNameError(
                    f"{name!r} is not built yet: run `privformer cipherprune train --base "
                    f"{CIPHERPRUNE_TRAINED[name]}` first"
                )
            self.classifier = CipherPruneClassifier.load(folder)
        elif Path(name).is_dir():
            self.classifier = CipherPruneClassifier.load(name)
        else:
            raise UnknownNameError(
                f"no CipherPrune model {name!r}: use {PROBE}, {', '.join(CIPHERPRUNE_TRAINED)} "
                "or a classifier folder"
            )

    def _predict(self, texts: list[str], mode: Mode) -> Result:
        logits, totals = [], {"bytes_sent": 0, "bytes_recv": 0, "rounds": 0}
        revealed: dict[str, Any] = {"tokens_per_layer": [], "padded_length": self.max_length}
        for text in texts:
            ids, mask = self.classifier.encode(text, self.max_length)
            run_mode = "encrypted" if mode is Mode.PRIVATE else mode.value
            out = self.classifier.run(ids, mask, run_mode)
            logits.append(out.logits.to(torch.float64))
            revealed["tokens_per_layer"].append(out.trace.tokens_per_layer)
            for key in totals:
                totals[key] += int(out.stats.get("total", {}).get(key, 0))
        return Result(
            self.protocol,
            mode,
            torch.stack(logits),
            0.0,
            bytes_sent=totals["bytes_sent"],
            bytes_received=totals["bytes_recv"],
            rounds=totals["rounds"],
            revealed=revealed if mode is Mode.PRIVATE else {},
        )

    def save_pretrained(self, out: str | Path) -> Path:
        """``out/server/`` (weights, thresholds), ``out/client/`` (card, tokenizer) and
        ``out/dealer/``."""
        from privformer.models.registry import load_tokenizer
        from privformer.protocols.cipherprune import secure
        from privformer.protocols.cipherprune.format import (
            encoder_name,
            save_classifier,
            save_client,
            save_dealer,
        )

        out = Path(out)
        clf = self.classifier
        save_classifier(clf.weights, clf.pruning, out / "server")
        card = {**secure.model_card(clf.weights, clf.pruning), "max_length": self.max_length}
        tokenizer = clf.tokenizer or load_tokenizer(encoder_name(clf.weights))
        save_client(out / "client", card, tokenizer)
        save_dealer(out / "dealer")
        self._write_root(out, server="server", client="client", dealer="dealer")
        return out


# --- NEXUS -----------------------------------------------------------------------------------
class NexusModel(PrivateModel):
    """NEXUS's classifier: the client embeds, the server runs the encoder and head under CKKS.

    ``private`` mode runs client and server processes on OpenFHE (slow: see ``_private``).
    """

    protocol = "nexus"

    def __init__(
        self,
        name: str,
        classifier: Any = None,
        tokenizer: Any = None,
        operators: str = "depth-aware",
        tokens: int = 128,
    ):
        """``tokens``: positions of the encrypted layout (a power of two, tokens^2 dividing the
        slots); longer texts are truncated to it, and the server learns which layout is used."""
        from privformer.models.classifiers import FINE_TUNED_2_LAYERS, PROBE_LAYERS, load_classifier
        from privformer.protocols.nexus.model import NexusClassifier

        self.name = name
        if classifier is not None:
            self.classifier, self.tokenizer = classifier, tokenizer
        elif name in PROBE_LAYERS or name == FINE_TUNED_2_LAYERS or name in CIPHERPRUNE_TRAINED:
            if tokens < 2 or tokens & (tokens - 1):
                raise InputError(f"tokens must be a power of two >= 2, got {tokens}")
            if name in CIPHERPRUNE_TRAINED:
                self.classifier, self.tokenizer, key = _nexus_from_cipherprune(name)
            else:
                clf = load_classifier(name)
                self.classifier = NexusClassifier.from_hf(clf.encoder, clf.head)
                self.tokenizer, key = clf.tokenizer, name
            self.classifier.tokens = tokens
            self.classifier.pad_id = int(self.tokenizer.pad_token_id)
            if operators == "depth-aware":
                _calibrate(key, self.classifier, self.tokenizer)
        else:
            known = ", ".join([*PROBE_LAYERS, FINE_TUNED_2_LAYERS, "minilm-rt"])
            raise UnknownNameError(f"no NEXUS model {name!r}: use {known}")
        if operators not in ("depth-aware", "paper"):
            raise UnknownNameError(f"unknown operators {operators!r}: 'depth-aware' or 'paper'")
        if operators == "paper":
            self.classifier.configs = None

    def _predict(self, texts: list[str], mode: Mode) -> Result:
        if mode is Mode.PRIVATE:
            return self._private(texts)
        rows = []
        for text in texts:
            ids = self.tokenizer(text, truncation=True, max_length=self.classifier.tokens)
            rows.append(torch.from_numpy(self.classifier.logits(ids["input_ids"], mode.value)))
        return Result(self.protocol, mode, torch.stack(rows), 0.0)

    def _private(self, texts: list[str]) -> Result:
        """Client and server processes on OpenFHE: this deployment saved, served by a child
        process, keys made here (in the cache, by model) and uploaded once. Slow: about 75
        minutes per sentence for a 2-layer MiniLM on 2 cores (docs/nexus.md)."""
        from privformer.models.registry import cache_dir
        from privformer.protocols.nexus.service import NexusClient
        from privformer.transport.nexus_http import NexusHttpClient, NexusServerProcess

        c = self.classifier
        with tempfile.TemporaryDirectory() as tmp:
            deployment = self.save_pretrained(Path(tmp) / "deployment")
            options = ["--keys-dir", str(Path(tmp) / "registry")]
            with (
                NexusServerProcess(str(deployment), options=options) as server,
                NexusHttpClient(server.url) as http,
            ):
                spec = http.spec()
                client = NexusClient(c.tables, self.tokenizer, spec, c.tokens, c.pad_id)
                keys = cache_dir() / "nexus-client-keys" / self.name
                return _nexus_queries(http, client, keys, texts)

    def save_pretrained(self, out: str | Path) -> Path:
        """``out/server/`` (layers and head) and ``out/client/`` (embedding tables, tokenizer)."""
        out = Path(out)
        self.classifier.save(out / "server", out / "client")
        self.tokenizer.save_pretrained(out / "client")
        self._write_root(out, server="server", client="client")
        return out


def _nexus_from_cipherprune(name: str) -> tuple[Any, Any, str]:
    """NEXUS's classifier from CipherPrune's fine-tuned one (``privformer cipherprune train``):
    the same BERT and head, without the pruning thresholds NEXUS does not use. Returns the
    classifier, its tokenizer and the key its calibration is cached under (name and a digest of
    the weights, so a retrained classifier is calibrated anew)."""
    from privformer.protocols.cipherprune.session import CipherPruneClassifier
    from privformer.protocols.cipherprune.train import default_classifier_dir
    from privformer.protocols.nexus.model import NexusClassifier

    folder = default_classifier_dir(CIPHERPRUNE_TRAINED[name])
    weights_file = folder / "weights.safetensors"
    if not weights_file.is_file():
        raise UnknownNameError(
            f"{name!r} is not built yet: run `privformer cipherprune train --base "
            f"{CIPHERPRUNE_TRAINED[name]}` first"
        )
    cp = CipherPruneClassifier.load(folder)
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:12]
    w = cp.weights
    clf = NexusClassifier.from_encoder(
        w.encoder(), w.tensors["head.w"].numpy(), w.tensors["head.b"].numpy()
    )
    return clf, cp.tokenizer, f"{name}-{digest}"


def _nexus_queries(http: Any, client: Any, keys: Path, texts: list[str]) -> Result:
    """Encrypted NEXUS queries of ``texts`` (logits), with the keys in ``keys``: made there
    for the server's spec if missing or for other parameters, uploaded if the server lacks them."""
    import json

    from privformer.protocols.nexus.service import NexusClient

    spec_file = keys / "spec.json"
    if not spec_file.is_file() or json.loads(spec_file.read_text()) != http.spec():
        shutil.rmtree(keys, ignore_errors=True)
        NexusClient.make_keys(client.spec, keys)
        spec_file.write_text(json.dumps(client.spec))
    key_id = client.open_keys(keys)
    if not http.has_keys(key_id):
        http.upload_keys(keys / NexusClient.EVAL_DIR)
    logits, sent, received, real = [], 0, 0, []
    for text in texts:
        request = client.request(text, output="logits")
        reply = http.classify(request)
        logits.append(torch.from_numpy(client.read_reply(reply).scores))
        sent, received = sent + len(request), received + len(reply)
        real.append(
            len(client.tokenizer(text, truncation=True, max_length=client.tokens)["input_ids"])
        )
    return Result(
        "nexus",
        Mode.PRIVATE,
        torch.stack(logits),
        0.0,
        sent,
        received,
        len(texts),
        {"tokens": real},
    )


#: Rotten Tomatoes training sentences the depth-aware NEXUS ranges are calibrated on: the first
#: ones, and the shortest and longest of the whole split (the extremes of attention: a 4-token
#: test sentence, "eh .", once left the centred scores' range calibrated on the first 256).
NEXUS_CALIBRATION_SENTENCES = 256
NEXUS_CALIBRATION_EXTREMES = 32
#: Bumped when calibration's rules change, so cached calibrations made by older rules are redone.
NEXUS_CALIBRATION_VERSION = 3


def _calibrate(name: str, classifier: Any, tokenizer: Any) -> None:
    """Set a built-in classifier's depth-aware per-layer configs and argmax bound, calibrated
    once on Rotten Tomatoes training sentences and cached by model and layout."""
    import json

    from privformer.approx.argmax import ArgmaxConfig
    from privformer.data import rotten_tomatoes_split
    from privformer.models.registry import cache_dir
    from privformer.protocols.nexus.layer import config_from_dict, config_to_dict

    path = cache_dir() / "nexus" / f"{name}-{classifier.tokens}-tokens-calibration.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("version") == NEXUS_CALIBRATION_VERSION:
            classifier.configs = [config_from_dict(c) for c in cached["configs"]]
            classifier.argmax = ArgmaxConfig(bound=float(cached["argmax_bound"]))
            return
    every = [
        tokenizer(t, truncation=True, max_length=classifier.tokens)["input_ids"]
        for t, _ in rotten_tomatoes_split()[0]
    ]
    by_length = sorted(range(len(every)), key=lambda i: (len(every[i]), i))
    extremes = by_length[:NEXUS_CALIBRATION_EXTREMES] + by_length[-NEXUS_CALIBRATION_EXTREMES:]
    chosen = sorted(set(range(NEXUS_CALIBRATION_SENTENCES)) | set(extremes))
    classifier.calibrate([every[i] for i in chosen])
    cached = {
        "version": NEXUS_CALIBRATION_VERSION,
        "configs": [config_to_dict(c) for c in classifier.configs],
        "argmax_bound": classifier.argmax.bound,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    tmp.replace(path)  # atomic: a concurrent loader sees the whole file or none


# --- entry points ----------------------------------------------------------------------------
def load(name_or_path: str | Path, protocol: str | None = None, **options: Any) -> PrivateModel:
    """A model ready for ``predict`` under ``protocol``, by name or from ``save_pretrained``'s
    folder (whose manifest names the protocol). ``options``: STIP ``scheme``; CipherPrune
    ``max_length`` (the public padded length)."""
    path = Path(name_or_path)
    if (path / "privformer.json").is_file():
        root = read_manifest(path, roles=("deployment",), format_version=FORMAT_VERSION)
        if protocol is not None and protocol != root["protocol"]:
            raise ArtifactError(f"{path} holds a {root['protocol']!r} deployment, not {protocol!r}")
        protocol = str(root["protocol"])
        if protocol == "cipherprune":
            from privformer.protocols.cipherprune.format import load_client_card

            card = load_client_card(path / root["client"])
            options.setdefault("max_length", int(card.get("max_length", 128)))
            return CipherPruneModel(str(path / root["server"]), **options)
        if protocol == "nexus":
            from privformer.models.registry import load_tokenizer_folder
            from privformer.protocols.nexus.model import NexusClassifier

            clf = NexusClassifier.load(path / root["server"], path / root["client"])
            return NexusModel(root["model"], clf, load_tokenizer_folder(path / root["client"]))
        raise ArtifactError(
            f"{path} is a STIP export: it holds no plain weights to load back; use "
            f"pf.Client.from_pretrained('{path / 'user'}', server=URL)"
        )
    if protocol not in PROTOCOLS:
        raise UnknownNameError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if protocol == "stip":
        return StipModel(str(name_or_path), **options)
    if protocol == "cipherprune":
        return CipherPruneModel(str(name_or_path), **options)
    return NexusModel(str(name_or_path), **options)


class Client:
    """The client's side of a deployment, against a running server."""

    def __init__(self, path: Path, protocol: str, server: str, dealer: str | None):
        self.path, self.protocol, self.server, self.dealer = path, protocol, server, dealer

    @classmethod
    def from_pretrained(cls, path: str | Path, server: str, dealer: str | None = None) -> Client:
        """``path``: the client folder of ``save_pretrained`` (STIP: ``user/``). ``server``:
        an HTTP URL (STIP) or HOST:PORT (CipherPrune, which also needs ``dealer``)."""
        path = Path(path)
        manifest = read_manifest(path, roles=("client", "user"))
        protocol = str(manifest["protocol"])
        if protocol == "cipherprune" and dealer is None:
            raise InputError("a CipherPrune client needs dealer='HOST:PORT'")
        return cls(path, protocol, server, dealer)

    def predict(self, texts: str | list[str]) -> Result:
        items, start = _texts(texts), time.perf_counter()
        if self.protocol == "nexus":
            result = self._nexus(items)
        elif self.protocol == "stip":
            result = self._stip(items)
        else:
            result = self._cipherprune(items)
        result.seconds = time.perf_counter() - start
        return result

    def _nexus(self, texts: list[str]) -> Result:
        from privformer.models.registry import cache_dir
        from privformer.protocols.nexus.service import NexusClient
        from privformer.transport.nexus_http import NexusHttpClient

        with NexusHttpClient(self.server) as http:
            client = NexusClient.from_folder(self.path, http.spec())
            digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
            keys = cache_dir() / "nexus-client-keys" / digest
            return _nexus_queries(http, client, keys, texts)

    def _stip(self, texts: list[str]) -> Result:
        from privformer.transport.stip_client import StipClient

        with StipClient(self.path, self.server) as client:
            hidden = client.hidden_states(texts)
            stats = client.stats
        head = None
        if (self.path / "head.safetensors").is_file():  # a classifier: the user holds the head
            from safetensors.torch import load_file

            state = load_file(str(self.path / "head.safetensors"))
            head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
            head.load_state_dict(state)
        return Result(
            "stip",
            Mode.PRIVATE,
            _stip_outputs(hidden, head),
            0.0,
            stats.bytes_sent,
            stats.bytes_received,
            stats.requests,
            {"tokens": [int(h.shape[0]) for h in hidden], "attention_maps": True},
        )

    def _cipherprune(self, texts: list[str]) -> Result:
        from privformer.models.registry import load_tokenizer_folder
        from privformer.protocols.cipherprune.format import load_client_card
        from privformer.protocols.cipherprune.session import encode_text
        from privformer.transport.cipherprune import classify_remote, parse_address

        card = load_client_card(self.path)
        tokenizer = load_tokenizer_folder(self.path)
        server, dealer = parse_address(self.server), parse_address(str(self.dealer))
        logits, sent, recv, rounds, kept = [], 0, 0, 0, []
        for text in texts:
            ids, mask = encode_text(text, int(card.get("max_length", 128)), tokenizer)
            out = classify_remote(ids, mask, server, dealer, vocab=len(tokenizer))
            logits.append(out.logits.to(torch.float64))
            total = out.stats.get("total", {})
            sent += int(total.get("bytes_sent", 0))
            recv += int(total.get("bytes_recv", 0))
            rounds += int(total.get("rounds", 0))
            kept.append(out.trace.tokens_per_layer)
        return Result(
            "cipherprune",
            Mode.PRIVATE,
            torch.stack(logits),
            0.0,
            sent,
            recv,
            rounds,
            {"tokens_per_layer": kept, "padded_length": int(card.get("max_length", 128))},
        )


__all__ = ["Client", "Mode", "PrivateModel", "Result", "load"]

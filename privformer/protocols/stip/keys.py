"""The user's key file ``user.key`` and the model fingerprint that binds it to one cloud model.

``user.key`` is a safetensors file (no pickle, so loading it runs no code):
- tensor ``pi``: int64, shape (hidden_size,), the residual-stream permutation;
- tensor ``pi_c``: int64, shape (vocab_size,), scheme v2 with an LM head only;
- metadata: ``format`` = ``privformer-stip-key``, ``version`` = ``1``, ``scheme``, ``family``,
  ``hidden_size``, ``vocab_size`` and ``model_fingerprint``.
Convention: ``x_permuted = x[..., pi]`` and ``logits_permuted = logits[..., pi_c]``.

The fingerprint is a SHA-256 over the cloud checkpoint's ``config.json`` and weight files, so a
key used against another model (or another export of the same model) is refused before any
request leaves the user.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from privformer.errors import KeyFormatError, KeyMismatchError
from privformer.protocols.stip.permutations import inverse, is_permutation

KEY_FORMAT = "privformer-stip-key"
KEY_VERSION = "1"


def fingerprint_checkpoint(checkpoint_dir: str | Path) -> str:
    """SHA-256 (hex) over a checkpoint's config.json and ``*.safetensors`` files, in name order."""
    root = Path(checkpoint_dir)
    files = [root / "config.json", *sorted(root.glob("*.safetensors"))]
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise KeyFormatError(f"checkpoint file missing: {path}")
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class UserKey:
    """The user's share of a STIP secret: pi (and pi_c) plus what model they belong to."""

    scheme: str
    family: str
    hidden_size: int
    vocab_size: int
    model_fingerprint: str
    pi: torch.Tensor
    pi_c: torch.Tensor | None = None

    @property
    def pi_inverse(self) -> torch.Tensor:
        return inverse(self.pi)

    @property
    def pi_c_inverse(self) -> torch.Tensor | None:
        return None if self.pi_c is None else inverse(self.pi_c)

    def check_model(self, fingerprint: str, hidden_size: int, scheme: str) -> None:
        """Refuse a model whose fingerprint, hidden size or scheme differ from the key's."""
        if fingerprint != self.model_fingerprint:
            raise KeyMismatchError(
                f"this key belongs to model {self.model_fingerprint[:16]}..., the server runs "
                f"{fingerprint[:16]}...: use the user/ folder exported with this cloud model"
            )
        if hidden_size != self.hidden_size or scheme != self.scheme:
            raise KeyMismatchError(
                f"key is for hidden size {self.hidden_size} / scheme {self.scheme}, server has "
                f"{hidden_size} / {scheme}"
            )

    def save(self, path: str | Path) -> None:
        tensors = {"pi": self.pi.contiguous()}
        if self.pi_c is not None:
            tensors["pi_c"] = self.pi_c.contiguous()
        save_file(
            tensors,
            str(path),
            metadata={
                "format": KEY_FORMAT,
                "version": KEY_VERSION,
                "scheme": self.scheme,
                "family": self.family,
                "hidden_size": str(self.hidden_size),
                "vocab_size": str(self.vocab_size),
                "model_fingerprint": self.model_fingerprint,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> UserKey:
        """Read and validate a key file; any defect raises ``KeyFormatError`` naming it."""
        path = Path(path)
        if not path.is_file():
            raise KeyFormatError(f"key file not found: {path}")
        try:  # one read: tensors and metadata from the same handle
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise KeyFormatError(f"{path} is not a readable key file: {exc}") from exc
        if meta.get("format") != KEY_FORMAT:
            raise KeyFormatError(
                f"{path} is not a privformer STIP key (format={meta.get('format')!r})"
            )
        if meta.get("version") != KEY_VERSION:
            raise KeyFormatError(
                f"{path} has key version {meta.get('version')!r}, need {KEY_VERSION}"
            )
        try:
            hidden, vocab = int(meta["hidden_size"]), int(meta["vocab_size"])
            key = cls(
                scheme=meta["scheme"],
                family=meta["family"],
                hidden_size=hidden,
                vocab_size=vocab,
                model_fingerprint=meta["model_fingerprint"],
                pi=tensors["pi"],
                pi_c=tensors.get("pi_c"),
            )
        except (KeyError, ValueError) as exc:
            raise KeyFormatError(f"{path} lacks a field: {exc}") from exc
        if not is_permutation(key.pi, hidden):
            raise KeyFormatError(f"{path}: pi is not a permutation of {hidden} indices")
        if key.pi_c is not None and not is_permutation(key.pi_c, vocab):
            raise KeyFormatError(f"{path}: pi_c is not a permutation of {vocab} indices")
        return key

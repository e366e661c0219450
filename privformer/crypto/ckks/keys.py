"""Key sets on disk: what a CKKS client exports for a server, and how either side loads it.

A key set is a folder with ``keys.json`` (which backend, its parameters, the rotation steps
with keys, each file's size) and the backend's evaluation-key files: public, relinearisation,
rotation and (OpenFHE) bootstrapping keys. The secret key is never in it: a backend's
``export_keys`` writes it to a separate path that stays with the client. A key set's id is
the SHA-256 of its public key, so the client knows the id of what it uploads and a server can
verify it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from privformer.crypto.ckks.backend import CKKSBackend
from privformer.errors import KeyFormatError

#: The evaluation-key files of each backend (besides ``keys.json``).
KEY_FILES: dict[str, tuple[str, ...]] = {
    "seal": ("public_key.bin", "relin_keys.bin", "galois_keys.bin"),
    "openfhe": ("context.bin", "public_key.bin", "mult_key.bin", "automorphism_keys.bin"),
}


def read_key_manifest(folder: str | Path) -> dict[str, Any]:
    """``keys.json`` of a key set, checked to name a known backend."""
    path = Path(folder) / "keys.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFormatError(f"{folder} is not a key set: {path.name}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("backend") not in KEY_FILES:
        raise KeyFormatError(f"{path} names no known backend (one of {sorted(KEY_FILES)})")
    return manifest


def key_set_id(folder: str | Path) -> str:
    """The key set's id: SHA-256 of its public key file (hex)."""
    digest = hashlib.sha256()
    try:
        with open(Path(folder) / "public_key.bin", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise KeyFormatError(f"{folder} has no readable public key: {exc}") from exc
    return digest.hexdigest()


def load_key_set(folder: str | Path, secret_path: str | Path | None = None) -> CKKSBackend:
    """A backend from a key set: without ``secret_path`` the server's (evaluates, cannot
    decrypt), with it the client's (encrypts and decrypts)."""
    kind = read_key_manifest(folder)["backend"]
    if kind == "seal":
        from privformer.crypto.ckks.seal_backend import SealBackend

        return SealBackend.from_keys(folder, secret_path)
    from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend

    return OpenFHEBackend.from_keys(folder, secret_path)

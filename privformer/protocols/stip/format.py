"""STIP's artifact format: the file names of an export and its format version.

An export has two folders, named after the paper's roles:
- ``cloud/``: an ordinary Hugging Face checkpoint of the permuted model (embedding tables
  zeroed) and ``privformer.json`` (protocol, role, format version, scheme, task, sizes,
  fingerprint);
- ``user/``: ``user.key`` (pi, pi_c), ``user_model.safetensors`` (the tables the user runs),
  ``user_config.json``, the tokenizer files and ``privformer.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privformer.artifacts import MANIFEST, read_manifest, write_manifest

PROTOCOL = "stip"
FORMAT_VERSION = 1
USER_CONFIG = "user_config.json"
USER_MODEL = "user_model.safetensors"
KEY_FILE = "user.key"
CLOUD_ROLE, USER_ROLE = "cloud", "user"


def write(folder: str | Path, role: str, **fields: Any) -> dict[str, Any]:
    """Write a STIP folder's ``privformer.json`` (role ``cloud`` or ``user``)."""
    return write_manifest(folder, PROTOCOL, role, FORMAT_VERSION, **fields)


def read(folder: str | Path, role: str) -> dict[str, Any]:
    """A STIP folder's manifest, refused unless it is STIP's, of ``role`` and this format."""
    return read_manifest(folder, PROTOCOL, (role,), FORMAT_VERSION)


__all__ = [
    "CLOUD_ROLE",
    "FORMAT_VERSION",
    "KEY_FILE",
    "MANIFEST",
    "PROTOCOL",
    "USER_CONFIG",
    "USER_MODEL",
    "USER_ROLE",
    "read",
    "write",
]

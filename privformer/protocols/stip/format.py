"""STIP's artifact format: the file names of an export and its format version.

An export has two folders, named after the paper's roles:
- ``cloud/``: an ordinary Hugging Face checkpoint of the permuted model (embedding tables
  zeroed) and ``privformer.json`` (protocol, role, format version, scheme, task, sizes,
  fingerprint);
- ``user/``: ``user.key`` (pi, pi_c), ``user_model.safetensors`` (the tables the user runs),
  ``user_config.json``, the tokenizer files and ``privformer.json``.
"""

from __future__ import annotations

from privformer.artifacts import MANIFEST

PROTOCOL = "stip"
FORMAT_VERSION = 1
USER_CONFIG = "user_config.json"
USER_MODEL = "user_model.safetensors"
KEY_FILE = "user.key"
CLOUD_ROLE, USER_ROLE = "cloud", "user"

__all__ = [
    "CLOUD_ROLE",
    "FORMAT_VERSION",
    "KEY_FILE",
    "MANIFEST",
    "PROTOCOL",
    "USER_CONFIG",
    "USER_MODEL",
    "USER_ROLE",
]

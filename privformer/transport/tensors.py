"""The tensor wire format: a safetensors buffer with a versioned metadata header.

A payload is exactly the bytes of a safetensors file: 8 bytes little-endian header length, a JSON
header (tensor names, dtypes, shapes, offsets, and ``__metadata__``), then raw little-endian
tensor data. safetensors loads no code (unlike pickle) and checks every offset against the
buffer length. ``__metadata__`` carries ``privformer-wire`` = ``1``; other versions are refused.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from privformer.errors import PayloadTooLargeError, WireFormatError

MEDIA_TYPE = "application/vnd.privformer.tensors"
WIRE_VERSION = "1"
MAX_PAYLOAD_BYTES = 64 << 20


def encode(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> bytes:
    """Serialise named tensors (and string metadata) to a wire payload."""
    return st_save(
        {k: v.detach().contiguous() for k, v in tensors.items()},
        metadata={"privformer-wire": WIRE_VERSION, **(meta or {})},
    )


def decode(
    data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse a wire payload; any defect raises ``WireFormatError`` naming it."""
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) < 8:
        raise WireFormatError(
            f"payload of {len(data)} bytes is shorter than its 8-byte header length"
        )
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise WireFormatError(f"header length {header_len} runs past the {len(data)}-byte payload")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireFormatError(f"payload header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise WireFormatError("payload header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WireFormatError("payload __metadata__ must be an object of strings")
    if meta.get("privformer-wire") != WIRE_VERSION:
        raise WireFormatError(
            f"wire version {meta.get('privformer-wire')!r} is not supported (need {WIRE_VERSION!r})"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise WireFormatError(f"payload tensors are malformed: {exc}") from exc
    return tensors, meta


def require(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The tensor ``name`` of a payload, or a ``WireFormatError`` listing what was there."""
    if name not in tensors:
        raise WireFormatError(f"payload lacks tensor {name!r} (has {sorted(tensors)})")
    return tensors[name]

"""The manifest every privformer artifact folder carries: ``privformer.json``.

It names the protocol, the folder's role (``server``, ``client``, ``dealer``; STIP's ``cloud``
and ``user``), the protocol's artifact format version and the privformer version that wrote it,
next to whatever the protocol adds. ``read_manifest`` refuses, with an ``ArtifactError`` that
says which, a folder without a manifest, a corrupted one, or one of another protocol, role or
format version, so a client never runs on an artifact it would misread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privformer.errors import ArtifactError

MANIFEST = "privformer.json"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privformer")
    except PackageNotFoundError:  # run from a source tree
        return "unknown"


def write_manifest(
    folder: str | Path, protocol: str, role: str, format_version: int, **fields: Any
) -> dict[str, Any]:
    """Write ``folder/privformer.json`` with the common fields and ``fields``; returns it."""
    manifest = {
        "protocol": protocol,
        "role": role,
        "format_version": format_version,
        "privformer_version": _version(),
        **fields,
    }
    Path(folder, MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(
    folder: str | Path,
    protocol: str | None = None,
    roles: tuple[str, ...] | None = None,
    format_version: int | None = None,
) -> dict[str, Any]:
    """The manifest of ``folder``, checked against what the caller expects (None: any)."""
    path = Path(folder, MANIFEST)
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a privformer artifact folder ({MANIFEST} missing)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupted: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is corrupted: not a JSON object")
    written_by = manifest.get("privformer_version", "an unknown privformer")
    if protocol is not None and manifest.get("protocol") != protocol:
        raise ArtifactError(
            f"{folder} holds a {manifest.get('protocol')!r} artifact, not a {protocol!r} one"
        )
    if roles is not None and manifest.get("role") not in roles:
        raise ArtifactError(
            f"{folder} is the {manifest.get('role')!r} side of the artifact; expected "
            + " or ".join(repr(r) for r in roles)
        )
    if format_version is not None and manifest.get("format_version") != format_version:
        raise ArtifactError(
            f"{folder} has {manifest.get('protocol')} format version "
            f"{manifest.get('format_version')} (written by privformer {written_by}); this "
            f"privformer reads version {format_version}: re-export it with this version"
        )
    return manifest

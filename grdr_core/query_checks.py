"""Checks of query input shared by the query library and the CLI.

Imports nothing beyond the standard library and the error types, so that the CLI can
use the limits in its option types without loading NumPy.
"""

from __future__ import annotations

import numbers

from grdr_core.errors import InvalidInputError

# Upper limits of the query parameters, so that one query's cost stays bounded: beam
# search time grows with the beam, and rerank time with the candidate cap.
MAX_K = 10_000
MAX_BEAM = 1_000
MAX_CANDIDATES = 100_000
# Defaults. On MSVD captions (docs/benchmarks.md, "Whole-codebook scores, beam 300"),
# before level decay, beam 300 puts the right video among the candidates for 95.0% of
# queries on the 1,970-video corpus (296 candidates on average) and 97.9% on the
# 670-video test pool (223). Beam 200 does so for 94.2% and 97.1%, at about 0.2 ms less
# per query.
DEFAULT_BEAM = 300
DEFAULT_MAX_CANDIDATES = 300
# Factor on the logits of each deeper level of beam search (level l: DEFAULT_LEVEL_DECAY**l).
# On MSVD's 1,970-video corpus, 0.8 put the right video among at most 300 candidates
# for 0.2-0.4 points more queries than 1.0, with about 2% fewer candidates, for each
# of three trained models. On synthetic corpora of 10,000 and 100,000 videos, 0.7-1.0
# were within noise of each other and 0.6 lost 1.8 points (docs/benchmarks.md, "Level decay").
DEFAULT_LEVEL_DECAY = 0.8
# Longer query texts are rejected before tokenizing. The text encoder truncates shorter
# ones to its context (77 tokens for CLIP).
MAX_QUERY_CHARS = 10_000


def check_query_text(text: object, position: int | None = None) -> None:
    """Raise ``InvalidInputError`` for a query that is not a usable text.

    Rejected: non-strings, empty or whitespace-only texts, texts of more than
    ``MAX_QUERY_CHARS`` characters, and texts that cannot be encoded as UTF-8 (lone
    surrogates, which is how Python passes on command-line bytes that are not UTF-8).
    ``position`` names the query in a batch in the message.
    """
    query = "The query" if position is None else f"Query {position}"
    if not isinstance(text, str):
        raise InvalidInputError(f"{query} is a {type(text).__name__}, expected a string")
    if not text.strip():
        raise InvalidInputError(f"{query} is empty or only whitespace")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInputError(f"{query} has {len(text)} characters; the maximum is {MAX_QUERY_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{query} is not valid UTF-8 text (invalid character at position {exc.start}); pass the query in UTF-8"
        ) from None


def check_query_limits(k: int, beam: int, max_candidates: int) -> None:
    """Raise ``InvalidInputError`` when ``k``, ``beam`` or ``max_candidates`` is out of range."""
    for name, value, maximum in (("k", k, MAX_K), ("beam", beam, MAX_BEAM), ("max_candidates", max_candidates, MAX_CANDIDATES)):
        _check_count(name, value, maximum)


def check_prefix_beam(prefix_beam: object) -> None:
    """Raise ``InvalidInputError`` unless ``prefix_beam`` is None (follow the beam) or an integer in [1, ``MAX_BEAM``]."""
    if prefix_beam is not None:
        _check_count("prefix_beam", prefix_beam, MAX_BEAM)


def resolve_prefix_beam(beam: int, prefix_beam: int | None) -> int:
    """Return the prefixes that beam search keeps before its last level: ``prefix_beam``, or ``beam`` when it is None."""
    return beam if prefix_beam is None else prefix_beam


def _check_count(name: str, value: object, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= maximum:
        raise InvalidInputError(f"{name} must be an integer in [1, {maximum}], got {value!r}")


def check_level_decay(level_decay: object) -> None:
    """Raise ``InvalidInputError`` unless ``level_decay`` is a real number in (0, 1]."""
    if isinstance(level_decay, bool) or not isinstance(level_decay, numbers.Real) or not 0 < level_decay <= 1:
        raise InvalidInputError(f"level_decay must be a number in (0, 1], got {level_decay!r}")

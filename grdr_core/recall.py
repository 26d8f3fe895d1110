"""Generative recall: trie-constrained beam search from query embeddings to videos."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grdr_core.errors import InvalidInputError
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.trie import TrieReader


@dataclass(frozen=True)
class DecodedId:
    codes: tuple[int, ...]
    log_prob: float  # sum over levels of the log-probability renormalised over allowed codes


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def beam_search(runtime: RetrieverRuntime, trie: TrieReader, queries: np.ndarray, beam: int) -> list[list[DecodedId]]:
    """Decode each of ``(B, D)`` queries into at most ``beam`` semantic IDs that exist in the trie.

    At every level a beam may only extend with codes that the trie lists as children of
    its prefix, and the model's probabilities are renormalised over those codes. Returns,
    per query, the surviving full IDs best first.
    """
    if beam < 1:
        raise InvalidInputError(f"beam must be >= 1, got {beam}")
    if trie.levels != runtime.levels:
        raise InvalidInputError(f"The trie has {trie.levels} levels but the retriever decodes {runtime.levels}")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    num_queries = len(queries)

    # One row per live beam: which query it belongs to, its prefix, score and state.
    owners = np.arange(num_queries)
    prefixes: list[tuple[int, ...]] = [()] * num_queries
    scores = np.zeros(num_queries)
    states = runtime.start(queries)
    children_cache: dict[tuple[int, ...], np.ndarray] = {}

    for level in range(runtime.levels):
        logits = runtime.logits(level, states)
        expansions: list[list[tuple[float, int, int]]] = [[] for _ in range(num_queries)]
        for row, prefix in enumerate(prefixes):
            allowed = children_cache.get(prefix)
            if allowed is None:
                allowed = children_cache[prefix] = trie.children(prefix)
            if not len(allowed):
                continue
            log_probs = _log_softmax(logits[row, allowed])
            top = np.argsort(-log_probs, kind="stable")[:beam]
            expansions[owners[row]].extend((scores[row] + log_probs[i], row, int(allowed[i])) for i in top)

        keep_rows: list[int] = []
        keep_codes: list[int] = []
        keep_scores: list[float] = []
        keep_owners: list[int] = []
        for query, candidates in enumerate(expansions):
            candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
            for score, row, code in candidates[:beam]:
                keep_rows.append(row)
                keep_codes.append(code)
                keep_scores.append(score)
                keep_owners.append(query)

        rows = np.asarray(keep_rows, dtype=np.int64)
        codes = np.asarray(keep_codes, dtype=np.int64)
        prefixes = [prefixes[r] + (c,) for r, c in zip(keep_rows, keep_codes)]
        scores = np.asarray(keep_scores)
        owners = np.asarray(keep_owners, dtype=np.int64)
        if level + 1 < runtime.levels and len(rows):
            states = runtime.advance(level, states[rows], codes)

    results: list[list[DecodedId]] = [[] for _ in range(num_queries)]
    for owner, prefix, score in zip(owners, prefixes, scores):
        results[owner].append(DecodedId(codes=prefix, log_prob=float(score)))
    return results


def candidates_from_ids(trie: TrieReader, decoded: list[DecodedId], max_candidates: int) -> np.ndarray:
    """Union the posting lists of ``decoded`` IDs in beam order, without duplicates, capped."""
    if max_candidates < 1:
        raise InvalidInputError(f"max_candidates must be >= 1, got {max_candidates}")
    seen: dict[int, None] = {}
    for semantic_id in decoded:
        for ordinal in trie.postings(semantic_id.codes).tolist():
            seen.setdefault(ordinal, None)
            if len(seen) >= max_candidates:
                return np.fromiter(seen, dtype=np.int64, count=len(seen))
    return np.fromiter(seen, dtype=np.int64, count=len(seen))

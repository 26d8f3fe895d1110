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


def beam_search(runtime: RetrieverRuntime, trie: TrieReader, queries: np.ndarray, beam: int) -> list[list[DecodedId]]:
    """Decode each of ``(B, D)`` queries into at most ``beam`` semantic IDs that exist in the trie.

    At every level a beam may only extend with codes that the trie lists as children of
    its prefix, and the model's probabilities are renormalised over those codes. Returns,
    per query, the surviving full IDs best first (ties broken by beam row, then code).
    """
    if beam < 1:
        raise InvalidInputError(f"beam must be >= 1, got {beam}")
    if trie.levels != runtime.levels:
        raise InvalidInputError(f"The trie has {trie.levels} levels but the retriever decodes {runtime.levels}")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    num_queries = len(queries)

    # One row per live beam, grouped by query: rows bounds[q]:bounds[q+1] belong to query q.
    bounds = np.arange(num_queries + 1)
    prefixes: list[tuple[int, ...]] = [()] * num_queries
    scores = np.zeros(num_queries)
    states = runtime.start(queries)

    for level in range(runtime.levels):
        log_probs = _allowed_log_probs(runtime.logits(level, states), prefixes, trie)
        totals = scores[:, None] + log_probs  # (rows, K_level), -inf where not allowed

        keep_rows: list[np.ndarray] = []
        keep_codes: list[np.ndarray] = []
        new_bounds = [0]
        for query in range(num_queries):
            block = totals[bounds[query] : bounds[query + 1]]
            flat = block.ravel()
            live = np.flatnonzero(flat > -np.inf)
            if len(live) > beam:
                live = live[np.argpartition(-flat[live], beam - 1)[:beam]]
            # Best first; equal scores keep the lower row and code (the flat index order).
            live = live[np.lexsort((live, -flat[live]))]
            rows, codes = np.divmod(live, block.shape[1])
            keep_rows.append(rows + bounds[query])
            keep_codes.append(codes)
            new_bounds.append(new_bounds[-1] + len(live))

        rows = np.concatenate(keep_rows)
        codes = np.concatenate(keep_codes)
        scores = totals[rows, codes]
        prefixes = [prefixes[r] + (int(c),) for r, c in zip(rows.tolist(), codes.tolist())]
        bounds = np.asarray(new_bounds)
        if level + 1 < runtime.levels and len(rows):
            states = runtime.advance(level, states[rows], codes)

    return [
        [DecodedId(codes=prefixes[row], log_prob=float(scores[row])) for row in range(bounds[q], bounds[q + 1])]
        for q in range(num_queries)
    ]


def _allowed_log_probs(logits: np.ndarray, prefixes: list[tuple[int, ...]], trie: TrieReader) -> np.ndarray:
    """Log-softmax of each row over the codes the trie allows after its prefix; -inf elsewhere."""
    children = [trie.children(prefix) for prefix in prefixes]
    rows = np.repeat(np.arange(len(children)), [len(codes) for codes in children])
    codes = np.concatenate(children) if children else np.empty(0, np.int64)
    masked = np.full(logits.shape, -np.inf)
    masked[rows, codes] = logits[rows, codes]
    peak = masked.max(axis=1, keepdims=True)
    peak[~np.isfinite(peak)] = 0.0  # a prefix without children keeps an all -inf row
    with np.errstate(divide="ignore"):
        return masked - peak - np.log(np.exp(masked - peak).sum(axis=1, keepdims=True))


def candidates_from_ids(trie: TrieReader, decoded: list[DecodedId], max_candidates: int) -> np.ndarray:
    """Union the posting lists of ``decoded`` IDs in beam order, without duplicates, capped."""
    if max_candidates < 1:
        raise InvalidInputError(f"max_candidates must be >= 1, got {max_candidates}")
    seen: dict[int, None] = {}
    for semantic_id in decoded:
        # A posting list has no duplicates, so its first max_candidates ordinals include all
        # that the cap can still admit; reading only those keeps huge lists cheap.
        for ordinal in trie.postings(semantic_id.codes, limit=max_candidates).tolist():
            seen.setdefault(ordinal, None)
            if len(seen) >= max_candidates:
                return np.fromiter(seen, dtype=np.int64, count=len(seen))
    return np.fromiter(seen, dtype=np.int64, count=len(seen))

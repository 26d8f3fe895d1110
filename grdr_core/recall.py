"""Generative recall: trie-constrained beam search from query embeddings to videos."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

import numpy as np

from grdr_core.errors import InvalidInputError
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.trie import PrefixTable, TrieReader, pack_codes


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
    table = trie.prefix_table()
    if len(table.codes) == 0:
        return [[] for _ in range(num_queries)]

    # One row per live beam, grouped by query: rows bounds[q]:bounds[q+1] belong to query
    # q. A row is a trie node (its prefix), the prefix's codes and its summed log-prob.
    bounds = np.arange(num_queries + 1)
    nodes = np.zeros(num_queries, dtype=np.int64)
    paths = np.zeros((num_queries, 0), dtype=np.int64)
    scores = np.zeros(num_queries)
    states = runtime.start(queries)

    for level in range(runtime.levels):
        step = _expand(runtime.logits(level, states), nodes, scores, table)
        # The candidates of row r are contiguous and rows are grouped by query, so
        # query q's candidates lie between the first candidates of its bounding rows.
        selected = [_top(step.totals, a, b, beam) for a, b in zip(step.row_start[bounds[:-1]], step.row_start[bounds[1:]])]
        bounds = np.concatenate(([0], np.cumsum([len(s) for s in selected])))
        chosen = np.concatenate(selected)

        rows = step.rows[chosen]
        codes = table.codes[step.entries[chosen]]
        nodes = step.entries[chosen] + 1
        scores = step.totals[chosen]
        paths = np.column_stack((paths[rows], codes))
        if level + 1 < runtime.levels:
            states = runtime.advance(level, states[rows], codes)

    decoded_paths = [tuple(p) for p in paths.tolist()]
    scores_list = scores.tolist()
    return [
        [DecodedId(codes=decoded_paths[row], log_prob=scores_list[row]) for row in range(bounds[q], bounds[q + 1])]
        for q in range(num_queries)
    ]


@dataclass(frozen=True)
class _Expansion:
    entries: np.ndarray  # (C,) position in the prefix table of each candidate's code
    rows: np.ndarray  # (C,) beam row each candidate extends
    row_start: np.ndarray  # (R + 1,) first candidate of each row, then C
    totals: np.ndarray  # (C,) float64, row score + renormalised log-prob of the code


def _expand(logits: np.ndarray, nodes: np.ndarray, scores: np.ndarray, table: PrefixTable) -> _Expansion:
    """List every allowed (row, code) extension, row by row in code order, with its score.

    The log-softmax runs over the codes the trie allows after each row's prefix only.
    """
    counts = table.child_count[nodes]
    row_start = np.concatenate(([0], np.cumsum(counts)))
    rows = np.repeat(np.arange(len(nodes)), counts)
    entries = np.arange(row_start[-1]) + (table.first_child[nodes] - row_start[:-1])[rows]
    allowed = logits[rows, table.codes[entries]].astype(np.float64)
    # Every trie node has at least one child, so no row's segment is empty.
    peak = np.maximum.reduceat(allowed, row_start[:-1])
    shifted = allowed - peak[rows]
    log_norm = np.log(np.add.reduceat(np.exp(shifted), row_start[:-1]))
    return _Expansion(entries, rows, row_start, scores[rows] + shifted - log_norm[rows])


def _top(totals: np.ndarray, start: int, stop: int, beam: int) -> np.ndarray:
    """Return the positions of the ``beam`` best totals in ``[start, stop)``, best first.

    Equal totals keep the earlier position, which is the lower row, then the lower code.
    """
    block = totals[start:stop]
    picked = np.arange(len(block)) if len(block) <= beam else np.argpartition(-block, beam - 1)[:beam]
    picked = picked[np.lexsort((picked, -block[picked]))]
    return picked + start


def candidates_from_ids(trie: TrieReader, decoded: list[DecodedId], max_candidates: int) -> np.ndarray:
    """Union the posting lists of ``decoded`` IDs in beam order, without duplicates, capped."""
    if max_candidates < 1:
        raise InvalidInputError(f"max_candidates must be >= 1, got {max_candidates}")
    pool = np.empty(0, np.int64)
    pending: list[np.ndarray] = []
    pending_count = 0
    # A posting list has no duplicates, so its first max_candidates ordinals include all
    # that the cap can still admit. Duplicates are removed only once the lists read so
    # far could fill the pool, which in a large corpus is often after the first list.
    with closing(trie.iter_postings((pack_codes(d.codes) for d in decoded), limit=max_candidates)) as lists:
        for ordinals in lists:
            pending.append(ordinals)
            pending_count += len(ordinals)
            if len(pool) + pending_count >= max_candidates:
                pool = _first_occurrences(np.concatenate([pool, *pending]))
                pending, pending_count = [], 0
                if len(pool) >= max_candidates:
                    break
    if pending:
        pool = _first_occurrences(np.concatenate([pool, *pending]))
    return pool[:max_candidates]


def _first_occurrences(ordinals: np.ndarray) -> np.ndarray:
    """Drop repeated ordinals, keeping each one's first position."""
    _, first = np.unique(ordinals, return_index=True)
    return ordinals[np.sort(first)]

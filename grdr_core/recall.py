"""Generative recall: trie-constrained beam search from query embeddings to videos.

``beam_search``, ``candidates_from_ids`` and ``recall_pools`` run the compiled kernels of
``grdr_core.recall_kernels``, which import numba at the first query. ``beam_search_numpy``
and ``candidates_from_ids_numpy`` are the NumPy implementations: the reference that tests
compare with, and the fallback when numba is not installed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.query_checks import DEFAULT_LEVEL_DECAY, check_level_decay, resolve_prefix_beam
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.trie import PrefixTable, TrieReader

logger = logging.getLogger(__name__)

# The kernel module once imported, False when numba is missing, None before the first query.
_kernels: ModuleType | bool | None = None


@dataclass(frozen=True)
class DecodedId:
    codes: tuple[int, ...]
    # The ID's score: the sum over its codes of the log-softmax over the whole codebook,
    # with level l's logits scaled by level_decay**l (1: the retriever's log-probability).
    log_prob: float


def beam_search(
    runtime: RetrieverRuntime, trie: TrieReader, queries: np.ndarray, beam: int, level_decay: float = DEFAULT_LEVEL_DECAY, prefix_beam: int | None = None
) -> list[list[DecodedId]]:
    """Decode each of ``(B, D)`` queries into at most ``beam`` semantic IDs that exist in the trie.

    At every level a beam may only extend with codes that the trie lists as children of
    its prefix. Scores are the model's log-probabilities over the whole codebook, not
    renormalised over those codes: renormalising inflates IDs under prefixes with few
    children, and on the MSVD benchmark it recalled fewer videos with larger pools
    (docs/benchmarks.md). Level l's logits are multiplied by ``level_decay**l`` before
    the log-softmax, which raises that level's temperature, so below 1 the deeper codes
    weigh less in the ranking (on MSVD, whose queried videos have no training caption,
    0.8 recalled slightly more than 1). The levels before the last keep ``prefix_beam``
    prefixes (default: ``beam``). The cost of a query grows mostly with it, because every
    kept prefix needs a retriever step, while a full ID kept at the last level needs none.
    Returns, per query, the surviving full IDs best first (ties broken by beam row, then
    code).
    """
    return [
        [DecodedId(codes=tuple(codes), log_prob=score) for codes, score in zip(paths.tolist(), scores.tolist())]
        for paths, scores, _ in _decode(runtime, trie, queries, beam, level_decay, prefix_beam)
    ]


def recall_pools(
    runtime: RetrieverRuntime,
    trie: TrieReader,
    queries: np.ndarray,
    beam: int,
    max_candidates: int,
    level_decay: float = DEFAULT_LEVEL_DECAY,
    prefix_beam: int | None = None,
) -> list[np.ndarray]:
    """Return the candidate pool of each of ``(B, D)`` queries: ``candidates_from_ids`` of its ``beam_search``."""
    if max_candidates < 1:
        raise InvalidInputError(f"max_candidates must be >= 1, got {max_candidates}")
    kernels = load_kernels()
    if kernels is None:
        return [_pool(trie, paths, max_candidates, None) for paths, _, _ in _decode(runtime, trie, queries, beam, level_decay, prefix_beam)]
    decoded = _decode(runtime, trie, queries, beam, level_decay, prefix_beam)
    return [trie.pool_entries(entries, max_candidates, kernels.first_occurrences_in_ranges) for _, _, entries in decoded]


def candidates_from_ids(trie: TrieReader, decoded: list[DecodedId], max_candidates: int) -> np.ndarray:
    """Union the posting lists of ``decoded`` IDs in beam order, without duplicates, capped."""
    if max_candidates < 1:
        raise InvalidInputError(f"max_candidates must be >= 1, got {max_candidates}")
    paths = _paths_of(decoded, trie.levels)
    return _pool(trie, paths, max_candidates, load_kernels())


def load_kernels() -> ModuleType | None:
    """Import the compiled kernels on first use; return None when numba is not installed."""
    global _kernels
    if _kernels is None:
        try:
            from grdr_core import recall_kernels
        except ImportError as exc:
            logger.warning("Generative recall falls back to the slower NumPy path because numba cannot be imported: %s", exc)
            _kernels = False
        else:
            _kernels = recall_kernels
    return _kernels or None


def _check_arguments(runtime: RetrieverRuntime, trie: TrieReader, queries: np.ndarray, beam: int, level_decay: float, prefix_beam: int) -> np.ndarray:
    """Validate the arguments of a beam search; return the queries as a C-contiguous ``(B, D)`` float32 array."""
    if beam < 1:
        raise InvalidInputError(f"beam must be >= 1, got {beam}")
    if prefix_beam < 1:
        raise InvalidInputError(f"prefix_beam must be >= 1, got {prefix_beam}")
    check_level_decay(level_decay)
    if trie.levels != runtime.levels:
        raise InvalidInputError(f"The trie has {trie.levels} levels but the retriever decodes {runtime.levels}")
    queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if queries.ndim != 2 or queries.shape[1] != runtime.query_dim:
        raise InvalidInputError(f"Expected queries of shape (B, {runtime.query_dim}), got {queries.shape}")
    finite_rows = np.isfinite(queries).all(axis=1)
    if not finite_rows.all():
        bad = np.flatnonzero(~finite_rows)
        raise InvalidInputError(f"Queries must be finite; rows {bad[:5].tolist()} contain NaN or inf")
    return queries


def _decode(
    runtime: RetrieverRuntime, trie: TrieReader, queries: np.ndarray, beam: int, level_decay: float, prefix_beam: int | None
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Beam-search each query; return per query its IDs ``(n, levels)``, their scores ``(n,)`` and, from the kernel, their positions in the prefix table ``(n,)``, best first."""
    prefix_beam = resolve_prefix_beam(beam, prefix_beam)
    queries = _check_arguments(runtime, trie, queries, beam, level_decay, prefix_beam)
    if len(queries) == 0:
        return []
    kernels = load_kernels()
    if kernels is None:
        return [
            (np.array([d.codes for d in ids], dtype=np.int64).reshape(len(ids), runtime.levels), np.array([d.log_prob for d in ids]), None)
            for ids in beam_search_numpy(runtime, trie, queries, beam, level_decay, prefix_beam)
        ]

    table = trie.prefix_table()
    if len(table.codes) == 0:
        return [(np.empty((0, runtime.levels), np.int64), np.empty(0), np.empty(0, np.int64)) for _ in range(len(queries))]

    weights = runtime.packed_weights()
    paths, scores, entries, counts = kernels.decode_batch(
        queries,
        weights.w_in,
        weights.b_in,
        weights.code_weights,
        weights.code_offsets,
        weights.output_grams,
        weights.w_h,
        weights.code_inputs,
        weights.scale,
        _level_scales(runtime.levels, level_decay),
        table.codes,
        table.first_child,
        table.child_count,
        # Python ints, so that NumPy integer types (np.uint64 among them) neither change the
        # kernel's integer arithmetic nor compile it again.
        int(beam),
        int(prefix_beam),
    )

    counts_list = counts.tolist()
    if min(counts_list) < 0:
        raise IndexFormatError(
            f"The trie does not fit the retriever: it lists codes outside the retriever's codebooks of sizes {runtime.codebook_sizes}, "
            "or more children of one prefix than a codebook has codes; run `grdr-index train` again so that both come from one training run"
        )
    return [(paths[q, :count], scores[q, :count], entries[q, :count]) for q, count in enumerate(counts_list)]


def _pool(trie: TrieReader, paths: np.ndarray, max_candidates: int, kernels: ModuleType | None) -> np.ndarray:
    """Union the posting lists of the ``(n, levels)`` IDs in ``paths`` in row order, without duplicates, capped."""
    return trie.pool(paths, max_candidates, kernels.first_occurrences_in_ranges if kernels is not None else None)


def beam_search_numpy(
    runtime: RetrieverRuntime, trie: TrieReader, queries: np.ndarray, beam: int, level_decay: float = DEFAULT_LEVEL_DECAY, prefix_beam: int | None = None
) -> list[list[DecodedId]]:
    """Return what ``beam_search`` returns, computed with a fixed number of NumPy calls per level."""
    prefix_beam = resolve_prefix_beam(beam, prefix_beam)
    queries = _check_arguments(runtime, trie, queries, beam, level_decay, prefix_beam)
    num_queries = len(queries)
    level_scales = _level_scales(runtime.levels, level_decay)
    table = trie.prefix_table()
    if len(table.codes) == 0:
        return [[] for _ in range(num_queries)]

    # One row per live beam, grouped by query: rows bounds[q]:bounds[q+1] belong to query
    # q. A row is a trie node (its prefix) with its summed log-prob. The prefix's codes
    # are rebuilt at the end from each level's (parent row, code) choices.
    bounds = np.arange(num_queries + 1)
    nodes = np.zeros(num_queries, dtype=np.int64)
    scores = np.zeros(num_queries)
    states = runtime.start(queries)
    choices: list[tuple[np.ndarray, np.ndarray]] = []

    for level in range(runtime.levels):
        step = _expand(runtime.logits(level, states) * level_scales[level], nodes, scores, table)
        level_beam = beam if level + 1 == runtime.levels else prefix_beam
        if num_queries == 1:
            chosen = _top(step.totals, 0, len(step.totals), level_beam)
            bounds = np.array([0, len(chosen)])
        else:
            # The candidates of row r are contiguous and rows are grouped by query, so
            # query q's candidates lie between the first candidates of its bounding rows.
            starts, stops = step.row_start[bounds[:-1]].tolist(), step.row_start[bounds[1:]].tolist()
            selected = [_top(step.totals, start, stop, level_beam) for start, stop in zip(starts, stops)]
            bounds = np.concatenate(([0], np.cumsum([len(s) for s in selected])))
            chosen = np.concatenate(selected)

        rows = step.rows[chosen]
        entries = step.entries[chosen]
        codes = table.codes[entries]
        nodes = entries + 1
        scores = step.totals[chosen]
        choices.append((rows, codes))
        if level + 1 < runtime.levels:
            states = runtime.advance(level, states[rows], codes)

    paths = _backtrack(choices)
    scores_list = scores.tolist()
    return [
        [DecodedId(codes=paths[row], log_prob=scores_list[row]) for row in range(bounds[q], bounds[q + 1])]
        for q in range(num_queries)
    ]


def _level_scales(levels: int, level_decay: float) -> np.ndarray:
    """Return the float32 factor on each level's logits, ``level_decay**level``."""
    return (np.float32(level_decay) ** np.arange(levels)).astype(np.float32)


def _backtrack(choices: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, ...]]:
    """Return the full code path of every final row from each level's (parent row, code) choices."""
    columns = []
    rows = np.arange(len(choices[-1][0]))
    for parents, codes in reversed(choices):
        columns.append(codes[rows])
        rows = parents[rows]
    return list(zip(*(column.tolist() for column in reversed(columns))))


@dataclass(frozen=True)
class _Expansion:
    entries: np.ndarray  # (C,) position in the prefix table of each candidate's code
    rows: np.ndarray  # (C,) beam row each candidate extends
    row_start: np.ndarray  # (R + 1,) first candidate of each row, then C
    totals: np.ndarray  # (C,) float64, row score + log-prob of the code


def _expand(logits: np.ndarray, nodes: np.ndarray, scores: np.ndarray, table: PrefixTable) -> _Expansion:
    """List every allowed (row, code) extension, row by row in code order, with its score.

    A code's log-probability is its log-softmax over the whole codebook (see ``beam_search``).
    """
    counts = table.child_count[nodes]
    row_start = np.concatenate(([0], np.cumsum(counts)))
    rows = np.repeat(np.arange(len(nodes)), counts)
    entries = np.arange(row_start[-1]) + (table.first_child[nodes] - row_start[:-1])[rows]
    logits = logits.astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_probs = logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    return _Expansion(entries, rows, row_start, scores[rows] + log_probs[rows, table.codes[entries]])


def _top(totals: np.ndarray, start: int, stop: int, beam: int) -> np.ndarray:
    """Return the positions of the ``beam`` best totals in ``[start, stop)``, best first.

    Equal totals keep the earlier position, which is the lower row, then the lower code.
    """
    block = totals[start:stop]
    picked = np.arange(len(block)) if len(block) <= beam else np.argpartition(-block, beam - 1)[:beam]
    picked = picked[np.lexsort((picked, -block[picked]))]
    return picked + start


def candidates_from_ids_numpy(trie: TrieReader, decoded: list[DecodedId], max_candidates: int) -> np.ndarray:
    """Return what ``candidates_from_ids`` returns, deduplicating with NumPy."""
    if max_candidates < 1:
        raise InvalidInputError(f"max_candidates must be >= 1, got {max_candidates}")
    paths = _paths_of(decoded, trie.levels)
    return _pool(trie, paths, max_candidates, None)


def _paths_of(decoded: list[DecodedId], levels: int) -> np.ndarray:
    """Return the codes of ``decoded`` IDs as an ``(n, levels)`` array; ``TrieReader.pool`` rejects other widths."""
    return np.array([d.codes for d in decoded], dtype=np.int64) if decoded else np.empty((0, levels), np.int64)

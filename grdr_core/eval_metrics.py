"""Retrieval metrics: ranks of ground truth in ranked lists, recall at k, rank and latency summaries.

Rules shared by every method that grdr evaluates:

- A ranked list is ordered by score, highest first; equal scores put the lower
  ordinal first (``order_by_score``).
- The rank of a query is the 1-based position of its best-ranked ground-truth video.
  A query whose ground truth is not in the list has rank infinity, so it counts as a
  miss for every R@k.
- Median and mean rank count an unretrieved query as rank ``corpus size + 1``.
"""

from __future__ import annotations

import math

import numpy as np

from grdr_core.errors import InvalidInputError

RECALL_CUTOFFS = (1, 5, 10, 50)


def order_by_score(ordinals: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return ``ordinals`` sorted by score descending, ties by ordinal ascending.

    Negative ordinals (FAISS's padding for missing results) are dropped.
    """
    ordinals = np.asarray(ordinals, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    valid = ordinals >= 0
    ordinals, scores = ordinals[valid], scores[valid]
    return ordinals[np.lexsort((ordinals, -scores))]


def first_relevant_rank(ranked: np.ndarray, relevant: np.ndarray) -> float:
    """Return the 1-based position of the first ``relevant`` ordinal in ``ranked``, or ``inf``."""
    hits = np.flatnonzero(np.isin(ranked, relevant))
    return float(hits[0] + 1) if hits.size else math.inf


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Return the share of queries whose rank is at most ``k``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise InvalidInputError("recall_at needs at least one query rank")
    return float(np.mean(ranks <= k))


def rank_summary(ranks: np.ndarray, corpus_size: int) -> dict[str, float | int]:
    """Return R@1, R@5, R@10, R@50, median and mean rank and the count of unretrieved queries."""
    ranks = np.asarray(ranks, dtype=np.float64)
    summary: dict[str, float | int] = {f"r{k}": recall_at(ranks, k) for k in RECALL_CUTOFFS}
    filled = np.where(np.isinf(ranks), corpus_size + 1, ranks)
    summary["median_rank"] = float(np.median(filled))
    summary["mean_rank"] = float(np.mean(filled))
    summary["not_retrieved"] = int(np.isinf(ranks).sum())
    return summary


def latency_percentiles(values_ms: np.ndarray) -> dict[str, float]:
    """Return the 50th and 95th percentiles (linear interpolation, NumPy's default) in milliseconds."""
    values_ms = np.asarray(values_ms, dtype=np.float64)
    if values_ms.size == 0:
        raise InvalidInputError("latency_percentiles needs at least one measurement")
    p50, p95 = np.percentile(values_ms, [50, 95])
    return {"p50": float(p50), "p95": float(p95)}

"""Exact dense search over the shard store: the baseline every recall method is compared with."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from grdr_core.errors import InvalidInputError, ModelLoadError
from grdr_core.index import Index
from grdr_core.query_checks import MAX_K, check_query_text
from grdr_core.shards import ShardReader
from grdr_schemas.index import PRECOMPUTED_PREFIX

if TYPE_CHECKING:  # torch and transformers load only when an encoder is needed
    from grdr_core.features import ClipEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchHit:
    rank: int  # 1-based
    video_id: str
    uri: str
    score: float  # cosine similarity of the query and video embeddings
    ordinal: int


def exact_dense_search(shards: ShardReader, queries: np.ndarray, k: int, block_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Score ``(q, dim)`` unit queries against every stored embedding; return the top ``k``.

    Returns ``(ordinals, scores)``, both ``(q, min(k, count))``, best first. Ties keep
    the lower ordinal first. Reads the store block by block, so memory stays at one
    block of scores per query.
    """
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != shards.dim:
        raise InvalidInputError(f"Query dimension {queries.shape[1]} does not match the index dimension {shards.dim}")
    k = min(k, len(shards))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ordinals = np.zeros((len(queries), 0), dtype=np.int64)
    for first, block in shards.iter_blocks(block_size):
        scores = queries @ block.T
        ordinals = np.broadcast_to(np.arange(first, first + len(block)), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ordinals = np.concatenate([best_ordinals, ordinals], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_ordinals = np.take_along_axis(best_ordinals, keep, axis=1)
    # Sort by score descending, then ordinal ascending, for a stable order.
    order = np.lexsort((best_ordinals, -best_scores), axis=1) if best_scores.size else best_scores.astype(np.int64)
    return np.take_along_axis(best_ordinals, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


def hits_for(index: Index, ordinals: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
    return [
        SearchHit(rank=i + 1, video_id=index.video_id(int(o)), uri=index.uri(int(o)), score=float(s), ordinal=int(o))
        for i, (o, s) in enumerate(zip(ordinals, scores))
    ]


def load_query_encoder(index: Index, model: str | None = None, device: str = "cpu") -> ClipEncoder:
    """Load the index's encoder (or ``model``) and check it has the weights the index was built with."""
    from grdr_core.features import ClipEncoder, EncoderConfig

    recorded = index.header["encoder"]
    if model is None and str(recorded.get("checksum", "")).startswith(PRECOMPUTED_PREFIX):
        raise ModelLoadError(
            f"Index {index.root} was built from precomputed embeddings ({recorded['name']}) and stores no "
            "text encoder; query it with embeddings from the same model (grdr-index query or search with "
            "--queries FILE of embeddings, Searcher.search_embeddings, or grdr-index eval with an embedding queries file)"
        )
    encoder = ClipEncoder(EncoderConfig(model=model or recorded["name"], device=device))
    if encoder.checksum != recorded["checksum"]:
        raise ModelLoadError(
            f"Encoder {encoder.name!r} has weights {encoder.checksum}, but index {index.root} was built "
            f"with {recorded['name']!r} ({recorded['checksum']}); pass --model with the encoder used for the build"
        )
    return encoder


def search_text(index: Index, encoder: ClipEncoder, text: str, k: int) -> list[SearchHit]:
    """Encode ``text`` with the CLIP text tower and return the ``k`` nearest videos."""
    check_query_text(text)
    if not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    query = encoder.encode_text([text])
    ordinals, scores = exact_dense_search(index.shards, query, k)
    return hits_for(index, ordinals[0], scores[0])

"""The query library: generative recall over the trie, then dense reranking of candidates.

Opening a ``Searcher`` memory-maps the index and loads only NumPy, PyArrow and LMDB;
torch and the text encoder load on the first text query.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from grdr_core.errors import IndexFormatError, InvalidInputError
from grdr_core.index import Index, open_index_version
from grdr_core.query_checks import DEFAULT_BEAM, DEFAULT_LEVEL_DECAY, DEFAULT_MAX_CANDIDATES, check_level_decay, check_prefix_beam, check_query_limits, check_query_text
from grdr_core.recall import load_kernels, recall_pools
from grdr_core.retriever_runtime import RetrieverRuntime
from grdr_core.search import SearchHit, hits_for
from grdr_core.versions import local_index_path, open_resolved, version_root_of

if TYPE_CHECKING:
    from grdr_core.features import ClipEncoder

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class QueryResult:
    hits: list[SearchHit]  # best first
    candidates: int  # size of the recalled pool that was reranked
    timings_ms: dict[str, float] = field(default_factory=dict)  # "encode", "recall", "rerank"; per query in a batch


class Searcher:
    """Answer text queries against one index version with recall + rerank."""

    def __init__(self, index_dir: str | os.PathLike[str], model: str | None = None, device: str = "cpu") -> None:
        index_dir = local_index_path(index_dir)
        # The index and the retriever come from one version, resolved once.
        self.index, self.retriever = open_resolved(index_dir, lambda version_dir: _open_version(Path(index_dir), version_dir))
        self._model = model
        self._device = device
        self._encoder: ClipEncoder | None = None
        self._encoder_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        # Marked closed first, so that searches starting meanwhile get the Searcher's message.
        self._closed = True
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def encoder(self) -> ClipEncoder:
        # One lock, so that threads making their first text query at once load the model once.
        with self._encoder_lock:
            if self._encoder is None:
                from grdr_core.search import load_query_encoder

                self._encoder = load_query_encoder(self.index, model=self._model, device=self._device)
        return self._encoder

    def search(
        self,
        text: str,
        k: int = 10,
        beam: int = DEFAULT_BEAM,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        level_decay: float = DEFAULT_LEVEL_DECAY,
        prefix_beam: int | None = None,
    ) -> QueryResult:
        return self.search_batch([text], k=k, beam=beam, max_candidates=max_candidates, level_decay=level_decay, prefix_beam=prefix_beam)[0]

    def search_batch(
        self,
        texts: Sequence[str],
        k: int = 10,
        beam: int = DEFAULT_BEAM,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        level_decay: float = DEFAULT_LEVEL_DECAY,
        prefix_beam: int | None = None,
    ) -> list[QueryResult]:
        """Encode ``texts`` with the index's text encoder and answer each of them."""
        if isinstance(texts, str):
            raise InvalidInputError("search_batch takes a sequence of query strings, not one string")
        for position, text in enumerate(texts):
            check_query_text(text, position if len(texts) > 1 else None)
        check_query_limits(k, beam, max_candidates)
        check_prefix_beam(prefix_beam)
        check_level_decay(level_decay)
        if len(texts) == 0:
            return []
        encoder = self.encoder  # loads the model on first use, outside the timed encode
        started = time.perf_counter()
        queries = encoder.encode_text(list(texts))
        encode_ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        results = self.search_embeddings(queries, k=k, beam=beam, max_candidates=max_candidates, level_decay=level_decay, prefix_beam=prefix_beam)
        return [QueryResult(r.hits, r.candidates, {"encode": encode_ms, **r.timings_ms}) for r in results]

    def search_embeddings(
        self,
        queries: np.ndarray,
        k: int = 10,
        beam: int = DEFAULT_BEAM,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        level_decay: float = DEFAULT_LEVEL_DECAY,
        prefix_beam: int | None = None,
    ) -> list[QueryResult]:
        """Search with ``(B, D)`` query embeddings from the index's query encoder.

        Queries are L2-normalised first. Each result holds at most ``min(k, candidates)``
        hits. ``beam``, ``prefix_beam`` and ``level_decay`` are those of
        ``grdr_core.recall.beam_search``.
        """
        if self._closed:
            raise InvalidInputError(f"This Searcher of {self.index.root} is closed; open a new one to search")
        check_query_limits(k, beam, max_candidates)
        check_prefix_beam(prefix_beam)
        check_level_decay(level_decay)
        queries = np.asarray(queries)
        if queries.dtype.kind != "f":
            raise InvalidInputError(f"Query embeddings must be floating point, got dtype {queries.dtype}")
        queries = np.atleast_2d(queries.astype(np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.index.shards.dim:
            raise InvalidInputError(f"Query embeddings have shape {queries.shape}, but this index stores {self.index.shards.dim}-dimensional embeddings")
        if len(queries) == 0:
            return []
        norms = np.linalg.norm(queries.astype(np.float64), axis=1)
        if not np.isfinite(norms).all():
            raise InvalidInputError("Query embeddings contain NaN or infinite values")
        if (norms == 0).any():
            raise InvalidInputError(f"Query embedding {int(np.flatnonzero(norms == 0)[0])} is all zeros")
        # Stored embeddings are unit vectors, so unit queries make rerank scores cosines,
        # and recall does not depend on a query's length.
        queries = (queries / norms[:, None]).astype(np.float32)

        started = time.perf_counter()
        pools = recall_pools(self.retriever, self.index.trie, queries, beam, max_candidates, level_decay, prefix_beam)
        recall_ms = (time.perf_counter() - started) * 1000 / len(queries)

        started = time.perf_counter()
        results = []
        for query, pool in zip(queries, pools):
            ordinals, scores = rerank(self.index, query, pool, k)
            results.append((hits_for(self.index, ordinals, scores), len(pool)))
        rerank_ms = (time.perf_counter() - started) * 1000 / len(queries)
        return [QueryResult(hits, count, {"recall": recall_ms, "rerank": rerank_ms}) for hits, count in results]


def _open_version(root: Path, version_dir: Path) -> tuple[Index, RetrieverRuntime]:
    index = open_index_version(root, version_dir)
    try:
        tokenizer = index.header["tokenizer"]
        if not tokenizer.get("retriever"):
            # Training publishes to the index root, also when a version directory was opened.
            trainable = version_root_of(version_dir) or index.root
            raise IndexFormatError(
                f"Index {index.root} has {tokenizer['name']} semantic IDs but no trained retriever; "
                f"run `grdr-index train {trainable} --captions FILE` (or `--caption-embeddings FILE` "
                "for an index of precomputed embeddings) before querying, "
                "or use `grdr-index search` for exact dense search"
            )
        return index, RetrieverRuntime.load(index.layout.model_dir)
    except BaseException:
        index.close()
        raise


def rerank(index: Index, query: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score candidates by cosine with the query; return the top ``k`` ordinals and scores, best first."""
    if len(candidates) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    kernels = load_kernels()
    scores = index.shards.dot(candidates, query, kernels.float16_row_dots if kernels is not None else None)
    if len(scores) > k:
        # Keep every candidate that ties the k-th score, so the sort below still breaks ties by ordinal.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
        candidates, scores = candidates[keep], scores[keep]
    order = np.lexsort((candidates, -scores))[:k]
    return candidates[order], scores[order]

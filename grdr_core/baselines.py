"""Baselines that evaluation compares grdr with: exact dense search and two FAISS indexes.

Every baseline scores by inner product of unit vectors (cosine) and returns, per query,
ordinals ordered by ``eval_metrics.order_by_score``: score descending, ties by the lower
ordinal. FAISS comes from the ``faiss-cpu`` package (tested with 1.15.1).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from grdr_core.errors import InvalidInputError
from grdr_core.eval_metrics import order_by_score

logger = logging.getLogger(__name__)

# FAISS's k-means warns below this many training points per centroid.
FAISS_POINTS_PER_CENTROID = 39
MAX_PQ_BITS = 8


class Baseline(Protocol):
    name: str

    def search(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Return, per row of ``(B, D)`` unit queries, at most ``k`` ordinals, best first."""
        ...

    def bytes_per_video(self) -> dict[str, float]: ...

    def settings(self) -> dict[str, Any]: ...


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run FAISS, BLAS and OpenMP on one thread inside the block, so latencies are per core."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


def _ordered_rows(ordinals: np.ndarray, scores: np.ndarray, k: int) -> list[np.ndarray]:
    return [order_by_score(row_ordinals, row_scores)[:k] for row_ordinals, row_scores in zip(ordinals, scores)]


class DenseBaseline:
    """Exact cosine search over a float32 matrix held in memory."""

    name = "dense"

    def __init__(self, matrix: np.ndarray, stored_bytes: int) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self._stored_bytes = stored_bytes  # the float16 shards this matrix was read from

    def search(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        scores = np.atleast_2d(queries) @ self.matrix.T
        k = min(k, scores.shape[1])
        results = []
        for row in scores:
            # Keep every score tied with the k-th best so that ties at the cut follow the ordinal rule.
            threshold = np.partition(row, len(row) - k)[len(row) - k]
            candidates = np.flatnonzero(row >= threshold)
            results.append(order_by_score(candidates, row[candidates])[:k])
        return results

    def bytes_per_video(self) -> dict[str, float]:
        return {"shards": self._stored_bytes / len(self.matrix)}

    def settings(self) -> dict[str, Any]:
        return {"matrix": "float32 in memory", "videos": len(self.matrix)}


class FaissBaseline:
    """A built FAISS index with inner-product metric; ``name`` is ``faiss_hnsw`` or ``faiss_ivfpq``."""

    def __init__(self, name: str, index: faiss.Index, settings: dict[str, Any]) -> None:
        self.name = name
        self.index = index
        self._settings = settings

    def search(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        scores, ordinals = self.index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)
        return _ordered_rows(ordinals, scores, k)

    def bytes_per_video(self) -> dict[str, float]:
        return {"faiss_index": len(faiss.serialize_index(self.index)) / self.index.ntotal}

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)


def build_hnsw(matrix: np.ndarray, m: int, ef_search: int, ef_construction: int = 40) -> FaissBaseline:
    """Build ``IndexHNSWFlat`` (float32 vectors plus an HNSW graph of ``m`` links per node)."""
    if m < 2 or ef_search < 1:
        raise InvalidInputError(f"HNSW needs M >= 2 and efSearch >= 1, got M={m} and efSearch={ef_search}")
    index = faiss.IndexHNSWFlat(matrix.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    index.hnsw.efSearch = ef_search
    settings = {"M": m, "ef_construction": ef_construction, "ef_search": ef_search, "videos": len(matrix)}
    return FaissBaseline("faiss_hnsw", index, settings)


@dataclass(frozen=True)
class IvfPqShape:
    nlist: int  # inverted lists (coarse centroids)
    m: int  # subquantizers, a divisor of the dimension
    nbits: int  # bits per subquantizer code

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.m * self.nbits / 8)


def choose_ivfpq_shape(count: int, dim: int, target_code_bytes: float) -> IvfPqShape:
    """Choose IVF-PQ parameters for ``count`` vectors with codes of at most ``target_code_bytes``.

    ``nlist`` is about sqrt(count), capped so that every coarse centroid gets 39 training
    points. ``nbits`` is 8 for corpora of at least 39 * 256 vectors. Smaller corpora get
    fewer bits, so that each PQ centroid still gets about 39 points. ``m`` is the largest
    divisor of ``dim`` whose code fits the target, at least 1.
    """
    if count < 2:
        raise InvalidInputError(f"IVF-PQ needs at least 2 vectors to train, got {count}")
    nlist = max(1, min(round(math.sqrt(count)), count // FAISS_POINTS_PER_CENTROID))
    nbits = MAX_PQ_BITS
    if count < FAISS_POINTS_PER_CENTROID * 2**MAX_PQ_BITS:
        nbits = max(1, int(math.log2(count / FAISS_POINTS_PER_CENTROID))) if count >= 2 * FAISS_POINTS_PER_CENTROID else 1
        logger.info(
            "IVF-PQ: %d vectors are fewer than the %d that FAISS wants for 8-bit codes; using %d-bit codes",
            count,
            FAISS_POINTS_PER_CENTROID * 2**MAX_PQ_BITS,
            nbits,
        )
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    fitting = [m for m in divisors if math.ceil(m * nbits / 8) <= target_code_bytes]
    return IvfPqShape(nlist=nlist, m=max(fitting, default=1), nbits=nbits)


def build_ivfpq(matrix: np.ndarray, shape: IvfPqShape, nprobe: int, seed: int = 0) -> FaissBaseline:
    """Train and fill ``IndexIVFPQ`` (residuals by PQ) over an inner-product coarse quantizer."""
    if nprobe < 1:
        raise InvalidInputError(f"IVF nprobe must be >= 1, got {nprobe}")
    dim = matrix.shape[1]
    vectors = np.ascontiguousarray(matrix, dtype=np.float32)
    coarse = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(coarse, dim, shape.nlist, shape.m, shape.nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.pq.cp.seed = seed
    # ivfpq_shape already gives corpora under 2 * 39 vectors the smallest codebooks, so
    # FAISS's warning about too few training points per centroid would be noise.
    index.cp.min_points_per_centroid = 1
    index.pq.cp.min_points_per_centroid = 1
    index.train(vectors)
    index.add(vectors)
    index.nprobe = min(nprobe, shape.nlist)
    settings = {
        "nlist": shape.nlist,
        "nprobe": index.nprobe,
        "m": shape.m,
        "nbits": shape.nbits,
        "code_bytes": shape.code_bytes,
        "videos": len(matrix),
    }
    return FaissBaseline("faiss_ivfpq", index, settings)

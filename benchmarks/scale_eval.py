"""Measure build time, index bytes per video and per-query latency of every method as the corpus grows.

For each corpus size the script:

1. generates synthetic clustered embeddings with ``recall_speed.generate_corpus``:
   videos mix a few of ``--concepts`` random concept vectors plus a private vector, and
   held-out captions name one concept of their video.
2. writes them as a Parquet features file (``video_id``, ``embedding``) and times
   ``build_index_from_features``, the code behind ``grdr-index build --features``.
3. trains the multi-view model on the captions of the first ``--train-videos`` videos
   (one model serves every size, as in ``recall_speed.py``; with ``--train-on-corpus``
   training also uses every other video, as ``grdr-index train`` does), assigns IDs to
   every video and republishes the index.
4. runs ``grdr_core.evaluation.evaluate`` on the held-out captions: grdr, exact dense
   search, FAISS HNSW and FAISS IVF-PQ, with R@k, latency per query on one thread and
   bytes per video.

It reports the recall index in bytes per video next to float32 dense storage (``4 * dim``
bytes per video), whose ratio is meant to stay under 1/40. The recall index is what a
query server reads for recall: the trie and the NumPy retriever. The tokenizer and torch
weights in ``model/`` serve only training and ID assignment and are reported apart.

Example::

    nice .venv/bin/python benchmarks/scale_eval.py --sizes 10000 100000 --out-json bench-out/scale.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from grdr_core.query_checks import DEFAULT_LEVEL_DECAY
from recall_speed import CorpusSpec, generate_corpus, load_or_train, publish_trained_index, train_config_from_args, write_json_report

logger = logging.getLogger("scale_eval")

METHODS = ("grdr", "dense", "faiss_hnsw", "faiss_ivfpq")
# Target of the recall index: under 1/40 of the bytes of float32 dense storage.
TARGET_RATIO = 1 / 40


def _write_embeddings(path: Path, video_ids: list[str], rows: np.ndarray, extra: dict[str, list[Any]] | None = None) -> None:
    values = pa.array(np.ascontiguousarray(rows, dtype=np.float32).ravel(), pa.float32())
    columns = {"video_id": pa.array(video_ids, pa.string()), **(extra or {}), "embedding": pa.FixedSizeListArray.from_arrays(values, rows.shape[1])}
    pq.write_table(pa.table(columns), path)


def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Generate, build, train and evaluate one corpus size; return its measurements."""
    from grdr_core.embedding_index import build_index_from_features
    from grdr_core.evaluation import EvalConfig, component_bytes, evaluate, summary
    from grdr_core.id_stats import id_statistics
    from grdr_core.index import open_index
    from grdr_core.quantize import QuantizerConfig
    from grdr_core.testing.synthetic import SyntheticConfig
    from grdr_core.versions import resolve_version
    from grdr_schemas.index import IndexLayout

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
    size_dir = (args.workdir / f"videos-{size}").resolve()
    if size_dir.exists():
        shutil.rmtree(size_dir)
    size_dir.mkdir(parents=True)
    sample_size = min(args.train_videos, size)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    corpus = generate_corpus(spec, sample_size, args.queries)
    video_ids = [f"video{ordinal:07d}" for ordinal in range(size)]
    features = size_dir / "features.parquet"
    _write_embeddings(features, video_ids, corpus.video_embeddings)
    del corpus.video_embeddings
    seconds["generate_and_write_features"] = time.perf_counter() - started

    # Baseline IDs of the build's default shape; training replaces them below.
    started = time.perf_counter()
    index_dir = size_dir / "index"
    build = build_index_from_features(features, index_dir, encoder_name=f"synthetic-{args.dim}d", quantizer=QuantizerConfig(seed=args.seed))
    seconds["build_from_features"] = time.perf_counter() - started
    seconds.update({f"build_{stage}": value for stage, value in build.stage_seconds.items()})
    features.unlink()  # only the index is needed from here on
    logger.info("%d videos: built from features in %.1f s", size, seconds["build_from_features"])

    index = open_index(index_dir)
    try:
        # The captioned videos come first, so caption ordinals hold in both samples.
        training_videos = size if args.train_on_corpus else sample_size
        sample = index.shards.get(np.arange(training_videos))
        config = train_config_from_args(args)
        settings = {
            "corpus": {k: v for k, v in asdict(spec).items() if k != "num_videos"},
            "train_videos": sample_size,
            "videos_in_training": training_videos,
            "train_config": asdict(config),
        }
        trained, train_s = load_or_train(args.workdir.resolve() / "trained-model", settings, sample, corpus, config)
        if train_s is not None:
            seconds["train"] = train_s
        started = time.perf_counter()
        codes = np.concatenate([trained.assign(block) for _, block in index.shards.iter_blocks()])
        seconds["assign"] = time.perf_counter() - started
    finally:
        index.close()
    stats = id_statistics(codes, trained.codebook_sizes)
    seconds.update(publish_trained_index(index_dir, trained, codes, stats))

    queries = size_dir / "queries.parquet"
    query_ids = {"query_id": [f"q{i}" for i in range(len(corpus.query_ordinals))]}
    _write_embeddings(queries, [video_ids[o] for o in corpus.query_ordinals], corpus.query_captions, query_ids)
    eval_config = EvalConfig(beam=args.beam, max_candidates=args.max_candidates, level_decay=args.level_decay, prefix_beam=args.prefix_beam, seed=args.seed)
    started = time.perf_counter()
    result = summary(evaluate(index_dir, queries, eval_config))
    seconds["evaluate"] = time.perf_counter() - started
    nprobe_sweep = None
    if args.nprobes:
        from msvd_eval import ivfpq_nprobe_sweep

        started = time.perf_counter()
        nprobe_sweep = ivfpq_nprobe_sweep(index_dir, queries, args)
        seconds["nprobe_sweep"] = time.perf_counter() - started

    # component_bytes splits model/ into the retriever that queries read and the
    # tokenizer and torch weights that only training and ID assignment read.
    components = component_bytes(IndexLayout(resolve_version(index_dir)))
    recall_parts = {name: components[name] for name in ("trie", "retriever")}
    recall_bytes = sum(recall_parts.values()) / size
    dense_float32 = 4 * args.dim
    return {
        "videos": size,
        "train_videos": sample_size,
        "seconds": seconds,
        "id_statistics": stats,
        "bytes_per_video": {name: value / size for name, value in components.items()},
        "recall_index_parts_bytes_per_video": {name: value / size for name, value in recall_parts.items()},
        "recall_index_bytes_per_video": recall_bytes,
        "dense_float32_bytes_per_video": dense_float32,
        "recall_over_dense_float32": recall_bytes / dense_float32,
        "meets_1_in_40": recall_bytes / dense_float32 < TARGET_RATIO,
        "evaluation": result,
        "ivfpq_nprobe_sweep": nprobe_sweep,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| videos | build from features s (write / IDs) | train s | recall index B/video | float32 dense B/video | recall / dense | "
        + " | ".join(f"{m} p50 ms" for m in METHODS)
        + " | "
        + " | ".join(f"{m} R@10" for m in METHODS)
        + " | grdr candidate hit |",
    ]
    lines.append("|" + "---:|" * (lines[0].count("|") - 1))
    for row in rows:
        result = row["evaluation"]
        train = row["seconds"].get("train")
        lines.append(
            f"| {row['videos']:,} | {row['seconds']['build_from_features']:.0f} ({row['seconds']['build_write']:.0f} / {row['seconds']['build_semantic_ids']:.0f}) "
            f"| {'reused' if train is None else f'{train:.0f}'} "
            f"| {row['recall_index_bytes_per_video']:.1f} | {row['dense_float32_bytes_per_video']} | {row['recall_over_dense_float32']:.4f} | "
            + " | ".join(f"{result[m]['latency_ms_p50']:.3f}" for m in METHODS)
            + " | "
            + " | ".join(f"{100 * result[m]['r10']:.1f}" for m in METHODS)
            + f" | {100 * result['grdr']['candidate_hit']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Corpus sizes in videos.")
    parser.add_argument("--dim", type=int, default=512, help="Embedding dimension (512: CLIP ViT-B/32).")
    parser.add_argument("--queries", type=int, default=500, help="Held-out captions per corpus, one per video.")
    parser.add_argument("--concepts", type=int, default=512, help="Concepts in the synthetic corpus.")
    parser.add_argument("--concepts-per-video", type=int, default=3, help="Concepts mixed into each video; each gets one training caption.")
    parser.add_argument("--train-videos", type=int, default=16_384, help="Videos whose captions train the model (the first ones; videos are i.i.d.).")
    parser.add_argument(
        "--train-on-corpus",
        action="store_true",
        help="Train on every video of the corpus, as grdr-index train does, with the captions of --train-videos only, "
        "so that video queries can draw any video; each size then trains its own model [default: the captioned videos only].",
    )
    parser.add_argument("--video-queries", type=float, default=0.0, help="Video queries per epoch, per caption (the default of grdr-index train).")
    parser.add_argument("--views", type=int, default=4, help="Semantic IDs per video.")
    parser.add_argument("--levels", type=int, default=3, help="Codes per semantic ID.")
    parser.add_argument("--codes", type=int, default=128, help="Codebook size per level; training shrinks it to sqrt(--train-videos) when that is smaller.")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs per level.")
    parser.add_argument("--polish-epochs", type=int, default=1, help="Retriever-only epochs on the final IDs.")
    parser.add_argument("--hidden", type=int, default=128, help="Retriever state size.")
    parser.add_argument("--beam", type=int, default=20, help="Beam width of grdr's recall.")
    parser.add_argument("--max-candidates", type=int, default=300, help="Cap on grdr's candidate pool.")
    parser.add_argument("--level-decay", type=float, default=DEFAULT_LEVEL_DECAY, help="Factor on each deeper level's logits in beam search (see grdr-index query --help).")
    parser.add_argument("--prefix-beam", type=int, default=None, help="Prefixes kept at each level before the last (see grdr-index query --help) [default: the beam].")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the corpus, training, k-means and FAISS.")
    parser.add_argument("--nprobes", type=int, nargs="*", default=[], help="Also time FAISS IVF-PQ at these nprobe values (and all lists), at grdr's byte budget [default: none].")
    parser.add_argument("--latency-queries", type=int, default=500, help="Queries timed per point of the --nprobes sweep.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training [default: torch's choice].")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/scale"), help="Folder for the generated indexes (about 1.1 GB per million videos at dim 512).")
    parser.add_argument("--out-json", type=Path, default=None, help="Write machine facts, settings and results here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        rows.append(run_size(size, args))
        logger.info("%d videos: %s", size, json.dumps({k: v for k, v in rows[-1].items() if k != "evaluation"}))
    print(format_table(rows))
    if args.out_json:
        write_json_report(args.out_json, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train learned semantic IDs for an existing index and publish the index with them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grdr_core.captions import CaptionReport, CaptionSet, match_caption_embeddings, match_captions
from grdr_core.errors import InvalidInputError
from grdr_core.index import Index, open_index, publish, staging_dir_for, write_header
from grdr_core.id_stats import id_statistics
from grdr_core.training import TrainConfig, TrainedModel, train
from grdr_core.trie import write_trie
from grdr_core.versions import DEFAULT_KEEP
from grdr_schemas.index import IndexLayout

logger = logging.getLogger(__name__)

# Text captions are encoded in batches of this many strings.
TEXT_BATCH = 256


@dataclass
class TrainSummary:
    index_dir: Path
    captions: CaptionReport
    id_stats: dict[str, Any]
    seconds: float
    version: str | None = None  # the published version

    def describe(self) -> str:
        stats = self.id_stats
        return (
            f"{self.captions.describe()}; trained {stats['views']} views x {stats['levels']} levels, "
            f"{stats['distinct_ids']} distinct IDs, {stats['distinct_ids_per_video']:.2f} distinct IDs per video, "
            f"in {self.seconds:.1f} s"
        )


def train_index(
    index_dir: str | os.PathLike[str],
    config: TrainConfig,
    captions: Path | None = None,
    caption_embeddings: Path | None = None,
    model: str | None = None,
    keep: int = DEFAULT_KEEP,
) -> TrainSummary:
    """Train a multi-view tokenizer and retriever on captions, then publish a new version of the index.

    Exactly one of ``captions`` (text, encoded with the index's CLIP text tower, or
    ``model``) and ``caption_embeddings`` (precomputed, same space as the index) is given.
    The new version reuses the manifest and shards of the current one through hard
    links and has its own trie, ``model/`` and ``index.json``. Readers see the old or
    the new version whole. The newest ``keep`` versions are kept.
    """
    if (captions is None) == (caption_embeddings is None):
        raise InvalidInputError("Give exactly one of --captions and --caption-embeddings")
    started = time.monotonic()
    index = open_index(index_dir)
    try:
        if len(index.shards) < 2:
            raise InvalidInputError(f"Training needs at least 2 indexed videos; {index.layout.root} has {len(index.shards)}")
        video_ids = np.asarray(index.video_ids.to_pylist(), dtype=object)
        if captions is not None:
            caption_set = match_captions(Path(captions), video_ids)
            query_embeddings = _encode_captions(index, caption_set, model, config.device)
        else:
            caption_set = match_caption_embeddings(Path(caption_embeddings), video_ids)
            query_embeddings = caption_set.embeddings
        if query_embeddings.shape[1] != index.shards.dim:
            raise InvalidInputError(
                f"Caption embeddings have {query_embeddings.shape[1]} dimensions but the index stores "
                f"{index.shards.dim}; queries and videos must share one embedding space for reranking"
            )
        # NOTE: all video embeddings are held in memory as float32 (4 * N * D bytes);
        # a corpus beyond a few million videos needs a sampled or streamed training set.
        videos = index.shards.get(np.arange(len(index.shards)))
        trained = train(videos, caption_set.ordinals, query_embeddings, config)
        codes = trained.assign(videos)
        stats = id_statistics(codes, trained.codebook_sizes)
        summary = TrainSummary(Path(index_dir), caption_set.report, stats, 0.0)
        source = Path(captions or caption_embeddings).resolve()
        summary.version = publish_trained(index, trained, codes, stats, caption_set.report, str(source), keep=keep)
    finally:
        index.close()
    summary.seconds = time.monotonic() - started
    logger.info("Training finished: %s", summary.describe())
    return summary


def _encode_captions(index: Index, caption_set: CaptionSet, model: str | None, device: str) -> np.ndarray:
    """Encode the caption texts and count in the report those the encoder truncates."""
    from grdr_core.search import load_query_encoder

    texts = caption_set.texts or []
    encoder = load_query_encoder(index, model=model, device=device)
    lengths = encoder.count_text_tokens(texts)
    caption_set.report.truncated = sum(length > encoder.max_text_tokens for length in lengths)
    if caption_set.report.truncated:
        logger.info(
            "%d of %d captions exceed the text encoder's %d tokens and are truncated (longest: %d tokens)",
            caption_set.report.truncated, len(texts), encoder.max_text_tokens, max(lengths),
        )
    blocks = [encoder.encode_text(texts[i : i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)]
    return np.concatenate(blocks).astype(np.float32)


def link_tree(source: Path, target: Path) -> None:
    """Recreate ``source`` under ``target`` with hard links, copying where linking fails."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def publish_trained(
    index: Index,
    trained: TrainedModel,
    codes: np.ndarray,
    stats: dict[str, Any],
    report: CaptionReport | None,
    source: str | None,
    keep: int = DEFAULT_KEEP,
) -> str:
    """Publish a new version of ``index`` with the trie of ``codes`` and the trained model; return its name.

    The manifest and shards of the opened version are hard-linked into the new one.
    ``source`` describes where the training captions came from, for ``index.json``.
    Raises ``IndexExistsError`` when another version became current after ``index``
    was opened, so that a newer build is never replaced by a model of older data.
    """
    old = index.layout
    staging = staging_dir_for(index.root)
    layout = IndexLayout(staging)
    try:
        link_tree(old.manifest_dir, layout.manifest_dir)
        link_tree(old.shards_dir, layout.shards_dir)
        write_trie(layout.trie, codes, trained.codebook_sizes)
        trained.save(layout.model_dir)

        header = {k: v for k, v in index.header.items() if k not in ("files", "format_version")}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        header["created_at"] = now
        header["tokenizer"] = {
            "name": trained.name,
            "views": trained.views,
            "levels": trained.levels,
            "codebook_sizes": trained.codebook_sizes,
            "seed": trained.config.seed,
            "retriever": True,
            "cotrain": trained.config.cotrain,
            "trained_at": now,
            "captions": source,
            "caption_report": asdict(report) if report is not None else None,
            "id_statistics": stats,
        }
        write_header(layout, header)
        return publish(staging, index.root, overwrite=True, keep=keep, expected_current=index.version)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

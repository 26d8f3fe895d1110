"""Build an index from precomputed video embeddings instead of video files.

Used when embeddings come from another encoder or pipeline (``grdr-index build
--features``), and by benchmarks and tests that need corpora of controlled structure
or of millions of videos.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from grdr_core import remote
from grdr_core.errors import InvalidInputError, NothingIndexedError
from grdr_core.feature_files import DEFAULT_BATCH_ROWS, FeatureBatch, check_video_ids, embedding_errors, open_feature_file
from grdr_core.index import publish, staging_dir_for, write_header
from grdr_core.manifest import ManifestWriter
from grdr_core.output import IndexOutput
from grdr_core.quantize import QuantizerConfig
from grdr_core.semantic_ids import assign_baseline_ids
from grdr_core.shards import ShardReader, ShardWriter
from grdr_core.versions import DEFAULT_KEEP
from grdr_schemas.index import PRECOMPUTED_PREFIX, IndexLayout
from grdr_schemas.manifest import VideoStatus
from grdr_schemas.shards import DEFAULT_RECORDS_PER_SHARD

logger = logging.getLogger(__name__)

# Invalid rows logged one line each; later ones are only counted.
MAX_LOGGED_FAILURES = 10


@dataclass
class EmbeddingBuildSummary:
    """Outcome of a build from precomputed embeddings; ``rows = indexed + failed``."""

    out_dir: Path | str  # the URL when the index was uploaded
    rows: int
    indexed: int
    status_counts: dict[str, int]
    seconds: float
    # Wall seconds of "write" (read, validate, write shards and manifest), "semantic_ids"
    # (residual k-means and trie) and "publish" (checksums, header, rename).
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.rows - self.indexed

    def describe(self) -> str:
        text = f"{self.rows} embeddings read, {self.indexed} indexed, {self.failed} failed"
        failures = ", ".join(f"{status}: {n}" for status, n in sorted(self.status_counts.items()) if status != VideoStatus.OK.value)
        if failures:
            text += f" ({failures})"
        return text + f" in {self.seconds:.1f} s"


def build_index_from_features(
    path: str | Path,
    out_dir: Path | str,
    encoder_name: str,
    ids_path: str | Path | None = None,
    quantizer: QuantizerConfig = QuantizerConfig(),
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    overwrite: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    keep_versions: int = DEFAULT_KEEP,
) -> EmbeddingBuildSummary:
    """Publish an index of the embeddings in a Parquet or ``.npy`` feature file.

    The file is read ``batch_rows`` rows at a time (see ``grdr_core.feature_files`` for
    its format). Every row gets a manifest row. A row whose embedding is invalid is
    recorded with status ``invalid_embedding`` and its reason, and is not indexed.
    Raises ``InvalidInputError`` for a bad file and ``NothingIndexedError`` when no row
    is valid. In both cases nothing is published. ``out_dir`` may be a URL
    (``grdr_core.output`` says how an index is published there); the newest
    ``keep_versions`` versions are kept.
    """
    if remote.is_remote(path):
        raise InvalidInputError(f"--features must be a local file, not {path}; download it first")
    output = IndexOutput.of(out_dir)
    # The feature file counts as the input, so --overwrite cannot delete a folder that contains it.
    output.check(overwrite, input_root=path)
    features = open_feature_file(path, ids_path)
    return _publish_embeddings(
        features.batches(batch_rows),
        features.dim,
        output,
        encoder_name,
        quantizer,
        records_per_shard,
        keep_versions,
        source=features.describe(),
    )


def build_index_from_embeddings(
    video_ids: Sequence[str],
    embeddings: np.ndarray,
    out_dir: Path,
    encoder_name: str,
    quantizer: QuantizerConfig = QuantizerConfig(),
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    overwrite: bool = False,
    chunk: int = 65536,
) -> Path:
    """Publish an index of ``(N, D)`` embeddings (L2-normalised here) under the given ids.

    ``encoder_name`` names the encoder that produced the embeddings; queries against the
    index must come from the same encoder as embeddings, since no text tower is stored.
    Rows that are not finite or all zeros are recorded as failed, as in
    ``build_index_from_features``.
    """
    output = IndexOutput.of(out_dir)
    output.check(overwrite)
    if embeddings.ndim != 2 or len(embeddings) != len(video_ids) or len(video_ids) == 0:
        raise InvalidInputError(
            f"Need one embedding row per video id: got {len(video_ids)} ids and embeddings of shape {embeddings.shape}"
        )
    check_video_ids(pa.array([str(v) for v in video_ids], pa.string()), "video_ids")
    batches = _array_batches(video_ids, embeddings, chunk)
    _publish_embeddings(batches, embeddings.shape[1], output, encoder_name, quantizer, records_per_shard, DEFAULT_KEEP, source=None)
    return output.root


def _array_batches(video_ids: Sequence[str], embeddings: np.ndarray, chunk: int) -> Iterator[FeatureBatch]:
    for start in range(0, len(embeddings), chunk):
        with np.errstate(over="ignore"):
            block = np.array(embeddings[start : start + chunk], dtype=np.float32)
        errors = embedding_errors(block)
        block[[i for i, error in enumerate(errors) if error is not None]] = 0.0
        ids = [str(v) for v in video_ids[start : start + chunk]]
        yield FeatureBatch(first_row=start, video_ids=ids, embeddings=block, errors=errors)


def _publish_embeddings(
    batches: Iterable[FeatureBatch],
    dim: int,
    output: IndexOutput,
    encoder_name: str,
    quantizer: QuantizerConfig,
    records_per_shard: int,
    keep: int,
    source: dict[str, Any] | None,
) -> EmbeddingBuildSummary:
    """Write shards and manifest rows for ``batches``, assign baseline IDs and publish.

    The caller has checked the output, so publishing may add a version to an index there.
    """
    started = time.monotonic()
    staging = staging_dir_for(output.root)
    layout = IndexLayout(staging)
    output.root.parent.mkdir(parents=True, exist_ok=True)
    try:
        status_counts = _write_embeddings(batches, dim, layout, records_per_shard)
        indexed = status_counts.get(VideoStatus.OK.value, 0)
        summary = EmbeddingBuildSummary(output.name, sum(status_counts.values()), indexed, dict(status_counts), 0.0)
        summary.stage_seconds["write"] = time.monotonic() - started
        if indexed == 0:
            raise NothingIndexedError(f"No embedding was indexed: {summary.describe()}")

        stage_started = time.monotonic()
        reader = ShardReader(layout.shards_dir, indexed, dim, records_per_shard)
        tokenizer_header = assign_baseline_ids(reader, quantizer, layout)
        summary.stage_seconds["semantic_ids"] = time.monotonic() - stage_started
        stage_started = time.monotonic()
        header = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input_root": None,
            "features": source,
            "encoder": {"name": encoder_name, "checksum": PRECOMPUTED_PREFIX + encoder_name, "dim": dim},
            "decode": None,
            "tokenizer": tokenizer_header,
            "counts": {"discovered": summary.rows, "indexed": indexed, "failed": summary.failed, "by_status": summary.status_counts},
            "shards": {"count": indexed, "dim": dim, "records_per_shard": records_per_shard, "dtype": "float16"},
        }
        write_header(layout, header)
        version = publish(staging, output.root, overwrite=True, keep=keep, version=output.next_version())
        output.finish(version, keep)
        summary.stage_seconds["publish"] = time.monotonic() - stage_started
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    summary.seconds = time.monotonic() - started
    logger.info("Indexed precomputed embeddings into %s: %s", output.name, summary.describe())
    return summary


def _write_embeddings(batches: Iterable[FeatureBatch], dim: int, layout: IndexLayout, records_per_shard: int) -> Counter[str]:
    """Store the valid rows L2-normalised and give every row a manifest row, in input order."""
    shards = ShardWriter(layout.shards_dir, dim, records_per_shard)
    manifest = ManifestWriter(layout.manifest_dir)
    status_counts: Counter[str] = Counter()
    invalid = VideoStatus.INVALID_EMBEDDING.value
    for batch in batches:
        valid = np.array([error is None for error in batch.errors], dtype=bool)
        # In float64, so that rows of tiny or huge float32 values do not underflow to a
        # zero norm or overflow to an infinite one.
        block = batch.embeddings[valid].astype(np.float64)
        block = (block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-300)).astype(np.float32)
        ordinals = iter(shards.append(block))
        for offset, (video_id, error) in enumerate(zip(batch.video_ids, batch.errors, strict=True)):
            if error is None:
                manifest.add(_row(video_id, VideoStatus.OK.value, None, next(ordinals)))
                status_counts[VideoStatus.OK.value] += 1
                continue
            message = f"row {batch.first_row + offset}: {error}"
            if status_counts[invalid] < MAX_LOGGED_FAILURES:
                logger.warning("Failed to index %r: %s: %s", video_id, invalid, message)
            manifest.add(_row(video_id, invalid, message, None))
            status_counts[invalid] += 1

    if status_counts[invalid] > MAX_LOGGED_FAILURES:
        logger.warning("%d more rows with invalid embeddings were recorded in the manifest without a log line", status_counts[invalid] - MAX_LOGGED_FAILURES)
    stored = shards.close()
    rows = manifest.close()
    status_counts = +status_counts  # drop zero counts
    if rows != sum(status_counts.values()) or stored != status_counts.get(VideoStatus.OK.value, 0):
        raise RuntimeError(f"Build bookkeeping mismatch: {rows} manifest rows, {stored} embeddings, counts {dict(status_counts)}")
    return status_counts


def _row(video_id: str, status: str, error: str | None, ordinal: int | None) -> dict:
    return {
        "video_id": video_id,
        "uri": video_id,
        "size_bytes": 0,
        "fingerprint": "precomputed",
        "status": status,
        "error": error,
        "decoder": None,
        "duration_s": None,
        "fps": None,
        "width": None,
        "height": None,
        "num_frames": None,
        "frames_sampled": None,
        "ordinal": ordinal,
    }

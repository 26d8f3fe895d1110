"""The local index build: discover, decode, encode, quantize, write and publish."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from grdr_core.decode import DecodeConfig, DecodedVideo, DecodePool
from grdr_core.discovery import VIDEO_EXTENSIONS, VideoFile, discover_videos
from grdr_core.errors import InvalidInputError, NothingIndexedError
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_core.index import check_output_path, publish, staging_dir_for, write_header
from grdr_core.manifest import ManifestWriter
from grdr_core.quantize import QuantizerConfig
from grdr_core.semantic_ids import assign_baseline_ids
from grdr_core.shards import ShardReader, ShardWriter
from grdr_schemas.index import IndexLayout
from grdr_schemas.manifest import VideoStatus
from grdr_schemas.shards import DEFAULT_RECORDS_PER_SHARD

logger = logging.getLogger(__name__)

# Decoded videos are encoded once this many encoder batches of frames are pending. A
# flush ends with one partial batch, which cost about 50% more CPU per frame than a full
# one (measured at 8 vs 64 frames, benchmarks/build_throughput.py), so flushing several
# batches at once amortises it; the pending frames stay bounded (4 x 64 frames of
# about 224 x 400 px is about 70 MB).
ENCODE_BATCHES_PER_FLUSH = 4
# Manifest rows are buffered in memory until a part is written; smaller parts keep the
# build's memory flat on large corpora (a buffered row is about 0.8 KB).
MANIFEST_ROWS_PER_PART = 10_000
# Failed files logged per status; the manifest records every one. A data lake can hold
# thousands of files that fail the same way, and their log lines would bury the rest.
MAX_LOGGED_FAILURES_PER_STATUS = 100


@dataclass(frozen=True)
class BuildConfig:
    input_root: Path
    out_dir: Path
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    workers: int = max(1, (os.cpu_count() or 1))
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")


@dataclass
class BuildSummary:
    out_dir: Path
    discovered: int
    indexed: int
    status_counts: dict[str, int]
    seconds: float

    @property
    def failed(self) -> int:
        return self.discovered - self.indexed

    def describe(self) -> str:
        failures = ", ".join(f"{status}: {n}" for status, n in sorted(self.status_counts.items()) if status != VideoStatus.OK.value)
        rate = self.discovered / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.discovered} files discovered, {self.indexed} indexed, {self.failed} failed"
        if failures:
            text += f" ({failures})"
        return text + f" in {self.seconds:.1f} s ({rate:.2f} videos/s)"

    def status_table(self) -> str:
        """Return a plain-text table of files per status, largest count first, with the total."""
        rows = sorted(self.status_counts.items(), key=lambda item: (-item[1], item[0]))
        width = max([len("status"), len("total"), *(len(status) for status, _ in rows)])
        lines = [f"{'status':<{width}}  {'files':>7}"]
        lines += [f"{status:<{width}}  {count:>7}" for status, count in rows]
        lines.append(f"{'total':<{width}}  {sum(self.status_counts.values()):>7}")
        return "\n".join(lines)


ProgressCallback = Callable[[VideoFile, str], None]


def build_index(
    config: BuildConfig,
    encoder: ClipEncoder | None = None,
    progress: ProgressCallback | None = None,
    on_discovered: Callable[[int], None] | None = None,
) -> BuildSummary:
    """Build an index of every video under ``config.input_root`` and publish it at ``config.out_dir``.

    Every discovered file gets exactly one manifest row, failed files included. Raises
    ``NothingIndexedError`` (and publishes nothing) when no video could be indexed.
    """
    started = time.monotonic()
    out_dir = Path(config.out_dir).resolve()
    check_output_path(out_dir, config.overwrite, input_root=config.input_root)

    files = discover_videos(config.input_root)
    if not files:
        raise NothingIndexedError(
            f"No video files found under {config.input_root} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    if on_discovered is not None:
        on_discovered(len(files))
    encoder = encoder or ClipEncoder(config.encoder)
    decode_config = replace(config.decode, short_side=encoder.short_side)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir_for(out_dir)
    layout = IndexLayout(staging)
    try:
        status_counts = _embed_videos(files, layout, decode_config, encoder, config, progress)
        indexed = status_counts.get(VideoStatus.OK.value, 0)
        summary = BuildSummary(out_dir, len(files), indexed, dict(status_counts), time.monotonic() - started)
        if indexed == 0:
            raise NothingIndexedError(f"No video was indexed: {summary.describe()}")

        shards = ShardReader(layout.shards_dir, indexed, encoder.dim, config.records_per_shard)
        tokenizer_header = assign_baseline_ids(shards, config.quantizer, layout)
        write_header(layout, _header(config, decode_config, encoder, tokenizer_header, summary))
        publish(staging, out_dir, config.overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    summary.seconds = time.monotonic() - started
    logger.info("Build finished: %s", summary.describe())
    return summary


def _embed_videos(
    files: list[VideoFile],
    layout: IndexLayout,
    decode_config: DecodeConfig,
    encoder: ClipEncoder,
    config: BuildConfig,
    progress: ProgressCallback | None,
) -> Counter[str]:
    """Decode and encode every file, writing shards and manifest rows in discovery order."""
    shards = ShardWriter(layout.shards_dir, encoder.dim, config.records_per_shard)
    manifest = ManifestWriter(layout.manifest_dir, rows_per_part=MANIFEST_ROWS_PER_PART)
    status_counts: Counter[str] = Counter()
    pending: list[tuple[VideoFile, DecodedVideo]] = []
    pending_frames = 0

    def record(file: VideoFile, status: str, error: str | None, video: DecodedVideo | None, ordinal: int | None) -> None:
        if status != VideoStatus.OK.value:
            _log_failure(file, status, error, status_counts[status])
        manifest.add(_manifest_row(file, status, error, video, ordinal))
        status_counts[status] += 1
        if progress is not None:
            progress(file, status)

    def flush_pending() -> None:
        for (file, video), embedding, error in zip(pending, *_encode_batch(encoder, [v for _, v in pending])):
            if embedding is None:
                record(file, VideoStatus.ENCODE_ERROR.value, error, video, None)
            else:
                ordinal = shards.append(embedding[None, :])[0]
                record(file, VideoStatus.OK.value, None, video, ordinal)
        pending.clear()

    with DecodePool(decode_config, workers=config.workers) as pool:
        for result, file in zip(pool.imap(f.path for f in files), files, strict=True):
            if result.video is None:
                # Keep rows in discovery order: encode what is pending before recording a failure.
                flush_pending()
                pending_frames = 0
                record(file, result.status, result.error, None, None)
                continue
            pending.append((file, result.video))
            pending_frames += len(result.video.frames)
            if pending_frames >= ENCODE_BATCHES_PER_FLUSH * config.encoder.batch_size:
                flush_pending()
                pending_frames = 0
        flush_pending()

    stored = shards.close()
    rows = manifest.close()
    if rows != len(files) or stored != status_counts.get(VideoStatus.OK.value, 0):
        raise RuntimeError(f"Build bookkeeping mismatch: {len(files)} files, {rows} manifest rows, {stored} embeddings")
    return status_counts


def _log_failure(file: VideoFile, status: str, error: str | None, earlier: int) -> None:
    """Log one WARNING line per failed file, up to ``MAX_LOGGED_FAILURES_PER_STATUS`` per status."""
    if earlier < MAX_LOGGED_FAILURES_PER_STATUS:
        logger.warning("Failed to index %s: %s: %s", file.uri, status, error)
    elif earlier == MAX_LOGGED_FAILURES_PER_STATUS:
        logger.warning(
            "%d files failed with status %s; further ones are recorded in the manifest without a log line",
            earlier + 1, status,
        )


def _encode_batch(encoder: ClipEncoder, videos: list[DecodedVideo]) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Encode videos together; when the batch fails, retry one by one so only bad videos fail."""
    if not videos:
        return [], []
    try:
        embeddings = encoder.encode_videos([v.frames for v in videos])
        return list(embeddings), [None] * len(videos)
    except (RuntimeError, ValueError) as exc:
        logger.warning("Encoding a batch of %d videos failed (%s); retrying one by one", len(videos), exc)

    results: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for video in videos:
        try:
            results.append(encoder.encode_videos([video.frames])[0])
            errors.append(None)
        except (RuntimeError, ValueError) as exc:
            results.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return results, errors


def _manifest_row(file: VideoFile, status: str, error: str | None, video: DecodedVideo | None, ordinal: int | None) -> dict[str, Any]:
    return {
        "video_id": file.video_id,
        "uri": file.uri,
        "uri_bytes": file.uri_bytes,
        "size_bytes": file.size_bytes,
        "fingerprint": file.fingerprint,
        "status": status,
        "error": error,
        "decoder": video.decoder if video else None,
        "duration_s": video.duration_s if video else None,
        "fps": video.fps if video else None,
        "width": video.width if video else None,
        "height": video.height if video else None,
        "coded_width": video.coded_width if video else None,
        "coded_height": video.coded_height if video else None,
        "rotation": video.rotation if video else None,
        "num_frames": video.num_frames if video else None,
        "frames_sampled": len(video.frames) if video else None,
        "ordinal": ordinal,
    }


def _header(
    config: BuildConfig,
    decode_config: DecodeConfig,
    encoder: ClipEncoder,
    tokenizer_header: dict[str, Any],
    summary: BuildSummary,
) -> dict[str, Any]:
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_root": str(Path(config.input_root).resolve()),
        "encoder": {"name": encoder.name, "checksum": encoder.checksum, "dim": encoder.dim},
        "decode": asdict(decode_config),
        "tokenizer": tokenizer_header,
        "counts": {
            "discovered": summary.discovered,
            "indexed": summary.indexed,
            "failed": summary.failed,
            "by_status": summary.status_counts,
        },
        "shards": {
            "count": summary.indexed,
            "dim": encoder.dim,
            "records_per_shard": config.records_per_shard,
            "dtype": "float16",
        },
    }

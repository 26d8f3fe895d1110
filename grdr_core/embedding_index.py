"""Build an index from precomputed video embeddings instead of video files.

Used when embeddings come from another encoder or pipeline, and by benchmarks and
tests that need corpora of controlled structure or of millions of videos.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from grdr_core.errors import InvalidInputError
from grdr_core.index import check_output_path, publish, staging_dir_for, write_header
from grdr_core.manifest import ManifestWriter
from grdr_core.quantize import QuantizerConfig
from grdr_core.semantic_ids import assign_baseline_ids
from grdr_core.shards import ShardReader, ShardWriter
from grdr_schemas.index import IndexLayout
from grdr_schemas.manifest import VideoStatus
from grdr_schemas.shards import DEFAULT_RECORDS_PER_SHARD

logger = logging.getLogger(__name__)

PRECOMPUTED_PREFIX = "precomputed:"


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
    """
    out_dir = Path(out_dir).resolve()
    check_output_path(out_dir, overwrite)
    if embeddings.ndim != 2 or len(embeddings) != len(video_ids) or len(video_ids) == 0:
        raise InvalidInputError(
            f"Need one embedding row per video id: got {len(video_ids)} ids and embeddings of shape {embeddings.shape}"
        )
    if len(set(video_ids)) != len(video_ids):
        raise InvalidInputError("video_ids must be unique")

    started = time.monotonic()
    staging = staging_dir_for(out_dir)
    layout = IndexLayout(staging)
    dim = embeddings.shape[1]
    try:
        shards = ShardWriter(layout.shards_dir, dim, records_per_shard)
        manifest = ManifestWriter(layout.manifest_dir)
        for start in range(0, len(embeddings), chunk):
            block = np.asarray(embeddings[start : start + chunk], dtype=np.float32)
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
            for ordinal, video_id in zip(shards.append(block), video_ids[start : start + chunk]):
                manifest.add(_row(str(video_id), ordinal))
        count = shards.close()
        manifest.close()

        reader = ShardReader(layout.shards_dir, count, dim, records_per_shard)
        tokenizer_header = assign_baseline_ids(reader, quantizer, layout)
        header = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input_root": None,
            "encoder": {"name": encoder_name, "checksum": PRECOMPUTED_PREFIX + encoder_name, "dim": dim},
            "decode": None,
            "tokenizer": tokenizer_header,
            "counts": {"discovered": count, "indexed": count, "failed": 0, "by_status": {VideoStatus.OK.value: count}},
            "shards": {"count": count, "dim": dim, "records_per_shard": records_per_shard, "dtype": "float16"},
        }
        write_header(layout, header)
        publish(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("Indexed %d precomputed embeddings into %s in %.1f s", count, out_dir, time.monotonic() - started)
    return out_dir


def _row(video_id: str, ordinal: int) -> dict:
    return {
        "video_id": video_id,
        "uri": video_id,
        "size_bytes": 0,
        "fingerprint": "precomputed",
        "status": VideoStatus.OK.value,
        "error": None,
        "decoder": None,
        "duration_s": None,
        "fps": None,
        "width": None,
        "height": None,
        "num_frames": None,
        "frames_sampled": None,
        "ordinal": ordinal,
    }

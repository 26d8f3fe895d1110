"""The map stage of a build: decode and encode units of files into the work directory.

One implementation serves every engine. The local engine runs ``UnitEncoder`` in the
build's own process; the Beam DoFns and Ray actors in ``pipelines/`` create one per
worker and feed it units. A unit's outputs are written under the work directory (see
``grdr_schemas.build``) and its ``_SUCCESS`` marker last, so a unit either counts as
done with all its files or is redone whole. What a unit writes depends only on its
files, never on the engine or on which worker ran it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from grdr_core.decode import DecodeConfig, DecodedVideo, DecodePool
from grdr_core.discovery import VideoFile
from grdr_core.features import ClipEncoder, EncoderConfig
from grdr_schemas.build import WorkLayout
from grdr_schemas.manifest import MANIFEST_SCHEMA, VideoStatus
from grdr_schemas.shards import SHARD_DTYPE

logger = logging.getLogger(__name__)

# Decoded videos are encoded once this many encoder batches of frames are pending. A
# flush ends with one partial batch, which cost about 50% more CPU per frame than a full
# one (measured at 8 vs 64 frames, benchmarks/build_throughput.py), so flushing several
# batches at once amortises it; the pending frames stay bounded (4 x 64 frames of
# about 224 x 400 px is about 70 MB).
ENCODE_BATCHES_PER_FLUSH = 4
# Failed files logged per status by one worker. The manifest records every one, and a data
# lake can hold thousands of files that fail the same way, and their log lines would
# bury the rest.
MAX_LOGGED_FAILURES_PER_STATUS = 100

# Test hook: ``GRDR_KILL_AT=NAME`` or ``NAME:N`` makes the process kill itself with
# SIGKILL the first (or N-th) time it passes checkpoint NAME, so that the resume tests
# can stop a build at an exact point.
KILL_AT_ENV = "GRDR_KILL_AT"
_checkpoint_hits: Counter[str] = Counter()

ProgressCallback = Callable[[VideoFile, str], None]


def checkpoint(name: str) -> None:
    """Kill this process with SIGKILL here when ``GRDR_KILL_AT`` names this point."""
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _checkpoint_hits[name] += 1
    if _checkpoint_hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class MapSettings:
    """Everything a map worker needs. Small and picklable: Beam pickles it into its DoFns."""

    work_dir: str
    encoder: EncoderConfig
    decode: DecodeConfig  # ``short_side`` already set from the encoder
    decode_workers: int = 1


@dataclass(frozen=True)
class WorkUnit:
    """A numbered run of consecutive discovered files: the map stage's unit of work."""

    number: int
    files: tuple[VideoFile, ...]


@dataclass(frozen=True)
class UnitResult:
    number: int
    status_counts: dict[str, int]

    @property
    def files(self) -> int:
        return sum(self.status_counts.values())


def unit_done(work: WorkLayout, unit: int) -> bool:
    return work.unit_marker(unit).is_file()


def read_unit_result(work: WorkLayout, unit: int) -> UnitResult:
    counts = json.loads(work.unit_marker(unit).read_text())["status_counts"]
    return UnitResult(unit, {str(status): int(n) for status, n in counts.items()})


class UnitEncoder:
    """Decode, encode and write units; one per worker process, reused for many units.

    Loads the encoder once (or takes a loaded one) and keeps one decoder pool of
    ``settings.decode_workers`` processes. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        settings: MapSettings,
        encoder: ClipEncoder | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = settings
        self.work = WorkLayout(Path(settings.work_dir))
        self.encoder = encoder or ClipEncoder(settings.encoder)
        self._decode = replace(settings.decode, short_side=self.encoder.short_side)
        self._pool = DecodePool(self._decode, workers=settings.decode_workers)
        self._progress = progress
        self._logged: Counter[str] = Counter()

    def __enter__(self) -> UnitEncoder:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self._pool.close()
        else:
            self._pool.terminate()

    def close(self) -> None:
        self._pool.close()

    def run(self, units: Iterable[WorkUnit]) -> Iterator[UnitResult]:
        """Process ``units`` and yield each one's result as it completes.

        A unit whose marker already exists is not processed again; its recorded result
        is yielded first. Decoding streams across unit boundaries, so the decoder workers
        stay busy while a finished unit is encoded and written.
        """
        todo: list[WorkUnit] = []
        for unit in units:
            if unit_done(self.work, unit.number):
                yield read_unit_result(self.work, unit.number)
            elif not unit.files:
                yield self._finish(_UnitState(unit))
            else:
                todo.append(unit)

        files = [(index, file) for index, unit in enumerate(todo) for file in unit.files]
        decoded = self._pool.imap(file.path for _, file in files)
        states = {index: _UnitState(unit) for index, unit in enumerate(todo)}
        for (index, file), result in zip(files, decoded, strict=True):
            state = states[index]
            if result.video is None:
                # Keep rows in file order: encode what is pending before recording a failure.
                self._flush(state)
                self._record(state, file, result.status, result.error, None, None)
            else:
                state.pending.append((file, result.video))
                state.pending_frames += len(result.video.frames)
                if state.pending_frames >= ENCODE_BATCHES_PER_FLUSH * self.settings.encoder.batch_size:
                    self._flush(state)
            if state.complete:
                yield self._finish(states.pop(index))

    def _flush(self, state: _UnitState) -> None:
        if not state.pending:
            return
        videos = [video for _, video in state.pending]
        embeddings, errors = encode_batch(self.encoder, videos)
        for (file, video), embedding, error in zip(state.pending, embeddings, errors, strict=True):
            if embedding is None:
                self._record(state, file, VideoStatus.ENCODE_ERROR.value, error, video, None)
            else:
                state.embeddings.append(embedding)
                self._record(state, file, VideoStatus.OK.value, None, video, len(state.embeddings) - 1)
        state.pending.clear()
        state.pending_frames = 0

    def _record(
        self, state: _UnitState, file: VideoFile, status: str, error: str | None, video: DecodedVideo | None, ordinal: int | None
    ) -> None:
        if status != VideoStatus.OK.value:
            log_failure(file, status, error, self._logged[status])
            self._logged[status] += 1
        state.rows.append(manifest_row(file, status, error, video, ordinal))
        state.counts[status] += 1
        if self._progress is not None:
            self._progress(file, status)

    def _finish(self, state: _UnitState) -> UnitResult:
        self._flush(state)
        counts = dict(state.counts)
        write_unit(self.work, state.unit.number, state.rows, state.embeddings, self.encoder.dim, counts)
        return UnitResult(state.unit.number, counts)


class _UnitState:
    """Rows, embeddings and not yet encoded videos of the unit being processed."""

    def __init__(self, unit: WorkUnit) -> None:
        self.unit = unit
        self.rows: list[dict[str, Any]] = []
        self.embeddings: list[np.ndarray] = []
        self.pending: list[tuple[VideoFile, DecodedVideo]] = []
        self.pending_frames = 0
        self.counts: Counter[str] = Counter()

    @property
    def seen(self) -> int:
        return len(self.rows) + len(self.pending)

    @property
    def complete(self) -> bool:
        return self.seen == len(self.unit.files)


def write_unit(
    work: WorkLayout, unit: int, rows: list[dict[str, Any]], embeddings: list[np.ndarray], dim: int, counts: dict[str, int]
) -> None:
    """Write a unit's embeddings and manifest rows, then its ``_SUCCESS`` marker."""
    directory = work.unit_dir(unit)
    if directory.exists():
        shutil.rmtree(directory)  # a partial unit from a killed run
    directory.mkdir(parents=True)
    block = np.stack(embeddings).astype(SHARD_DTYPE) if embeddings else np.empty((0, dim), dtype=SHARD_DTYPE)
    np.save(work.unit_embeddings(unit), block)
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    pq.write_table(table, work.unit_manifest(unit), compression="zstd", write_page_checksum=True)
    checkpoint("unit-files-written")
    write_json_atomic(work.unit_marker(unit), {"status_counts": counts})


def write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` as JSON so that readers see the whole file or none of it."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as f:
        json.dump(value, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def run_local(
    settings: MapSettings,
    units: list[WorkUnit],
    encoder: ClipEncoder | None = None,
    progress: ProgressCallback | None = None,
) -> list[UnitResult]:
    """Run every unit in this process with a pool of decoder workers (the local engine)."""
    with UnitEncoder(settings, encoder=encoder, progress=progress) as unit_encoder:
        return list(unit_encoder.run(units))


def log_failure(file: VideoFile, status: str, error: str | None, earlier: int) -> None:
    """Log one WARNING line per failed file, up to ``MAX_LOGGED_FAILURES_PER_STATUS`` per status."""
    if earlier < MAX_LOGGED_FAILURES_PER_STATUS:
        logger.warning("Failed to index %s: %s: %s", file.uri, status, error)
    elif earlier == MAX_LOGGED_FAILURES_PER_STATUS:
        logger.warning(
            "%d files failed with status %s; further ones are recorded in the manifest without a log line",
            earlier + 1, status,
        )


def encode_batch(encoder: ClipEncoder, videos: list[DecodedVideo]) -> tuple[list[np.ndarray | None], list[str | None]]:
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


def manifest_row(file: VideoFile, status: str, error: str | None, video: DecodedVideo | None, ordinal: int | None) -> dict[str, Any]:
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
